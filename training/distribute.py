"""Training on several workers or devices with ``tf.distribute``: the strategy, the cluster, agreement between workers.

Three strategies (``skinseg train --strategy``):

- ``single``: one process, one device (TensorFlow's default strategy): training as it always was;
- ``mirrored``: ``tf.distribute.MirroredStrategy``, one replica per GPU of this host;
- ``multiworker``: ``tf.distribute.MultiWorkerMirroredStrategy``, one process per host (or per core group), the
  cluster described by ``TF_CONFIG`` as SLURM or Kubernetes launchers set it. Every worker runs the same command;
  worker 0 (or the ``chief`` task) alone writes the run directory.

``auto`` picks ``multiworker`` when ``TF_CONFIG`` is set, ``mirrored`` when this host has several GPUs, else
``single``. The global batch is the config's ``batch_size``, split evenly across all replicas; the learning-rate
schedule counts global steps (the optimizer's ``iterations``, one per global batch).

:func:`launch_local_workers` starts N worker processes on this host with the right ``TF_CONFIG`` (``skinseg train
--local-workers N``), for tests and for a workstation. TensorFlow is imported only by the functions that need it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from skinseg.runtime.errors import SkinsegError, UsageError, param, render

STRATEGIES = ("auto", "single", "mirrored", "multiworker")
CPUS_ENV = "SKINSEG_WORKER_CPUS"  # set by launch_local_workers: the cores this worker is pinned to ("0,1")
TF_CONFIG_EXAMPLE = '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}}'


class WorkerLostError(SkinsegError):
    """Another worker of a multi-worker run died or became unreachable: the run stops on every worker (exit 1)."""


# ---------------------------------------------------------------------------------------------- TF_CONFIG


@dataclass(frozen=True)
class Cluster:
    """The workers of a multi-worker run, chief first, and this process's place among them."""

    workers: tuple[str, ...]  # host:port of every task, the chief (task 0 of "chief", or worker 0) first
    rank: int  # this process's position in ``workers``
    task_type: str  # "chief" or "worker"
    task_index: int

    @property
    def count(self) -> int:
        return len(self.workers)

    @property
    def is_chief(self) -> bool:
        return self.rank == 0


def _bad(problem: str) -> UsageError:
    return UsageError(f"TF_CONFIG: {problem}; it should look like {TF_CONFIG_EXAMPLE}")


def _address(job: str, i: int, value: Any) -> str:
    if not isinstance(value, str):
        raise _bad(f'cluster.{job}[{i}] is {json.dumps(value)}, not a "host:port" string')
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise _bad(f'cluster.{job}[{i}] is "{value}", not host:port with a port from 1 to 65535')
    return value


def parse_tf_config(text: str) -> Cluster:
    """The cluster ``TF_CONFIG`` describes; a :class:`UsageError` naming the first thing wrong with it.

    Only the jobs multi-worker training uses are accepted: ``worker`` (and an optional single ``chief``).
    """
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as e:
        raise _bad(f"not valid JSON ({e.msg} at character {e.pos})") from None
    if not isinstance(spec, dict):
        raise _bad("not a JSON object")
    cluster, task = spec.get("cluster"), spec.get("task")
    if not isinstance(cluster, dict) or not cluster:
        raise _bad('no "cluster" object listing the workers')
    other = sorted(set(cluster) - {"chief", "worker"})
    if other:
        raise _bad(f'job "{other[0]}" is not used by multi-worker training (only "worker" and one "chief")')
    addresses: list[tuple[str, int, str]] = []
    for job in ("chief", "worker"):
        if job not in cluster:
            continue
        tasks = cluster[job]
        if not isinstance(tasks, list) or not tasks:
            raise _bad(f"cluster.{job} is not a non-empty list of host:port addresses")
        if job == "chief" and len(tasks) != 1:
            raise _bad(f"cluster.chief lists {len(tasks)} tasks; there is at most one chief")
        addresses += [(job, i, _address(job, i, a)) for i, a in enumerate(tasks)]
    seen: dict[str, str] = {}
    for job, i, a in addresses:
        if a in seen:
            raise _bad(f'"{a}" is listed twice ({seen[a]} and {job}[{i}]); every task needs its own port')
        seen[a] = f"{job}[{i}]"
    if not isinstance(task, dict):
        raise _bad('no "task" object saying which of the listed tasks this process is')
    task_type, index = task.get("type"), task.get("index")
    if task_type not in cluster:
        raise _bad(f"task.type is {json.dumps(task_type)}; it must name a job of the cluster ({', '.join(cluster)})")
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(cluster[task_type]):
        raise _bad(
            f"task.index is {json.dumps(index)}; cluster.{task_type} has {len(cluster[task_type])} task(s), "
            f"so it must be 0 to {len(cluster[task_type]) - 1}"
        )
    rank = next(k for k, (job, i, _) in enumerate(addresses) if job == task_type and i == index)
    return Cluster(tuple(a for _, _, a in addresses), rank, task_type, index)


