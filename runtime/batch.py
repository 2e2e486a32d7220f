"""Batch segmentation: many image files in, masks, overlays and a report out (the core of `skinseg infer`).

This module is the orchestration; the pieces it puts together are named for what they do:
:mod:`~skinseg.runtime.options` (what to do), :mod:`~skinseg.runtime.model_cache` (the loaded models),
:mod:`~skinseg.runtime.job` (one image: :func:`~skinseg.runtime.job.process_image`), :mod:`~skinseg.runtime.runners`
(where images are worked on: this process's threads, or a Dask cluster, :mod:`skinseg.runtime.cluster`),
:mod:`~skinseg.runtime.inputs`, :mod:`~skinseg.runtime.outputs` and :mod:`~skinseg.runtime.report`.

:func:`run_batch` finds the inputs, loads the model once (from one read of the file, whose hash it records) and
checks the output folder before touching an image, takes the folder's lock, and runs the image jobs on a
few worker threads that share one inference lock: while one image is being segmented the next is decoded and the
previous one written. Images are admitted by their estimated working memory against ``memory_limit`` and at most
``max_in_flight`` at once, so three 240 MP photos do not need 9 GB together.

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

Progress is reported through ``on_event(dict)`` callbacks, always from the calling thread; nothing here prints.
"""

from __future__ import annotations

import contextlib
import os
import queue
import time
from collections import deque
from collections.abc import Callable, Generator, Iterator, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from skinseg.runtime.errors import ImageError, ParameterError, param
from skinseg.runtime.imageio import image_size
from skinseg.runtime.inputs import InputItem, Unreadable, discover, output_key
from skinseg.runtime.model_cache import MODELS
from skinseg.runtime.options import InferOptions
from skinseg.runtime.outputs import (
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
    empty_row,
    merge_rows,
    read_results,
    versions,
    write_reports,
    write_results,
)
from skinseg.runtime.runners import LocalRunner, RunnerFactory, StopBatch

__all__ = ["BatchRun", "iter_batch", "run_batch", "segment_folder"]

CHECKPOINT_SECONDS = 2.0  # results.csv is rewritten at most this often during a run
INTERRUPT_GRACE_SECONDS = 8.0  # after an interrupt, images in flight get this long to finish


def _collision_row(item: InputItem, first: InputItem, n: int) -> Row:
    """The failed row of an input whose outputs would be ``first``'s; keyed apart when the two share a path."""
    row = empty_row(item.rel if item.rel != first.rel else f"{item.rel} [{n}]", item.path)
    row.update(
        status="failed",
        error=(
            f"{item.path}: its outputs would overwrite those of {first.path} (same folder and name stem "
            f"'{item.rel.stem}'); rename one of the two files"
        ),
    )
    return row


def _unreadable_row(folder: Unreadable) -> Row:
    row = empty_row(f"{folder.rel}/" if folder.rel.parts else "./", folder.path)
    row.update(
        status="failed", error=f"{folder.path}: the folder cannot be read ({folder.reason}); its images were not found"
    )
    return row


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


class BatchRun:
    """A batch under way: iterate over it for each image's :class:`~skinseg.runtime.records.ImageRow` as the image
    completes (in completion order); :attr:`summary` is the run's :class:`~skinseg.runtime.report.BatchSummary`
    once the iteration has ended. Leaving the loop early (``break``, an exception) stops the batch as an interrupt
    does: images in flight get a few seconds to finish, and the reports are written."""

    def __init__(
        self,
        start: Callable[[Callable[[Event], None]], Generator[ImageRow, None, BatchSummary]],
        on_event: Callable[[Event], None] | None = None,
    ) -> None:
        self.summary: BatchSummary | None = None

        def listen(event: Event) -> None:  # a batch left early returns nothing: its summary comes as an event
            if isinstance(event, SummaryEvent):
                self.summary = event.summary
            if on_event is not None:
                on_event(event)

        self._rows = start(listen)

    def __iter__(self) -> Iterator[ImageRow]:
        try:
            self.summary = yield from self._rows
        finally:  # an interrupt that lands here, between two rows, stops the batch too (its reports written)
            self._rows.close()

    def close(self) -> None:
        """Stop the batch now (as leaving the loop early does)."""
        self._rows.close()


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
        lambda listen: _batch(sources, model_path, output, options, recursive=recursive, wait=wait,
                              on_event=listen, scheduler=scheduler, security=security),
        on_event,
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


