"""Where a batch's images are worked on: the :class:`Runner` protocol, and :class:`LocalRunner`, a few daemon
threads of this process (the Dask runner, :class:`skinseg.runtime.cluster.DaskRunner`, is the other).

A runner is made for one batch by a :data:`RunnerFactory` (model path, output folder, pinned options, the previous
run's rows, a queue for progress events) and asked, image by image, what an image costs in memory and to start it;
the orchestration (:mod:`skinseg.runtime.batch`) admits images against its ``slots`` and ``budget``.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Protocol

from skinseg.runtime import job
from skinseg.runtime.defaults import default_memory_limit
from skinseg.runtime.inputs import InputItem
from skinseg.runtime.model_cache import MODELS
from skinseg.runtime.options import InferOptions
from skinseg.runtime.records import ImageRow, ImageStart, Tiles
from skinseg.runtime.report import Row

__all__ = ["MAX_IN_FLIGHT", "WORKER_THREAD_NAME", "LocalRunner", "Runner", "RunnerFactory", "StopBatch"]

WORKER_THREAD_NAME = "skinseg-infer"  # the image workers' thread names start with it
MAX_IN_FLIGHT = 64  # images worked on at once, at most (more only queue for the one model and the cores)


class Runner(Protocol):
    """Works on a batch's images. ``slots``: images in flight at most; ``budget``: the bytes they may take together
    (an image over the whole budget still runs, alone)."""

    slots: int
    budget: float

    def cost(self, item: InputItem) -> int:
        """Bytes ``item`` is estimated to take while it is worked on (0: not counted)."""
        ...

    def start(self, index: int, item: InputItem) -> Future:
        """Start the image; the future's result is its row (:func:`~skinseg.runtime.job.process_image`), or it
        raises :class:`StopBatch` when no image can be done any more. Progress events go to the runner's queue."""
        ...

    def close(self) -> None:
        """Release what the runner holds (its threads); images in flight may still finish."""
        ...


RunnerFactory = Callable[[Path, Path, InferOptions, "dict[str, Row]", "queue.SimpleQueue[Any]"], Runner]
"""Makes a batch's runner: (model path, output folder, pinned options, the previous rows by path, event queue)."""


class StopBatch(Exception):  # noqa: N818  not an error of the image: the batch cannot go on
    """Raised through an image's future when no image can be done any more (a Dask scheduler that is gone): the
    batch stops as for a full disk (``reason``), the image has no row and a rerun does it."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _DaemonPool:
    """Up to ``workers`` daemon threads, started as jobs come (a large ``--max-in-flight`` starts no more threads
    than there are images at once): unlike ``ThreadPoolExecutor``'s, a worker stuck in a read of a dead mount
    cannot keep the process from exiting after an interrupt."""

    def __init__(self, workers: int, name: str) -> None:
        self._jobs: queue.SimpleQueue[tuple[Future, Callable[[], Row]] | None] = queue.SimpleQueue()
        self._workers, self._name = workers, name
        self._threads: list[threading.Thread] = []
        self._idle = 0  # threads waiting for a job
        self._queued = 0  # jobs no thread has taken yet
        self._lock = threading.Lock()

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            with self._lock:
                self._idle -= 1
                self._queued -= 1
            future, fn = job
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn())
                except BaseException as e:  # noqa: BLE001  handed to the caller through the future
                    future.set_exception(e)
            with self._lock:
                self._idle += 1

    def submit(self, fn: Callable[[], Row]) -> Future:
        future: Future = Future()
        with self._lock:
            self._queued += 1
            if self._queued > self._idle and len(self._threads) < self._workers:
                thread = threading.Thread(target=self._work, name=f"{self._name}-{len(self._threads)}", daemon=True)
                self._threads.append(thread)
                self._idle += 1
                thread.start()
        self._jobs.put((future, fn))
        return future

    def close(self) -> None:
        for _ in self._threads:
            self._jobs.put(None)


class LocalRunner:
    """Images worked on by a few daemon threads of this process, admitted by their estimated memory."""

    def __init__(
        self, model_path: Path, output: Path, options: InferOptions, previous: dict[str, Row], events: queue.SimpleQueue
    ) -> None:
        self.model_path, self.output, self.options, self.previous, self.events = (
            model_path, output, options, previous, events,
        )  # fmt: skip
        self.segmenter, _ = MODELS.get(model_path, options)
        model = getattr(self.segmenter, "working_memory", None) or 0  # one inference at a time: counted once
        self.budget = max(0, (options.memory_limit or default_memory_limit()) - model)
        self.slots = max(1, min(int(options.max_in_flight), MAX_IN_FLIGHT))
        self._pool = _DaemonPool(self.slots, WORKER_THREAD_NAME)

    def cost(self, item: InputItem) -> int:
        return job.image_cost(self.segmenter, item.path, self.options)

    def start(self, index: int, item: InputItem) -> Future:
        return self._pool.submit(lambda: self._work(index, item))

    def _work(self, index: int, item: InputItem) -> ImageRow:
        rel = str(item.rel)
        self.events.put(ImageStart(index=index, path=rel))

        def on_tile(done: int, total: int) -> None:
            self.events.put(Tiles(index=index, path=rel, done=done, total=total))

        return job.process_image(  # looked up on the module: tests wrap it
            self.model_path,
            item.path,
            self.options,
            self.output,
            item.rel,
            on_tile=on_tile,
            previous=self.previous.get(rel),
        )

    def close(self) -> None:
        self._pool.close()