# ---------------------------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class Plan:
    """Which strategy a run uses and, for ``multiworker``, the cluster."""

    kind: str  # "single", "mirrored" or "multiworker"
    cluster: Cluster | None = None
    note: str = ""  # a warning for the user ("" when none)

    @property
    def is_chief(self) -> bool:
        return self.cluster is None or self.cluster.is_chief

    @property
    def rank(self) -> int:
        return self.cluster.rank if self.cluster else 0

    @property
    def workers(self) -> int:
        return self.cluster.count if self.cluster else 1


def plan_strategy(name: str, environ: dict[str, str] | None = None, gpus: Callable[[], int] | None = None) -> Plan:
    """The :class:`Plan` for ``--strategy name``: ``TF_CONFIG`` checked now, before any TensorFlow start-up.

    ``gpus`` counts this host's GPUs (asked only by ``auto`` without ``TF_CONFIG``).
    """
    env = os.environ if environ is None else environ
    if name not in STRATEGIES:
        raise UsageError(f"unknown {param('strategy')} '{name}'; choose from: {', '.join(STRATEGIES)}")
    text = env.get("TF_CONFIG", "").strip()
    if name == "multiworker" or (name == "auto" and text):
        if not text:
            raise UsageError(
                f"{param('strategy', 'multiworker')} needs TF_CONFIG in the environment (the cluster's workers and "
                f"this one's index, see docs/distributed_training.md); on one machine use "
                f"{param('local_workers', 'N')} instead"
            )
        return Plan("multiworker", parse_tf_config(text))
    note = render(f"TF_CONFIG is set but {param('strategy', name)} trains in this process alone") if text else ""
    if name == "mirrored" or (name == "auto" and gpus is not None and gpus() > 1):
        return Plan("mirrored", note=note)
    return Plan("single", note=note)


def count_gpus() -> int:
    import tensorflow as tf

    return len(tf.config.list_physical_devices("GPU"))


# ---------------------------------------------------------------------------------------------- strategies