def _batch(
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
) -> Generator[ImageRow, None, BatchSummary]:
    """The batch of :func:`iter_batch`: yields the rows, returns the summary."""
    emit = on_event or (lambda event: None)
    if not os.fspath(output).strip():  # before Path(): Path("") is the current folder
        raise ParameterError(f"{param('output')} is empty; give the folder the results go to")
    output = Path(output)
    options.check()  # a wrong option is said on a night with no new images too
    local_cluster = False
    if scheduler is not None:  # so is a scheduler value that cannot work (no connection tried yet)
        from skinseg.runtime.cluster import check_scheduler, is_local

        check_scheduler(scheduler, security=security)
        local_cluster = is_local(scheduler)
    found = discover(sources, recursive=recursive, output=output)
    if found.hidden:  # said once, not one line each: a Mac's ._ files can be many
        emit(HiddenFiles(count=len(found.hidden), examples=[str(p) for p in found.hidden[:3]]))
    if not found.items and not found.unreadable:
        return BatchSummary(0, 0, 0, 0.0, 0.0, "", str(model_path), "", str(output))
    segmenter, options = MODELS.pin(model_path, options)  # a bad model stops us before any image or output
    if found.items:  # once per run: a --scale far from the model's, judged on the first photo's size
        with contextlib.suppress(ImageError, OSError, ValueError):
            if note := segmenter.scale_warning(*image_size(found.items[0].path)):
                emit(RunWarning(kind="scale", message=note))
    cluster, completed = None, []  # completed: the summary, once the batch ended and its reports are written
    if scheduler is not None and not local_cluster:  # an unreachable scheduler stops us before any output
        from skinseg.runtime.cluster import connect

        cluster = connect(scheduler, security=security)
    try:
        prepare_output(output)

        def on_wait() -> None:
            emit(Waiting(output=str(output)))

        with output_lock(output, wait=wait, on_wait=on_wait):
            provider, make_runner = segmenter.provider, None
            remove_stale_temps(output)  # a killed run's temporary files and local cluster's scratch space
            if scheduler is not None and local_cluster:  # started once the lock is ours, its scratch inside
                from skinseg.runtime.cluster import SCRATCH_NAME, connect

                cluster = connect(scheduler, scratch=output / SCRATCH_NAME)
            if cluster is not None:
                cluster.check_workers(model_path, output)
                provider, make_runner = f"{segmenter.provider} on {cluster.describe()}", cluster.runner
            yield from _run_locked(
                found.items, found.unreadable, Path(model_path), output, options, provider, emit, make_runner,
                completed=completed,
            )  # fmt: skip
    except KeyboardInterrupt:
        if not completed:  # interrupted before the batch ended: an interrupt, as it was
            raise
    finally:
        if cluster is not None:
            try:
                cluster.close()
            except KeyboardInterrupt:
                if not completed:
                    raise
    return completed[0]  # the batch ended and its reports are written: an interrupt after that changes nothing


def _run_locked(
    items: list[InputItem],
    unreadable: list[Unreadable],
    model_path: Path,
    output: Path,
    options: InferOptions,
    provider: str,
    emit: Callable[[Event], None],
    make_runner: RunnerFactory | None = None,
    *,
    completed: list[BatchSummary] | None = None,
) -> Generator[ImageRow, None, BatchSummary]:
    """The batch, the output folder's lock held, yielding each image's row once it is recorded; ``completed`` gets
    the summary as soon as a batch that was not interrupted has its reports written."""
    results_path = output / RESULTS_NAME
    # Rows of inputs deleted since the previous run go; those of inputs not given this time stay.
    previous = drop_deleted_inputs(read_results(results_path), {str(item.rel) for item in items})
    model_sha256 = options.model_sha256 or ""
    had_outputs = results_path.is_file()  # a new folder's first stamp is no news
    stamp = stamp_settings(output, model_sha256, options.output_settings())
    summary = BatchSummary(
        ok=0,
        failed=0,
        skipped=0,
        seconds=0.0,
        megapixels=0.0,
        provider=provider,
        model=str(model_path),
        model_sha256=model_sha256,
        output=str(output),
        versions=versions(),
    )
    rows: list[Row] = []
    outbox: list[ImageRow] = []  # recorded, not yet yielded
    start = time.perf_counter()
    last_checkpoint = start
    total = len(items) + len(unreadable)
    emit(Start(total=total, provider=provider, model=str(model_path), output=str(output)))
    if stamp.changed and (had_outputs or stamp.previous is not None):
        current = {"model_sha256": model_sha256, "options": options.output_settings()}
        emit(SettingsChanged(output=str(output), previous=stamp.previous, current=current))

    def record(index: int, result: ImageRow) -> None:
        nonlocal last_checkpoint
        row = result.to_dict()
        if row["status"] == "skipped":  # report what the outputs on disk say
            row = merge_rows(previous, [row])[row["path"]]
            result = ImageRow.from_dict(row)
        rows.append(row)
        outbox.append(result)
        summary.count(row)
        emit(ImageDone(index=index, done=len(rows), total=total, row=result))
        if time.perf_counter() - last_checkpoint >= CHECKPOINT_SECONDS:
            with contextlib.suppress(OSError):  # a full disk shows up in the final write, with a message
                write_results(results_path, merge_rows(previous, rows).values())
            last_checkpoint = time.perf_counter()

    for k, folder in enumerate(unreadable):
        record(len(items) + k, ImageRow.from_dict(_unreadable_row(folder)))

    def finish() -> None:
        summary.seconds = time.perf_counter() - start
        summary.not_done = total - len(rows)
        write_reports(output, merge_rows(previous, rows).values(), summary, options, fresh=rows)
        if completed is not None and not summary.interrupted:
            completed.append(summary)
        emit(SummaryEvent(summary=summary))

    try:
        summary.stopped = yield from _pipeline(
            items, model_path, output, options, emit, record, previous, outbox, make_runner
        )
    except BaseException:
        summary.stopped = "interrupted"
        finish()
        raise
    finish()
    return summary


