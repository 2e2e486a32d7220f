"""`skinseg infer --scheduler`: the batch on a Dask cluster, with the guarantees of the local path.

The client (this process) lists the inputs, holds the output folder's lock, checks which images are up to date,
and submits one task per remaining image: :func:`cluster_task`, which is :func:`~skinseg.runtime.batch.
process_image` (model path, image path, options → outputs written, report row) run on a worker. The client alone
writes ``results.csv`` and ``summary.json``, merging rows as they arrive (the local path's checkpointing), so a killed
client leaves a report that a rerun completes. Tasks are side-effecting (``pure=False``); a future is released as
soon as its row is recorded (otherwise Dask would recompute finished images after losing a worker); at most a few
images per worker thread are in flight, so a million inputs never become a million futures.

Each worker process loads the model once (the per-process segmenter cache of :mod:`skinseg.runtime.batch`,
pinned to the hash the client read) and runs onnxruntime with as many threads as the worker has. Workers read the
inputs and write the outputs on a filesystem they all see at the same paths; :meth:`DaskCluster.check_workers`
makes sure of it before any image. A worker killed mid-image has its task rerun elsewhere by the scheduler; an
image that kills its workers repeatedly ends as a failed row (Dask's ``KilledWorker``) and the batch goes on.

This module imports Dask's ``distributed`` (the ``cluster`` extra) only when a scheduler is asked for.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import queue
from dataclasses import replace
from pathlib import Path
from typing import Any

from skinseg import install_hint
from skinseg.runtime.errors import MissingExtraError, ModelError, UsageError

__all__ = ["CLUSTER_EXTRA_HINT", "DaskCluster", "cluster_task", "connect", "tls_security"]

CLUSTER_EXTRA_HINT = (
    f"--scheduler needs Dask's distributed package: install the cluster extra, {install_hint('cluster')}"
)
TASKS_PER_THREAD = 2  # images in flight per worker thread: enough to hide the scheduler's round trip
CONNECT_TIMEOUT = "15s"


def _distributed() -> Any:
    try:
        import distributed
    except ImportError:
        raise MissingExtraError(CLUSTER_EXTRA_HINT) from None
    return distributed


def connect(scheduler: str, *, security: Any = None) -> DaskCluster:
    """A client for ``scheduler``: ``local:N`` (a local cluster of N worker processes, started and stopped here),
    a scheduler file (as written by ``dask scheduler --scheduler-file``) or an address (``tcp://host:8786``,
    ``tls://…``). ``security``: a ``distributed.Security`` (see :func:`tls_security`). UsageError, one line, when
    no scheduler answers."""
    distributed = _distributed()
    text = scheduler.strip()
    cluster = None
    try:
        if text.startswith("local:"):
            try:
                workers = int(text.split(":", 1)[1])
            except ValueError:
                raise UsageError(f"--scheduler {scheduler}: local:N needs a number of workers, e.g. local:2") from None
            if not 1 <= workers <= 256:
                raise UsageError(f"--scheduler {scheduler}: local:N takes 1 to 256 workers")
            cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
            cluster = distributed.LocalCluster(
                n_workers=workers,
                threads_per_worker=max(1, cores // workers),
                processes=True,
                dashboard_address=None,
                silence_logs=50,
            )
            client = distributed.Client(cluster, set_as_default=False)
        elif Path(text).is_file():
            client = distributed.Client(
                scheduler_file=text, security=security, timeout=CONNECT_TIMEOUT, set_as_default=False
            )
        else:
            client = distributed.Client(text, security=security, timeout=CONNECT_TIMEOUT, set_as_default=False)
    except (OSError, TimeoutError) as e:
        if cluster is not None:
            cluster.close()
        raise UsageError(
            f"--scheduler {scheduler}: no Dask scheduler answered ({type(e).__name__}: "
            f"{' '.join(str(e).split())[:160]}); check the address or scheduler file, and that the scheduler runs"
        ) from None
    return DaskCluster(client, cluster)


def tls_security(ca_file: str | None, cert: str | None, key: str | None) -> Any:
    """A ``distributed.Security`` for TLS from the files Dask's own tools take (``--tls-ca-file``, ``--tls-cert``,
    ``--tls-key``), or None when none is given. UsageError for a missing file."""
    if not (ca_file or cert or key):
        return None
    for name, path in (("--tls-ca-file", ca_file), ("--tls-cert", cert), ("--tls-key", key)):
        if not path or not Path(path).is_file():
            raise UsageError(f"{name} {path or ''}: file not found; TLS needs the CA file, a certificate and its key")
    return _distributed().Security(
        tls_ca_file=ca_file, tls_client_cert=cert, tls_client_key=key, require_encryption=True
    )


def cluster_task(
    model_path: str, image_path: str, options: Any, output_root: str, rel_path: str, previous: dict | None
) -> dict:
    """The task a worker runs: :func:`~skinseg.runtime.batch.process_image` with onnxruntime's threads set from the
    worker's own thread count (``OMP_NUM_THREADS`` means nothing to onnxruntime)."""
    from skinseg.runtime.batch import process_image

    if options.threads is None:
        try:
            from distributed import get_worker

            options = replace(options, threads=get_worker().state.nthreads)
        except (ImportError, ValueError, AttributeError):
            pass
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
    """A connected client (and the local cluster it started, if any); a context manager that closes both."""

    def __init__(self, client: Any, cluster: Any = None) -> None:
        self.client, self.cluster = client, cluster

    def __enter__(self) -> DaskCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()

    @property
    def threads(self) -> int:
        """Worker threads in the cluster now."""
        return sum(self.client.nthreads().values()) or 1

    def describe(self) -> str:
        workers = self.client.nthreads()
        return f"Dask cluster {self.client.scheduler.address} ({len(workers)} workers, {sum(workers.values())} threads)"

    def check_workers(self, model_path: str | os.PathLike[str], output: str | os.PathLike[str]) -> None:
        """UsageError naming the first worker that cannot read the model or write into the output folder: the
        workers must see both at the same paths (a shared filesystem)."""
        if not self.client.nthreads():
            raise UsageError(f"{self.describe()}: the scheduler has no workers; start some (see docs/cluster.md)")
        answers = self.client.run(_worker_check, os.path.abspath(model_path), os.path.abspath(output))
        for worker, problem in sorted(answers.items()):
            if problem:
                raise UsageError(
                    f"worker {worker} {problem}: every worker must see the model and --output at the same paths "
                    "(mount the shared filesystem there; docs/cluster.md)"
                )

    def runner(self, model_path: Path, output: Path, options: Any, previous: dict, events: queue.SimpleQueue):
        """The image runner :func:`~skinseg.runtime.batch._pipeline` uses: tasks on this cluster."""
        return _DaskRunner(self, model_path, output, options, previous, events)