@dataclass
class Distribution:
    """A started strategy and what the trainer needs to know about it."""

    plan: Plan
    strategy: Any  # a tf.distribute.Strategy
    replicas: int  # in sync, all workers together
    local_replicas: int  # on this worker

    @property
    def workers(self) -> int:
        return self.plan.workers

    @property
    def rank(self) -> int:
        return self.plan.rank

    @property
    def is_chief(self) -> bool:
        return self.plan.is_chief

    def describe(self) -> str:
        if self.plan.kind == "multiworker":
            who = "the chief, writes the run directory" if self.is_chief else "the chief writes the run directory"
            return (
                f"multiworker: {self.workers} workers × {self.local_replicas} replica(s); "
                f"this is worker {self.rank} ({who})"
            )
        return f"mirrored: {self.replicas} replica(s) on {', '.join(self.devices())}"

    def devices(self) -> list[str]:
        return [d.rsplit("/", 1)[-1].lower().replace("device:", "") for d in self.strategy.extended.worker_devices]

    # -- agreement between workers (collective operations: every worker must call them at the same point) --

    def gather(self, values: Sequence[float]) -> list[list[float]]:
        """Every replica's ``values`` (one row per replica, worker-major order): a collective on every worker."""
        import tensorflow as tf

        k = len(values)
        fn = self._gatherers.get(k) if hasattr(self, "_gatherers") else None
        if fn is None:
            strategy = self.strategy

            @tf.function
            def fn(x):
                per_replica = strategy.run(lambda: tf.identity(x))
                return strategy.gather(per_replica, axis=0)

            self._gatherers = {**getattr(self, "_gatherers", {}), k: fn}
        out = fn(tf.constant(list(values), tf.float32)).numpy()
        return out.reshape(-1, k).tolist()

    def any(self, flag: bool) -> bool:
        """True on every worker when ``flag`` is true on any."""
        return any(row[0] for row in self.gather([1.0 if flag else 0.0]))


def start_strategy(plan: Plan, *, mirrored_devices: list[str] | None = None) -> Distribution:
    """Start the plan's strategy (``multiworker``: connect to the other workers; blocks until they are all up)."""
    import tensorflow as tf

    if plan.kind == "multiworker":
        resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
        options = tf.distribute.experimental.CommunicationOptions(
            implementation=tf.distribute.experimental.CommunicationImplementation.AUTO
        )
        strategy = tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver, communication_options=options)
    elif plan.kind == "mirrored":
        strategy = tf.distribute.MirroredStrategy(devices=mirrored_devices)
    else:
        strategy = tf.distribute.get_strategy()
    replicas = strategy.num_replicas_in_sync
    local = len(strategy.extended.worker_devices) if plan.kind != "single" else 1
    return Distribution(plan, strategy, replicas, local)


# ---------------------------------------------------------------------------------------------- Keras


def prepare_model(model: Any, dist: Distribution, sample: tuple[Any, Any]) -> None:
    """Make ``model.fit`` work under ``dist`` (Keras 3 with tf.distribute, keras-team/keras#20585).

    Keras's ``fit`` first builds the compiled metrics from a batch it reduces with ``strategy.reduce`` on the
    (image, mask) tuple, which fails for distributed batches; the build is done here from one local batch
    instead, and under multi-worker training the epoch logs are averaged over all replicas (Keras asks for an
    axis a scalar has not); a loss that returns one value per batch is scaled like a per-example one.
    """
    if dist.plan.kind == "single":
        return
    with dist.strategy.scope():
        model._symbolic_build(data_batch=sample)
    model._maybe_symbolic_build = lambda iterator=None, data_batch=None: None
    _patch_reduce_per_replica()
    _scale_scalar_losses(model, dist.replicas)


def _scale_scalar_losses(model: Any, replicas: int) -> None:
    """Divide a loss that returns one value per batch by the number of replicas, as Keras does for per-example
    losses: the replicas' gradients are summed, so the sum must be their mean. skinseg's losses (Dice over the
    batch, mean BCE) return a scalar, which Keras passes through unscaled: the gradient would be ``replicas``
    times too large and the logged loss too (Adam hardly notices the scale; clipping and the logs do).
    """
    if replicas == 1:
        return
    for _, loss_fn, _, _ in model._compile_loss._flat_losses:
        call = loss_fn.call

        def scaled(y_true, y_pred, call=call):
            value = call(y_true, y_pred)
            return value * (1.0 / replicas) if len(value.shape) == 0 else value

        loss_fn.call = scaled


def _patch_reduce_per_replica() -> None:
    import tensorflow as tf
    from keras.src.backend.tensorflow import trainer as tf_trainer

    original = tf_trainer.reduce_per_replica
    if getattr(original, "_skinseg", False):
        return

    def reduce_per_replica(values, strategy, reduction):
        if reduction in ("auto", "mean") and tf_trainer._collective_all_reduce_multi_worker(strategy):
            return tf.nest.map_structure(lambda v: strategy.reduce("MEAN", v, axis=None), values)
        return original(values, strategy, reduction)

    reduce_per_replica._skinseg = True
    tf_trainer.reduce_per_replica = reduce_per_replica


