"""Batch segmentation: many image files in, masks, overlays and a report out (the core of `skinseg infer`).

This module is the orchestration: one class, :class:`BatchRun`, whose steps are its methods, in order:
``_prepare`` (check the options, find the inputs, pin the model, reach a remote Dask scheduler); then, the output
folder's lock held, ``_start`` (the previous report, the settings stamp, the ``start`` event), ``_run`` (admit the
images to a runner and yield each row as ``_record`` records it) and ``_finish`` (the reports and
:attr:`BatchRun.summary`).

The pieces it puts together are named for what they do: :mod:`~skinseg.runtime.options` (what to do),
:mod:`~skinseg.runtime.model_cache` (the loaded models, each read once, hashed and pinned, with its inference lock:
one image is segmented at a time), :mod:`~skinseg.runtime.job` (one image:
:func:`~skinseg.runtime.job.process_image`), :mod:`~skinseg.runtime.runners` (where images are worked on: a few
daemon threads of this process, so that while one image is being segmented the next is decoded and the previous one
written; or a Dask cluster, :mod:`skinseg.runtime.cluster`), :mod:`~skinseg.runtime.inputs`,
:mod:`~skinseg.runtime.outputs` and :mod:`~skinseg.runtime.report`. Images are admitted by their estimated working
memory against ``memory_limit`` and at most ``max_in_flight`` at once, so three 240 MP photos do not need 9 GB
together.

Guarantees:

- Outputs are written to temporary files and renamed; each carries a record of its input and settings (see
  :mod:`skinseg.runtime.outputs`), and the mask, written last, marks the image done. A rerun skips an image whose
  mask records the same input content and the same model and options, and redoes it otherwise, whatever the
  files' dates say. An image that failed is not retried while neither it nor what its failure depended on
  changed (:func:`failure_key`: the model and options, ``max_pixels``, the decoders, a foreign file in the way;
  ``retry_failed`` forces it); one that failed for lack of memory is retried.
- A file skinseg did not write is never overwritten (an ``--output`` equal to an input folder keeps its
  ground-truth masks): that image fails with the reason.
- The model is read once: replacing the file during a run changes nothing in that run.
- Every output stays inside the output folder; two inputs whose outputs would share names are not overwritten
  (the second fails with a reason); with several folders given, each gets its own sub-folder.
- ``results.csv`` and ``summary.json`` are written atomically, at the end and (``results.csv``) during the run; a
  rerun merges its rows into the previous ones, less those of inputs deleted since.
- An interrupt stops taking new images, waits a few seconds for those in flight, writes the reports and
  re-raises: a worker stuck on a dead mount cannot keep the process alive (workers are daemon threads). A full
  output disk stops the batch at the first image that cannot be written.

Progress is reported through ``on_event`` callbacks, always from the calling thread, as typed records
(:mod:`skinseg.runtime.records`); nothing here prints.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import queue
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from skinseg.runtime.errors import ImageError, ParameterError, param
from skinseg.runtime.imageheaders import image_size
from skinseg.runtime.inputs import InputItem, discover, output_key
from skinseg.runtime.model_cache import MODELS
from skinseg.runtime.options import InferOptions
from skinseg.runtime.outputs import (
    DASK_SCRATCH_NAME,
    RESULTS_NAME,
    output_lock,
    prepare_output,
    remove_stale_temps,
    stamp_settings,
)
from skinseg.runtime.records import (
    Event,
    HiddenFiles,
    ImageDone,
    ImageRow,
    RunWarning,
    SettingsChanged,
    Start,
    Stopping,
    SummaryEvent,
    Waiting,
)
from skinseg.runtime.report import (
    BatchSummary,
    Row,
    drop_deleted_inputs,
    merge_rows,
    read_results,
    versions,
    write_reports,
    write_results,
)
from skinseg.runtime.runners import LocalRunner, Runner, StopBatch

__all__ = ["BatchRun", "iter_batch", "run_batch", "segment_folder"]

CHECKPOINT_SECONDS = 2.0  # results.csv is rewritten at most this often during a run
INTERRUPT_GRACE_SECONDS = 8.0  # after an interrupt, images in flight get this long to finish


def run_batch(
    sources: Sequence[str | os.PathLike[str]],
    model_path: str | os.PathLike[str],
    output: str | os.PathLike[str],
    options: InferOptions,
    *,
    recursive: bool = False,
    wait: bool = False,
    on_event: Callable[[Event], None] | None = None,
    scheduler: str | None = None,
    security: Any = None,
) -> BatchSummary:
    """Segment every image in ``sources`` into ``output``; write ``results.csv`` and ``summary.json``; the
    summary. :func:`iter_batch` to the end (its arguments, errors and events)."""
    run = iter_batch(
        sources, model_path, output, options, recursive=recursive, wait=wait, on_event=on_event,
        scheduler=scheduler, security=security,
    )  # fmt: skip
    for _ in run:
        pass
    assert run.summary is not None
    return run.summary


def iter_batch(
    sources: Sequence[str | os.PathLike[str]],
    model_path: str | os.PathLike[str],
    output: str | os.PathLike[str],
    options: InferOptions,
    *,
    recursive: bool = False,
    wait: bool = False,
    on_event: Callable[[Event], None] | None = None,
    scheduler: str | None = None,
    security: Any = None,
) -> BatchRun:
    """A batch of every image in ``sources`` into ``output``, yielding each image's row as it completes (a
    :class:`BatchRun`); ``results.csv`` and ``summary.json`` are written as by :func:`run_batch`. Nothing starts
    before the iteration does.

    ``scheduler``: run the images as tasks on a Dask cluster instead of this process's threads (``local:N``, a
    scheduler file or address; :mod:`skinseg.runtime.cluster`), with the same outputs, reports and lock.

    Usage problems (a source that does not exist, a bad model, an unwritable or locked output folder) raise
    :class:`UsageError` before any image is touched; sources that hold no image give an empty summary (``total``
    0) and write nothing. Images that fail are recorded and the batch goes on. Events passed to ``on_event``
    (from the calling thread; :mod:`skinseg.runtime.records`): ``waiting`` (for the lock), ``start`` (total,
    provider), ``settings_changed`` (right after ``start``, when the folder holds outputs of another model or other
    options: they will be redone), ``hidden`` (before ``start``: image files skipped for their hidden names,
    ``count`` and a few ``examples``), ``warning``, ``image_start``, ``tiles`` (done, total), ``image_done`` (row),
    ``stopping`` (an interrupt or a full disk: images in flight are finishing), ``summary``.
    """
    return BatchRun(
        sources, model_path, output, options, recursive=recursive, wait=wait, on_event=on_event,
        scheduler=scheduler, security=security,
    )  # fmt: skip


def segment_folder(
    sources: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    output: str | os.PathLike[str],
    *,
    model: str | os.PathLike[str] | None = None,
    options: InferOptions | None = None,
    recursive: bool = False,
    wait: bool = False,
    on_event: Callable[[Event], None] | None = None,
) -> BatchRun:
    """:func:`iter_batch` for embedding: ``sources`` one folder, file or glob or several; ``model`` the bundled one
    by default; ``options`` the defaults of ``skinseg infer`` by default."""
    from skinseg.runtime.model_cache import default_model_path

    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    return iter_batch(
        sources, model if model is not None else default_model_path(), output,
        options if options is not None else InferOptions(), recursive=recursive, wait=wait, on_event=on_event,
    )  # fmt: skip


class BatchRun:
    """A batch under way (:func:`iter_batch`): iterate over it for each image's
    :class:`~skinseg.runtime.records.ImageRow` as the image completes (in completion order); :attr:`summary` is the
    run's :class:`~skinseg.runtime.report.BatchSummary` once the iteration has ended. Leaving the loop early
    (``break``, an exception) stops the batch as an interrupt does: images in flight get a few seconds to finish,
    and the reports are written. The batch runs once: iterating again after it ended yields nothing and keeps
    :attr:`summary`.

    The steps, in order: :meth:`_prepare`; the output folder locked, :meth:`_start`, :meth:`_run` (which hands
    each row to :meth:`_record`) and :meth:`_finish`; :meth:`_disconnect` (a Dask cluster's connection)."""

    def __init__(
        self,
        sources: Sequence[str | os.PathLike[str]],
        model_path: str | os.PathLike[str],
        output: str | os.PathLike[str],
        options: InferOptions,
        *,
        recursive: bool = False,
        wait: bool = False,
        on_event: Callable[[Event], None] | None = None,
        scheduler: str | None = None,
        security: Any = None,
    ) -> None:
        self.summary: BatchSummary | None = None  # set by _finish once the reports are written (or empty: no input)
        self._sources, self._model_path, self._options = sources, model_path, options
        self._output_arg = output
        self._recursive, self._wait, self._scheduler, self._security = recursive, wait, scheduler, security
        self._emit: Callable[[Event], None] = on_event or (lambda event: None)
        self._cluster: Any = None  # a DaskCluster, connected by _prepare (a remote one) or _start (local:N)
        self._rows = self._batch()  # nothing runs before the first row is asked for

    def __iter__(self) -> Iterator[ImageRow]:
        # The loop holds this generator alone: a loop left with ``break`` drops it, which closes the batch.
        try:
            yield from self._rows
        finally:  # an interrupt that lands here, between two rows, stops the batch too (its reports written)
            self._rows.close()

    def close(self) -> None:
        """Stop the batch now (as leaving the loop early does)."""
        self._rows.close()

    # ----------------------------------------------------------------------------------------------- the steps

    def _batch(self) -> Generator[ImageRow, None, None]:
        """The whole batch, yielding each image's row once it is recorded."""
        if not self._prepare():
            return
        try:
            prepare_output(self._output)

            def on_wait() -> None:
                self._emit(Waiting(output=str(self._output)))

            with output_lock(self._output, wait=self._wait, on_wait=on_wait):
                self._start()
                try:
                    self._tally.stopped = yield from self._run()
                except BaseException:
                    self._tally.stopped = "interrupted"
                    self._finish()
                    raise
                self._finish()
        except KeyboardInterrupt:
            if not self._ended:  # interrupted before the batch ended: an interrupt, as it was
                raise
        finally:
            self._disconnect()

    @property
    def _ended(self) -> bool:
        """Whether the batch ended, not interrupted, and its reports are written: an interrupt after that changes
        nothing."""
        return self.summary is not None and self.summary.stopped != "interrupted"

    def _prepare(self) -> bool:
        """Everything that can be refused before the output folder is touched: the output and the options, the
        scheduler value, the inputs (``hidden`` event), the model (pinned: read once and hashed; the options
        become the pinned ones), a remote scheduler's connection; ``warning`` for a scale far from the model's.
        False when the sources hold no input (:attr:`summary` is then the empty one)."""
        if not os.fspath(self._output_arg).strip():  # before Path(): Path("") is the current folder
            raise ParameterError(f"{param('output')} is empty; give the folder the results go to")
        self._output = Path(self._output_arg)
        self._options.check()  # a wrong option is said on a night with no new images too
        local_cluster = False
        if self._scheduler is not None:  # so is a scheduler value that cannot work (no connection tried yet)
            from skinseg.runtime.cluster import check_scheduler, is_local

            check_scheduler(self._scheduler, security=self._security)
            local_cluster = is_local(self._scheduler)
        found = discover(self._sources, recursive=self._recursive, output=self._output)
        if found.hidden:  # said once, not one line each: a Mac's ._ files can be many
            self._emit(HiddenFiles(count=len(found.hidden), examples=[str(p) for p in found.hidden[:3]]))
        if not found.items and not found.unreadable:
            self.summary = BatchSummary(0, 0, 0, 0.0, 0.0, "", str(self._model_path), "", str(self._output))
            return False
        self._items, self._unreadable = found.items, found.unreadable
        # a bad model stops us before any image or output
        self._segmenter, self._options = MODELS.pin(self._model_path, self._options)
        if self._items:  # once per run: a scale far from the model's, judged on the first photo's size
            with contextlib.suppress(ImageError, OSError, ValueError):
                if note := self._segmenter.scale_warning(*image_size(self._items[0].path)):
                    self._emit(RunWarning(kind="scale", message=note))
        if self._scheduler is not None and not local_cluster:  # an unreachable scheduler stops us before any output
            from skinseg.runtime.cluster import connect

            self._cluster = connect(self._scheduler, security=self._security)
        return True

    def _start(self) -> None:
        """The lock held: remove a killed run's temporary files, start a local Dask cluster (its scratch space
        inside the output folder), read the previous report, stamp the settings; ``start`` (and
        ``settings_changed``) events; the unreadable folders' rows."""
        output, options = self._output, self._options
        provider = self._segmenter.provider
        remove_stale_temps(output)  # a killed run's temporary files and local cluster's scratch space
        if self._scheduler is not None and self._cluster is None:  # local:N, started once the lock is ours
            from skinseg.runtime.cluster import connect

            self._cluster = connect(self._scheduler, scratch=output / DASK_SCRATCH_NAME)
        if self._cluster is not None:
            self._cluster.check_workers(self._model_path, output)
            provider = f"{self._segmenter.provider} on {self._cluster.describe()}"
        self._results_path = output / RESULTS_NAME
        # Rows of inputs deleted since the previous run go; those of inputs not given this time stay.
        self._previous = drop_deleted_inputs(read_results(self._results_path), {str(i.rel) for i in self._items})
        model_sha256 = options.model_sha256 or ""
        had_outputs = self._results_path.is_file()  # a new folder's first stamp is no news
        stamp = stamp_settings(output, model_sha256, options.output_settings())
        self._tally = BatchSummary(  # this run's counts; the summary once _finish has written the reports
            ok=0,
            failed=0,
            skipped=0,
            seconds=0.0,
            megapixels=0.0,
            provider=provider,
            model=str(Path(self._model_path)),
            model_sha256=model_sha256,
            output=str(output),
            versions=versions(),
        )
        self._done: list[ImageRow] = []  # the rows recorded
        self._outbox: list[ImageRow] = []  # recorded, not yet yielded
        self._started = self._last_checkpoint = time.perf_counter()
        self._total = len(self._items) + len(self._unreadable)
        self._emit(Start(total=self._total, provider=provider, model=str(Path(self._model_path)), output=str(output)))
        if stamp.changed and (had_outputs or stamp.previous is not None):
            current = {"model_sha256": model_sha256, "options": options.output_settings()}
            self._emit(SettingsChanged(output=str(output), previous=stamp.previous, current=current))
        for k, folder in enumerate(self._unreadable):
            where = f"{folder.rel}/" if folder.rel.parts else "./"
            error = f"{folder.path}: the folder cannot be read ({folder.reason}); its images were not found"
            self._record(len(self._items) + k, _failed_row(where, folder.path, error))

    def _run(self) -> Generator[ImageRow, None, str]:
        """Run the images on a runner (:class:`~skinseg.runtime.runners.LocalRunner`, or the Dask cluster's),
        admitting them by estimated memory (``options.memory_limit``) and count (``options.max_in_flight``); its
        events and rows are handed to ``on_event`` and :meth:`_record` on this thread, and the rows recorded are
        yielded as they come. Two inputs whose outputs would share names: the second fails, unless it is the one
        whose outputs an earlier run wrote.

        Returns why it stopped early ("" when it did not): a full output disk, or a runner whose images raise
        :class:`StopBatch` (a Dask scheduler that is gone). An interrupt (KeyboardInterrupt, or the loop left)
        stops admitting images, gives those in flight :data:`INTERRUPT_GRACE_SECONDS` (a second interrupt ends the
        wait), records what finished and re-raises.
        """
        owner: dict[tuple[str, str], InputItem] = {}
        for item in self._items:  # the first of a name stem, or the one whose outputs an earlier run wrote
            key = output_key(item.rel)
            if key not in owner or (self._owns_outputs(item) and not self._owns_outputs(owner[key])):
                owner[key] = item
        clashes: dict[tuple[str, str], int] = {}
        jobs: deque[tuple[int, InputItem]] = deque()
        for index, item in enumerate(self._items):
            key = output_key(item.rel)
            first = owner[key]
            if first is item:
                jobs.append((index, item))
            else:
                clashes[key] = clashes.get(key, 1) + 1
                rel = item.rel if item.rel != first.rel else f"{item.rel} [{clashes[key]}]"
                error = (
                    f"{item.path}: its outputs would overwrite those of {first.path} (same folder and name stem "
                    f"'{item.rel.stem}'); rename one of the two files"
                )
                row = _failed_row(rel, item.path, error)
                if not self._options.retry_failed and self._same_failure(row):
                    row = dataclasses.replace(row, retried=False)  # the same clash as last night: not failed anew
                self._record(index, row)
        self._events: queue.SimpleQueue[Event] = queue.SimpleQueue()
        make_runner = self._cluster.runner if self._cluster is not None else LocalRunner
        runner: Runner = make_runner(Path(self._model_path), self._output, self._options, self._previous, self._events)
        pending: deque[tuple[int, Future, int]] = deque()  # (index, the image's future, its cost)
        stopped = ""
        try:
            while (jobs and not stopped) or pending:
                while jobs and not stopped and len(pending) < runner.slots:
                    index, item = jobs[0]
                    need = runner.cost(item)
                    if pending and sum(n for _, _, n in pending) + need > runner.budget:
                        break  # wait for memory; an image over the whole budget still runs, alone
                    jobs.popleft()
                    pending.append((index, runner.start(index, item), need))
                _wait_any([f for _, f, _ in pending], timeout=0.1)
                self._drain()
                for entry in [e for e in pending if e[1].done()]:
                    pending.remove(entry)
                    row: ImageRow | None = None
                    try:
                        row = entry[1].result()
                        stop = row.stop
                    except StopBatch as e:  # the image was not done, and none after it can be: stop, no row
                        stop = e.reason
                    if stop and not stopped:
                        stopped = stop
                        self._emit(Stopping(reason=stopped, in_flight=len(pending)))
                    if row is not None:
                        self._record(entry[0], row)
                yield from self._take()
            self._drain()
            yield from self._take()
        except BaseException:
            self._emit(Stopping(reason="interrupted", in_flight=len(pending)))
            self._finish_in_flight(pending)
            raise
        finally:
            runner.close()
        return stopped

    def _same_failure(self, row: ImageRow) -> bool:
        """Whether the previous report has ``row``'s failure already, for the same input and with the same reason."""
        before = self._previous.get(row.path) or {}
        return before.get("status") == "failed" and (before.get("input"), before.get("error")) == (row.input, row.error)

    def _owns_outputs(self, item: InputItem) -> bool:
        """Whether the previous report has ``item``'s outputs written from this very file (a.png of yesterday keeps
        its outputs when an a.jpg arrives today: the newcomer is the one that fails)."""
        row = self._previous.get(str(item.rel)) or {}
        return row.get("status") in ("ok", "skipped") and row.get("input") == os.path.abspath(item.path)

    def _record(self, index: int, row: ImageRow) -> None:
        """Count an image's row, say it (``image_done``), keep it to yield; ``results.csv`` is checkpointed every
        :data:`CHECKPOINT_SECONDS`. A skipped image's row is what the outputs on disk say (the previous report's
        data where it describes them)."""
        if row.status == "skipped":
            row = ImageRow.from_dict(self._report_rows([row])[row.path])
        self._done.append(row)
        self._outbox.append(row)
        self._tally.count(row)
        self._emit(ImageDone(index=index, done=len(self._done), total=self._total, row=row))
        if time.perf_counter() - self._last_checkpoint >= CHECKPOINT_SECONDS:
            with contextlib.suppress(OSError):  # a full disk shows up in the final write, with a message
                write_results(self._results_path, self._report_rows(self._done).values())
            self._last_checkpoint = time.perf_counter()

    def _finish(self) -> None:
        """Write the reports (this run's rows merged into the previous ones); :attr:`summary`; ``summary``."""
        self._tally.seconds = time.perf_counter() - self._started
        self._tally.not_done = self._total - len(self._done)
        write_reports(
            self._output, self._report_rows(self._done).values(), self._tally, self._options, fresh=self._done
        )
        self.summary = self._tally
        self._emit(SummaryEvent(summary=self.summary))

    def _disconnect(self) -> None:
        """Close the Dask cluster's connection (and a local cluster); an interrupt meanwhile is one only while
        the batch has not ended."""
        if self._cluster is not None:
            try:
                self._cluster.close()
            except KeyboardInterrupt:
                if not self._ended:
                    raise

    # ------------------------------------------------------------------------------------------- the helpers

    def _report_rows(self, rows: Iterable[ImageRow]) -> dict[str, Row]:
        """``rows`` over the previous run's, by path, as the report module's dicts (the one place rows become
        dicts)."""
        return merge_rows(self._previous, [row.to_dict() for row in rows])

    def _take(self) -> list[ImageRow]:
        """The rows recorded since the last call."""
        taken = self._outbox[:]
        self._outbox.clear()
        return taken

    def _drain(self) -> None:
        """Hand the runner's progress events to ``on_event``, on this thread."""
        while True:
            try:
                self._emit(self._events.get_nowait())
            except queue.Empty:
                return

    def _finish_in_flight(self, pending: deque[tuple[int, Future, int]]) -> None:
        """After an interrupt: let images in flight finish (their outputs are whole either way) for a few seconds,
        and record those that did; a second interrupt, or a worker stuck past the grace, ends the wait."""
        deadline = time.monotonic() + INTERRUPT_GRACE_SECONDS
        with contextlib.suppress(KeyboardInterrupt):
            while pending and time.monotonic() < deadline:
                _wait_any([f for _, f, _ in pending], timeout=0.1)
                for entry in [e for e in pending if e[1].done()]:
                    pending.remove(entry)
                    if not entry[1].cancelled() and entry[1].exception() is None:
                        self._record(entry[0], entry[1].result())
        with contextlib.suppress(Exception):
            self._drain()


def _failed_row(rel: object, path: str | os.PathLike[str], error: str) -> ImageRow:
    """The row of an input that failed before any work (an unreadable folder, a name clash): ``input`` absolute,
    as :func:`~skinseg.runtime.report.empty_row` has it."""
    return ImageRow(path=str(rel), input=os.path.abspath(path), status="failed", error=error)


def _wait_any(futures: list[Future], timeout: float) -> None:
    import concurrent.futures as cf

    if futures:
        cf.wait(futures, timeout=timeout, return_when=cf.FIRST_COMPLETED)
    else:
        time.sleep(timeout)
