"""`skinseg infer --scheduler`: the batch on a Dask cluster, with the guarantees of the local path.

The client (this process) lists the inputs, holds the output folder's lock, checks which images are up to date,
and submits one task per remaining image: :func:`cluster_task`, which is :func:`~skinseg.runtime.job.
process_image` (model path, image path, options → outputs written, report row) run on a worker. The client alone
writes ``results.csv`` and ``summary.json``, merging rows as they arrive (the local path's checkpointing), so a killed
client leaves a report that a rerun completes. Tasks are side-effecting (``pure=False``); a future is released as
soon as its row is recorded (otherwise Dask would recompute finished images after losing a worker); at most a few
images per worker thread are in flight, so a million inputs never become a million futures.

Each worker process loads the model once (the per-process model cache of :mod:`skinseg.runtime.model_cache`,
pinned to the hash the client read) and runs onnxruntime with as many threads as the worker has. Workers read the
inputs and write the outputs on a filesystem they all see at the same paths; :meth:`DaskCluster.check_workers`
makes sure of it before any image. A worker killed mid-image has its task rerun elsewhere by the scheduler; an
image that kills its workers repeatedly ends as a failed row (Dask's ``KilledWorker``) and the batch goes on.

This module imports Dask's ``distributed`` (the ``cluster`` extra) only when a scheduler is asked for.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import contextlib
import json
import os
import queue
import re
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

from skinseg import install_hint
from skinseg.runtime.errors import (
    MissingExtraError,
    ModelError,
    ParameterError,
    UsageError,
    current_parameter_names,
    one_line,
    param,
    parameter_names,
)

__all__ = [
    "CLUSTER_EXTRA_HINT",
    "DaskCluster",
    "check_scheduler",
    "cluster_task",
    "connect",
    "is_local",
    "tls_security",
]

CLUSTER_EXTRA_HINT = (
    f"{param('scheduler')} needs Dask's distributed package: install the cluster extra, {install_hint('cluster')}"
)
TASKS_PER_THREAD = 2  # images in flight per worker thread: enough to hide the scheduler's round trip
CONNECT_TIMEOUT = "15s"
CLOSE_TIMEOUT = 10  # seconds: closing a client whose scheduler is gone must not hang the run's end


def _distributed() -> Any:
    try:
        import distributed
    except ImportError:
        raise MissingExtraError(CLUSTER_EXTRA_HINT) from None
    return distributed


_HOST_PORT = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?):([0-9]{1,5})$")
SCHEMES = ("tcp", "tls")  # the transports a skinseg client connects over
_SCHEDULER_HINT = "give local:N, a scheduler file, or an address such as tcp://host:8786"


def _count(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _given(scheduler: str) -> str:
    """The setting ``scheduler=…`` as an error message names it."""
    return param("scheduler", scheduler)


def cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def is_local(scheduler: str) -> bool:
    """Whether ``scheduler`` asks for a local cluster (``local:N``), started and stopped by the run."""
    return scheduler.strip().startswith("local:")


def check_scheduler(scheduler: str, *, security: Any = None) -> str:
    """The address to connect to for ``scheduler`` (``local:N`` as given), checked without connecting:
    UsageError, one line, for an empty value, a transport skinseg does not use (``inproc://``, ``ucx://``), an
    address that is no ``host:port``, ``tls://`` without TLS files, a number of local workers the machine cannot
    run, or a scheduler file that is not a JSON object with an ``address``."""
    text = scheduler.strip()
    if not text:
        raise ParameterError(f"{param('scheduler')} is empty; {_SCHEDULER_HINT}")
    if is_local(text):
        try:
            workers = int(text.split(":", 1)[1])
        except ValueError:
            raise UsageError(f"{_given(scheduler)}: local:N needs a number of workers, e.g. local:2") from None
        if not 1 <= workers <= cores():
            raise UsageError(
                f"{_given(scheduler)}: local:N takes 1 to {cores()} workers on this machine (one a core: each is "
                "a process with its own copy of the model)"
            )
        return text
    if "://" not in text and not _HOST_PORT.match(text):
        return _address_in_file(scheduler, text, security)
    return _checked_address(scheduler, text, security)


def _checked_address(scheduler: str, text: str, security: Any) -> str:
    scheme, rest = text.split("://", 1) if "://" in text else ("tcp", text)
    if scheme.lower() not in SCHEMES:
        raise UsageError(
            f"{_given(scheduler)}: {scheme}:// is not a transport skinseg connects over (tcp:// or tls://); "
            f"{_SCHEDULER_HINT}"
        )
    match = _HOST_PORT.match(rest)
    if match is None or not 1 <= int(match.group(2)) <= 65535:
        raise UsageError(f"{_given(scheduler)}: not a scheduler address (host:port); {_SCHEDULER_HINT}")
    if scheme.lower() == "tls" and security is None:
        raise UsageError(
            f"{_given(scheduler)}: a tls:// scheduler needs {param('tls_ca_file')}, {param('tls_cert')} "
            f"and {param('tls_key')}"
        )
    return f"{scheme.lower()}://{rest}"


def _address_in_file(scheduler: str, text: str, security: Any) -> str:
    """The address a scheduler file (``dask scheduler --scheduler-file``) holds, checked."""
    path = Path(text)
    if not path.exists():
        raise UsageError(f"{_given(scheduler)}: no such scheduler file, and not an address; {_SCHEDULER_HINT}")
    if not path.is_file():
        raise UsageError(f"{_given(scheduler)}: not a scheduler file (not a regular file); {_SCHEDULER_HINT}")
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read(1 << 20))
    except (OSError, ValueError) as e:
        why = getattr(e, "strerror", None) or "not JSON"
        raise UsageError(f"{_given(scheduler)}: cannot read the scheduler file ({why}); {_SCHEDULER_HINT}") from None
    address = data.get("address") if isinstance(data, dict) else None
    if not isinstance(address, str) or not address.strip():
        raise UsageError(
            f'{_given(scheduler)}: the scheduler file holds no address (a JSON object with an "address", as '
            "`dask scheduler --scheduler-file` writes)"
        )
    return _checked_address(scheduler, address.strip(), security)


def connect(scheduler: str, *, security: Any = None, scratch: str | os.PathLike[str] | None = None) -> DaskCluster:
    """A client for ``scheduler``: ``local:N`` (a local cluster of N worker processes, started and stopped here),
    a scheduler file (as written by ``dask scheduler --scheduler-file``) or an address (``tcp://host:8786``,
    ``tls://…``). ``security``: a ``distributed.Security`` (see :func:`tls_security`). ``scratch``: the folder a
    local cluster keeps its scratch space in (Dask's lock files and spill), removed when it closes; by default a
    temporary folder, removed too. UsageError, one line, for a value :func:`check_scheduler` refuses or when no
    scheduler answers."""
    distributed = _distributed()
    address = check_scheduler(scheduler, security=security)
    if is_local(address):
        return _local_cluster(distributed, int(address.split(":", 1)[1]), scratch)
    levels = _quiet_dask_logs()  # a scheduler lost mid-run is said in one line, not in Dask's tracebacks
    try:
        client = distributed.Client(address, security=security, timeout=CONNECT_TIMEOUT, set_as_default=False)
    except (OSError, TimeoutError, ValueError, TypeError) as e:
        _restore_logs(levels)
        raise UsageError(
            f"{_given(scheduler)}: no Dask scheduler answered ({one_line(e, 200)}); check the address or "
            "scheduler file, and that the scheduler runs"
        ) from None
    return DaskCluster(client, log_levels=levels)


def _quiet_dask_logs() -> dict[str, int]:
    """Set Dask's loggers to critical only; their levels before, to restore at close."""
    import logging

    names = ["distributed", *(n for n in logging.root.manager.loggerDict if n.startswith("distributed."))]
    levels = {name: logging.getLogger(name).level for name in names}
    for name in names:
        logging.getLogger(name).setLevel(logging.CRITICAL)
    return levels


def _restore_logs(levels: dict[str, int]) -> None:
    import logging

    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def _local_cluster(distributed: Any, workers: int, scratch: str | os.PathLike[str] | None) -> DaskCluster:
    """A local cluster whose scratch space (Dask's ``dask-scratch-space`` lock files) is ``scratch``, created
    afresh and removed at close: nothing is left outside it."""
    import tempfile

    import dask

    folder = Path(scratch) if scratch is not None else Path(tempfile.mkdtemp(prefix="skinseg-dask-"))
    shutil.rmtree(folder, ignore_errors=True)  # a killed run's
    folder.mkdir(parents=True, exist_ok=True)
    from distributed.deploy.spec import SpecCluster

    before = set(SpecCluster._instances)
    cluster = None
    try:
        with dask.config.set({"temporary-directory": str(folder)}):
            cluster = distributed.LocalCluster(
                n_workers=workers,
                threads_per_worker=max(1, cores() // workers),
                processes=True,
                dashboard_address=None,
                silence_logs=50,
                local_directory=str(folder),
            )
            client = distributed.Client(cluster, set_as_default=False)
    except BaseException as e:
        if cluster is not None and not isinstance(e, KeyboardInterrupt):
            with contextlib.suppress(Exception):
                cluster.close(timeout=CLOSE_TIMEOUT)
        for started in set(SpecCluster._instances) - before:  # half started by an interrupt: Dask's exit handler
            _forget(started)  # would print an AssertionError (Status.init); its processes end with this one
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return DaskCluster(client, cluster, scratch=folder)


def _forget(cluster: Any) -> None:
    """Keep Dask's exit handler from closing ``cluster`` again (10 s of waiting after an interrupted close, an
    AssertionError for one an interrupt left half started): its worker processes, daemonic children of this
    process, are terminated when it exits."""
    from distributed.deploy.spec import SpecCluster

    SpecCluster._instances.discard(cluster)


def tls_security(ca_file: str | None, cert: str | None, key: str | None) -> Any:
    """A ``distributed.Security`` for TLS from the files Dask's own tools take (``--tls-ca-file``, ``--tls-cert``,
    ``--tls-key``), or None when none is given. UsageError for a missing file."""
    if not (ca_file or cert or key):
        return None
    for name, path in (("tls_ca_file", ca_file), ("tls_cert", cert), ("tls_key", key)):
        if not path or not Path(path).is_file():
            raise UsageError(
                f"{param(name, path or '')}: file not found; TLS needs the CA file, a certificate and its key"
            )
    return _distributed().Security(
        tls_ca_file=ca_file, tls_client_cert=cert, tls_client_key=key, require_encryption=True
    )


def cluster_task(
    model_path: str,
    image_path: str,
    options: Any,
    output_root: str,
    rel_path: str,
    previous: dict | None,
    names: dict[str, str] | None = None,
) -> Any:
    """The task a worker runs: :func:`~skinseg.runtime.job.process_image` with onnxruntime's threads set from the
    worker's own thread count (``OMP_NUM_THREADS`` means nothing to onnxruntime), its errors naming parameters as
    ``names`` (the sender's :func:`~skinseg.runtime.errors.current_parameter_names`: the command line's flags)."""
    from skinseg.runtime.job import process_image

    if options.threads is None:
        try:
            from distributed import get_worker

            options = replace(options, threads=get_worker().state.nthreads)
        except (ImportError, ValueError, AttributeError):
            pass
    with parameter_names(names or {}, this_thread=True):
        return process_image(model_path, image_path, options, output_root, rel_path, previous=previous)


def _worker_check(model_path: str, output: str) -> str:
    """On a worker: "" when it can read the model and write into the output folder, else why not."""
    import tempfile

    if not os.path.isfile(model_path) or not os.access(model_path, os.R_OK):
        return f"cannot read the model {model_path}"
    try:
        with tempfile.NamedTemporaryFile(dir=output, prefix=".skinseg-worker-check-"):
            pass
    except OSError as e:
        return f"cannot write into {output} ({e.strerror or e})"
    return ""


class DaskCluster:
    """A connected client (and the local cluster it started, if any, with its scratch folder); :meth:`close`
    closes them."""

    def __init__(
        self, client: Any, cluster: Any = None, scratch: Path | None = None, log_levels: dict[str, int] | None = None
    ) -> None:
        self.client, self.cluster, self.scratch, self.log_levels = client, cluster, scratch, log_levels

    def close(self) -> None:
        """Close the client, then the local cluster, then remove its scratch folder; never raises for a scheduler
        that is gone already. An interrupt stops the waiting (KeyboardInterrupt is raised, the local cluster's
        processes end with this process)."""
        try:
            with contextlib.suppress(Exception):
                self.client.close(timeout=CLOSE_TIMEOUT)
            if self.cluster is not None:
                with contextlib.suppress(Exception):
                    self.cluster.close(timeout=CLOSE_TIMEOUT)
        except KeyboardInterrupt:
            if self.cluster is not None:
                _forget(self.cluster)
            raise
        finally:
            if self.scratch is not None:
                shutil.rmtree(self.scratch, ignore_errors=True)
            if self.log_levels is not None:
                _restore_logs(self.log_levels)

    @property
    def threads(self) -> int:
        """Worker threads in the cluster now."""
        return sum(self.client.nthreads().values()) or 1

    def describe(self) -> str:
        workers = self.client.nthreads()
        size = f"{_count(len(workers), 'worker')}, {_count(sum(workers.values()), 'thread')}"
        return f"Dask cluster {self.client.scheduler.address} ({size})"

    def check_workers(self, model_path: str | os.PathLike[str], output: str | os.PathLike[str]) -> None:
        """UsageError naming the first worker that cannot read the model or write into the output folder: the
        workers must see both at the same paths (a shared filesystem)."""
        if not self.client.nthreads():
            raise UsageError(f"{self.describe()}: the scheduler has no workers; start some (see docs/cluster.md)")
        answers = self.client.run(_worker_check, os.path.abspath(model_path), os.path.abspath(output))
        for worker, problem in sorted(answers.items()):
            if problem:
                raise UsageError(
                    f"worker {worker} {problem}: every worker must see the model and {param('output')} at the same "
                    "paths (mount the shared filesystem there; docs/cluster.md)"
                )

    def runner(self, model_path: Path, output: Path, options: Any, previous: dict, events: queue.SimpleQueue):
        """The batch's :class:`~skinseg.runtime.runners.Runner`: its images as tasks on this cluster."""
        return DaskRunner(self, model_path, output, options, previous, events)


class DaskRunner:
    """A batch's images as tasks on a Dask cluster: a :class:`~skinseg.runtime.runners.Runner`."""

    def __init__(
        self,
        cluster: DaskCluster,
        model_path: Path,
        output: Path,
        options: Any,
        previous: dict,
        events: queue.SimpleQueue,
    ) -> None:
        from skinseg.runtime.defaults import default_memory_limit
        from skinseg.runtime.model_cache import MODELS

        self.client = cluster.client
        self.model_path, self.output, self.options, self.previous, self.events = (
            str(Path(model_path).resolve()), str(Path(output).resolve()), options, previous, events,
        )  # fmt: skip
        self.slots = max(1, TASKS_PER_THREAD * cluster.threads)
        self.segmenter, _ = MODELS.get(model_path, options)  # the client's, pinned: for the images' sizes
        # --memory-limit bounds the images in flight on the cluster as a whole (estimated as locally). A local
        # cluster shares this machine: its default applies, less each worker's copy of the model's working memory.
        # A remote cluster's workers bound their own memory unless --memory-limit is given.
        if cluster.cluster is not None:
            workers = len(self.client.nthreads()) or 1
            model = (getattr(self.segmenter, "working_memory", None) or 0) * workers
            self.budget: float = max(0, (options.memory_limit or default_memory_limit()) - model)
        else:
            self.budget = options.memory_limit or float("inf")

    def cost(self, item: Any) -> int:
        from skinseg.runtime.job import image_cost

        return image_cost(self.segmenter, item.path, self.options) if self.budget != float("inf") else 0

    def start(self, index: int, item: Any) -> cf.Future:
        from skinseg.runtime.job import no_work_row
        from skinseg.runtime.records import ImageStart
        from skinseg.runtime.runners import StopBatch

        rel = str(item.rel)
        previous = self.previous.get(rel)
        done: cf.Future = cf.Future()
        row = no_work_row(self.model_path, item.path, self.options, self.output, item.rel, previous=previous)
        if row is not None:  # up to date, or failed before and unchanged: no task
            done.set_result(row)
            return done
        if self.client.status not in ("running", "connecting", "newly-created"):
            done.set_exception(StopBatch(SCHEDULER_GONE))
            return done
        self.events.put(ImageStart(index=index, path=rel))
        try:
            future = self.client.submit(
                cluster_task,
                self.model_path,
                os.path.abspath(item.path),
                self.options,
                self.output,
                rel,
                previous,
                current_parameter_names(),
                pure=False,
                key=f"skinseg-{index}-{os.urandom(4).hex()}",
            )
        except Exception:  # noqa: BLE001  a client closed under us (its scheduler gone)
            done.set_exception(StopBatch(SCHEDULER_GONE))
            return done

        def settle(f: Any) -> None:
            try:
                done.set_result(f.result())
            except ModelError as e:  # the model cannot be loaded, or changed: nothing can succeed, as locally
                done.set_exception(e)
            except BaseException as e:  # noqa: BLE001
                if _scheduler_gone(e, self.client):  # not the image's failure: it is not done, the run stops
                    done.set_exception(StopBatch(SCHEDULER_GONE))
                else:  # a worker lost for good: this image's failed row
                    done.set_result(_lost_row(item, e))
            finally:
                with contextlib.suppress(Exception):
                    f.release()  # recorded: Dask must not recompute it after losing a worker

        future.add_done_callback(settle)
        return done

    def close(self) -> None:
        pass


SCHEDULER_GONE = "the Dask scheduler is gone"


def _scheduler_gone(error: BaseException, client: Any) -> bool:
    """Whether a task's error means the scheduler was lost (its futures cancelled, the client closed), not that the
    image's task failed."""
    if isinstance(error, (cf.CancelledError, asyncio.CancelledError)) or type(error).__name__ in (
        "FutureCancelledError",
        "CancelledError",
        "ClosedClientError",
        "CommClosedError",
    ):
        return True
    return getattr(client, "status", "running") not in ("running", "newly-created")


def _lost_row(item: Any, error: BaseException) -> Any:
    from skinseg.runtime.records import ImageRow
    from skinseg.runtime.report import empty_row

    row = empty_row(item.rel, item.path)
    name = type(error).__name__
    if name == "KilledWorker":
        why = (
            "the workers running it died repeatedly (Dask KilledWorker): the image may need more memory than a "
            "worker has"
        )
    else:
        why = one_line(error, 200 + len(name) + 2)
    row.update(status="failed", error=why)
    return ImageRow.from_dict(row)