def round_robin(datasets: list[Any]) -> Any:
    """One ``tf.data`` pipeline taking an element from each of ``datasets`` in turn (the local replicas' batches)."""
    import tensorflow as tf

    if len(datasets) == 1:
        return datasets[0]
    order = tf.data.Dataset.range(len(datasets)).repeat()
    return tf.data.Dataset.choose_from_datasets(datasets, order, stop_on_empty_dataset=True)


def is_peer_failure(error: BaseException) -> bool:
    """A TensorFlow error that means another worker died or cannot be reached."""
    import tensorflow as tf

    lost = (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.AbortedError)
    if isinstance(error, lost):
        return True
    text = str(error)
    return isinstance(error, (tf.errors.CancelledError, tf.errors.InternalError)) and (
        "ollective" in text or "coordination" in text.lower()
    )


def peer_failure_reason(error: BaseException) -> str:
    """The line of a TensorFlow error that says what happened to the other worker, shortened."""
    text = str(error)
    if "stopped sending heartbeats" in text:  # TensorFlow's coordination service: a task frozen, killed or cut off
        after = text.split("stopped sending heartbeats", 1)[1]
        tasks = [f"{job} {task}" for job, task in re.findall(r"/job:(\w+)/replica:\d+/task:(\d+)", after)]
        return f"{', '.join(dict.fromkeys(tasks)) or 'a worker'} stopped sending heartbeats"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for pattern in (r"aborted by: (.+)", r"(Socket closed|Connection reset[^.;]*|failed to connect[^.;]*)"):
        for line in lines:
            m = re.search(pattern, line, re.IGNORECASE)
            if m:
                return m.group(1)[:160]
    return (lines[-1] if lines else type(error).__name__)[:160]


def fingerprint(names: Sequence[str]) -> list[float]:
    """The crc32 of ``names`` as two 16-bit halves (exact in float32), to compare across workers."""
    crc = zlib.crc32("\n".join(names).encode("utf-8"))
    return [float(crc >> 16), float(crc & 0xFFFF)]


# ---------------------------------------------------------------------------------------------- local workers