def _pipeline(
    items: list[InputItem],
    model_path: Path,
    output: Path,
    options: InferOptions,
    emit: Callable[[Event], None],
    record: Callable[[int, ImageRow], None],
    previous: dict[str, Row],
    outbox: list[ImageRow],
    make_runner: RunnerFactory | None = None,
) -> Generator[ImageRow, None, str]:
    """Run :func:`~skinseg.runtime.job.process_image` on ``items``, admitting images by estimated memory
    (``options.memory_limit``) and count (``options.max_in_flight``); events and rows are handed to ``emit``/``record``
    on this thread, and the rows recorded (``outbox``) are yielded as they come.

    Returns why it stopped early ("" when it did not): a full output disk, or a runner whose images raise
    :class:`StopBatch` (a Dask scheduler that is gone). An interrupt (KeyboardInterrupt)
    stops admitting images, gives those in flight :data:`INTERRUPT_GRACE_SECONDS` (a second interrupt ends the
    wait), records what finished and re-raises.
    """
    events: queue.SimpleQueue[Event] = queue.SimpleQueue()
    seen: dict[tuple[str, str], InputItem] = {}
    clashes: dict[tuple[str, str], int] = {}
    jobs: deque[tuple[int, InputItem]] = deque()
    for index, item in enumerate(items):
        key = output_key(item.rel)
        first = seen.setdefault(key, item)
        if first is item:
            jobs.append((index, item))
        else:
            clashes[key] = clashes.get(key, 1) + 1
            record(index, ImageRow.from_dict(_collision_row(item, first, clashes[key])))
    runner = (make_runner or LocalRunner)(model_path, output, options, previous, events)

    def drain() -> None:
        while True:
            try:
                emit(events.get_nowait())
            except queue.Empty:
                return

    pending: deque[tuple[int, Future, int]] = deque()
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
            drain()
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
                    emit(Stopping(reason=stopped, in_flight=len(pending)))
                if row is not None:
                    record(entry[0], row)
            yield from _take(outbox)
        drain()
        yield from _take(outbox)
    except BaseException:
        emit(Stopping(reason="interrupted", in_flight=len(pending)))
        _finish_in_flight(pending, record, drain)
        raise
    finally:
        runner.close()
    return stopped


def _take(outbox: list[ImageRow]) -> list[ImageRow]:
    """The rows in ``outbox``, which is emptied."""
    taken = outbox[:]
    outbox.clear()
    return taken


def _wait_any(futures: list[Future], timeout: float) -> None:
    import concurrent.futures as cf

    if futures:
        cf.wait(futures, timeout=timeout, return_when=cf.FIRST_COMPLETED)
    else:
        time.sleep(timeout)


def _finish_in_flight(
    pending: deque[tuple[int, Future, int]], record: Callable[[int, ImageRow], None], drain: Callable[[], None]
) -> None:
    """After an interrupt: let images in flight finish (their outputs are whole either way) for a few seconds, and
    record those that did; a second interrupt, or a worker stuck past the grace, ends the wait."""
    deadline = time.monotonic() + INTERRUPT_GRACE_SECONDS
    with contextlib.suppress(KeyboardInterrupt):
        while pending and time.monotonic() < deadline:
            _wait_any([f for _, f, _ in pending], timeout=0.1)
            for entry in [e for e in pending if e[1].done()]:
                pending.remove(entry)
                if not entry[1].cancelled() and entry[1].exception() is None:
                    record(entry[0], entry[1].result())
    with contextlib.suppress(Exception):
        drain()