class _DaskRunner:
    budget = float("inf")  # workers bound their own memory; in flight is bounded by ``slots``

    def __init__(
        self,
        cluster: DaskCluster,
        model_path: Path,
        output: Path,
        options: Any,
        previous: dict,
        events: queue.SimpleQueue,
    ) -> None:
        self.client = cluster.client
        self.model_path, self.output, self.options, self.previous, self.events = (
            str(Path(model_path).resolve()), str(Path(output).resolve()), options, previous, events,
        )  # fmt: skip
        self.slots = max(1, TASKS_PER_THREAD * cluster.threads)

    def cost(self, item: Any) -> int:
        return 0

    def start(self, index: int, item: Any) -> cf.Future:
        from skinseg.runtime.batch import no_work_row

        rel = str(item.rel)
        previous = self.previous.get(rel)
        done: cf.Future = cf.Future()
        row = no_work_row(self.model_path, item.path, self.options, self.output, item.rel, previous=previous)
        if row is not None:  # up to date, or failed before and unchanged: no task
            done.set_result(row)
            return done
        self.events.put({"event": "image_start", "index": index, "path": rel})
        future = self.client.submit(
            cluster_task,
            self.model_path,
            os.path.abspath(item.path),
            self.options,
            self.output,
            rel,
            previous,
            pure=False,
            key=f"skinseg-{index}-{os.urandom(4).hex()}",
        )

        def settle(f: Any) -> None:
            try:
                done.set_result(f.result())
            except ModelError as e:  # the model cannot be loaded, or changed: nothing can succeed, as locally
                done.set_exception(e)
            except BaseException as e:  # noqa: BLE001  a worker lost for good: this image's failed row
                done.set_result(_lost_row(item, e))
            finally:
                f.release()  # recorded: Dask must not recompute it after losing a worker

        future.add_done_callback(settle)
        return done

    def close(self) -> None:
        pass


def _lost_row(item: Any, error: BaseException) -> dict:
    from skinseg.runtime.batch import _empty_row

    row = _empty_row(item.rel, item.path)
    name = type(error).__name__
    if name == "KilledWorker":
        why = (
            "the workers running it died repeatedly (Dask KilledWorker): the image may need more memory than a "
            "worker has"
        )
    else:
        why = f"{name}: {' '.join(str(error).split())[:200]}"
    row.update(status="failed", error=why)
    return row