def free_ports(n: int) -> list[int]:
    """``n`` TCP ports free on localhost now (the OS picks them)."""
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("localhost", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def local_tf_configs(ports: Sequence[int]) -> list[str]:
    """The ``TF_CONFIG`` of each of ``len(ports)`` workers on localhost."""
    workers = [f"localhost:{p}" for p in ports]
    task = [{"type": "worker", "index": i} for i in range(len(ports))]
    return [json.dumps({"cluster": {"worker": workers}, "task": t}) for t in task]


def split_cpus(cpus: Sequence[int], n: int) -> list[list[int]] | None:
    """``n`` equal groups of ``cpus`` (contiguous), or None when there are fewer cores than workers."""
    cpus = sorted(cpus)
    if len(cpus) < n:
        return None
    per = len(cpus) // n
    return [cpus[i * per : (i + 1) * per] for i in range(n)]


def pin_to_cpus_from_env(environ: dict[str, str] | None = None) -> list[int] | None:
    """Pin this process to the cores :data:`CPUS_ENV` names (set by :func:`launch_local_workers`); before TF starts."""
    env = os.environ if environ is None else environ
    value = env.get(CPUS_ENV, "")
    if not value or not hasattr(os, "sched_setaffinity"):
        return None
    cpus = [int(c) for c in value.split(",") if c.strip().isdigit()]
    if cpus:
        os.sched_setaffinity(0, cpus)
    return cpus or None


def _exit_description(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def launch_local_workers(
    argv: Sequence[str],
    n: int,
    *,
    grace_s: float = 60.0,
    on_event: Callable[[dict[str, Any]], None] | None = None,
    environ: dict[str, str] | None = None,
) -> int:
    """Run ``argv`` as ``n`` worker processes on this host, each with its ``TF_CONFIG``; return the exit code.

    Worker 0 (the chief) writes to this process's stdout and stderr; the others' output goes to a log each,
    whose last line is reported when that worker fails. When the cores of this process can be split evenly, each
    worker is pinned to its share (a worker per core group, as on separate hosts). When one worker fails, the
    others are given ``grace_s`` seconds to notice and stop by themselves, then terminated.
    """
    emit = on_event or (lambda e: None)
    base = dict(os.environ if environ is None else environ)
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    groups = split_cpus(cpus, n) if cpus else None
    configs = local_tf_configs(free_ports(n))
    logs_dir = Path(tempfile.mkdtemp(prefix="skinseg-workers-"))
    procs: list[subprocess.Popen] = []
    logs: list[Path | None] = []
    previous = None
    if threading.current_thread() is threading.main_thread():  # a `kill` of the launcher stops its workers too
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        for i in range(n):
            env = {**base, "TF_CONFIG": configs[i]}
            if groups:
                env[CPUS_ENV] = ",".join(map(str, groups[i]))
            if i == 0:
                procs.append(subprocess.Popen(list(argv), env=env))  # noqa: S603 (our own command line)
                logs.append(None)
            else:
                log = logs_dir / f"worker{i}.log"
                with log.open("wb") as f:
                    procs.append(subprocess.Popen(list(argv), env=env, stdout=f, stderr=subprocess.STDOUT))  # noqa: S603
                logs.append(log)
        emit(
            {
                "event": "workers",
                "n": n,
                "cpus": [g for g in groups] if groups else None,
                "logs": str(logs_dir),
            }
        )
        return _supervise(procs, logs, grace_s, emit)
    except KeyboardInterrupt:
        _stop(procs, 30.0)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        _stop(procs, 10.0)
        if all(p.returncode == 0 for p in procs if p.returncode is not None):
            for log in logs:
                if log is not None:
                    log.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                logs_dir.rmdir()


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _last_line(path: Path | None) -> str:
    if path is None or not path.is_file():
        return ""
    lines = [ln.strip() for ln in path.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
    return lines[-1][:300] if lines else ""


def _supervise(procs: list[subprocess.Popen], logs: list[Path | None], grace_s: float, emit) -> int:
    """Wait for every worker; report each failure once; after the first, give the rest ``grace_s`` seconds."""
    failed_at: float | None = None
    first_failure = 0
    reported: set[int] = set()

    def report() -> None:
        nonlocal failed_at, first_failure
        for i, p in enumerate(procs):
            c = p.returncode
            if c not in (None, 0) and i not in reported:
                reported.add(i)
                if failed_at is None:
                    failed_at, first_failure = time.monotonic(), c
                emit(
                    {
                        "event": "worker_failed",
                        "worker": i,
                        "how": _exit_description(c),
                        "last_line": _last_line(logs[i]),
                        "log": str(logs[i]) if logs[i] else "",
                    }
                )

    while [p.poll() for p in procs].count(None):  # poll every worker (any() would stop at the first alive)
        report()
        if failed_at is not None and time.monotonic() - failed_at > grace_s:
            emit({"event": "terminating", "after_s": grace_s})
            _stop(procs, 10.0)
            break
        time.sleep(0.2)
    report()
    if first_failure:
        return first_failure if first_failure > 0 else 1
    return 0


def _stop(procs: list[subprocess.Popen], wait_s: float) -> None:
    """Terminate the workers still running; kill those that do not end within ``wait_s`` seconds."""
    alive = [p for p in procs if p.poll() is None]
    for p in alive:
        p.terminate()
    deadline = time.monotonic() + wait_s
    for p in alive:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def worker_command(args: Sequence[str]) -> list[str]:
    """The command line that runs ``skinseg <args>`` with this Python (a worker of :func:`launch_local_workers`)."""
    return [sys.executable, "-m", "skinseg", *args]
