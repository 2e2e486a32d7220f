"""Batch segmentation: many image files in, masks, overlays and a report out (the core of `skinseg infer`).

One image's whole job is :func:`process_image`: it reads the image, segments it, writes its outputs and returns
its report row. Its only shared state is a per-process cache of loaded models (:func:`get_segmenter`), so the
same call can run unchanged on other processes or machines (a Dask worker, say).

:func:`run_batch` finds the inputs, checks the model and the output folder before touching an image, takes
the output folder's lock, and runs :func:`process_image` on a small thread pool whose members share one
inference lock: while one image is being segmented the next is decoded and the previous one written, so the
cores running the model never wait on I/O, and at most :data:`PIPELINE_DEPTH` images are in memory.

Guarantees:

- Outputs are written to hidden temporary files and renamed; the mask is written **last**, so an existing mask
  that is newer than its input means the image is done. A rerun skips such images (``overwrite`` redoes them)
  and removes temporary files a killed run left behind.
- A rerun with another model or other options that change the outputs (:meth:`InferOptions.output_settings`)
  redoes every image: the output folder's settings stamp (``.skinseg-settings.json``, see
  :func:`skinseg.runtime.outputs.stamp_settings`) is rewritten and masks older than it are out of date. A folder
  without a stamp (made by an older skinseg) gets one and its images are redone once.
- Every output stays inside the output folder: a relative path with ``..``, an absolute one, or a symlinked
  folder that leads out is refused for that image.
- ``results.csv`` (one row per image) and ``summary.json`` are written atomically; a rerun merges its rows into
  the previous ones, less the rows of inputs that were deleted since. ``results.csv`` is also checkpointed
  during the run.
- Two inputs whose outputs would have the same name (``a.jpg`` and ``a.png`` in one folder; names compared
  case-insensitively, for case-insensitive file systems) are not overwritten: the second one fails with a reason.

Progress is reported through ``on_event(dict)`` callbacks, always from the calling thread; nothing here prints.

This module is the run itself (options, the model cache, one image's work, the pipeline); input discovery lives
in :mod:`skinseg.runtime.inputs`, output paths and writing in :mod:`skinseg.runtime.outputs`, and the report files in
:mod:`skinseg.runtime.report`. Their public names are re-exported here.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from skinseg.runtime.defaults import DEFAULT_MAX_PIXELS
from skinseg.runtime.errors import SkinsegError, UsageError
from skinseg.runtime.imageio import SUPPORTED_EXTENSIONS, file_sha256, read_image
from skinseg.runtime.inputs import InputItem, discover_inputs, output_key
from skinseg.runtime.outputs import (
    LOCK_NAME,
    OUTPUT_SUFFIXES,
    RESULTS_NAME,
    SETTINGS_NAME,
    SUMMARY_NAME,
    OutputPaths,
    check_inside,
    output_lock,
    output_paths,
    outputs_up_to_date,
    prepare_output,
    remove_stale_temps,
    stamp_settings,
    write_outputs,
)
from skinseg.runtime.report import (
    CSV_FIELDS,
    BatchSummary,
    Row,
    drop_deleted_inputs,
    merge_rows,
    read_results,
    row_from_outputs,
    stats_row,
    versions,
    write_reports,
    write_results,
)
from skinseg.runtime.tiling import DEFAULT_BATCH_SIZE

__all__ = [
    "CSV_FIELDS",
    "LOCK_NAME",
    "OUTPUT_SUFFIXES",
    "PIPELINE_DEPTH",
    "RESULTS_NAME",
    "SETTINGS_NAME",
    "SUMMARY_NAME",
    "BatchSummary",
    "InferOptions",
    "InputItem",
    "OutputPaths",
    "default_model_path",
    "discover_inputs",
    "get_segmenter",
    "merge_rows",
    "output_lock",
    "output_paths",
    "outputs_up_to_date",
    "prepare_output",
    "process_image",
    "read_results",
    "remove_stale_temps",
    "run_batch",
    "write_outputs",
    "write_results",
]

DEFAULT_MODEL = Path(__file__).resolve().parent / "models" / "skinseg_default.onnx"
PIPELINE_DEPTH = 3  # images in flight: one in the model, up to two being decoded or written
CHECKPOINT_SECONDS = 2.0  # results.csv is rewritten at most this often during a run

Event = dict[str, Any]


# --------------------------------------------------------------------------------------------------- options


@dataclass(frozen=True)
class InferOptions:
    """What `skinseg infer` does to each image. ``None`` means the model's own setting (from its metadata)."""

    device: str = "auto"
    threads: int | None = None
    tile: int | None = None
    scale: str | None = None
    overlap: float = 0.25
    batch_size: int = DEFAULT_BATCH_SIZE
    threshold: float | None = None
    keep_largest: bool | None = None
    fill_holes: bool | None = None
    tta: bool | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS
    save_prob: bool = False
    contours: bool = False
    overwrite: bool = False

    def segmenter_kwargs(self) -> dict[str, Any]:
        """The options that shape the :class:`~skinseg.runtime.segmenter.Segmenter` (and so its cache key)."""
        return {
            "device": self.device,
            "threads": self.threads,
            "tile": self.tile,
            "scale": self.scale,
            "overlap": self.overlap,
            "batch_size": self.batch_size,
            "threshold": self.threshold,
            "keep_largest": self.keep_largest,
            "fill_holes": self.fill_holes,
            "tta": self.tta,
            "max_pixels": self.max_pixels,
        }

    def output_settings(self) -> dict[str, Any]:
        """The options that change an image's outputs (recorded in the output folder's settings stamp).

        Not the ones that only change the speed (``device``, ``threads``, ``batch_size``) or which images are
        refused (``max_pixels``), nor ``overwrite``.
        """
        kwargs = self.segmenter_kwargs()
        for key in ("device", "threads", "batch_size", "max_pixels"):
            del kwargs[key]
        return {**kwargs, "save_prob": self.save_prob, "contours": self.contours}


def default_model_path() -> Path:
    """The bundled default model; :class:`UsageError` while none is installed."""
    if DEFAULT_MODEL.is_file():
        return DEFAULT_MODEL
    raise UsageError(
        f"--model is required until a default model is installed (there is none at {DEFAULT_MODEL}); "
        "pass --model path/to/model.onnx"
    )


# --------------------------------------------------------------------------------------------------- models

_SEGMENTERS: dict[tuple[Any, ...], tuple[Any, threading.Lock]] = {}
_SEGMENTERS_LOCK = threading.Lock()
_MAX_SEGMENTERS = 4


def get_segmenter(model_path: str | os.PathLike[str], options: InferOptions) -> tuple[Any, threading.Lock]:
    """A cached :class:`~skinseg.runtime.segmenter.Segmenter` for this model file and options, and its inference lock.

    The cache is per process and keyed by the model's real path, size and modification time and
    :meth:`InferOptions.segmenter_kwargs`, so a replaced model file is reloaded. Hold the lock while running
    the model: one inference at a time keeps onnxruntime's threads from competing for the cores.
    """
    from skinseg.runtime.segmenter import Segmenter

    path = Path(model_path).resolve()
    try:
        st = path.stat()
        stamp: tuple[int, int] | None = (st.st_size, st.st_mtime_ns)
    except OSError:
        stamp = None  # Segmenter reports the missing file
    kwargs = options.segmenter_kwargs()
    key = (str(path), stamp, tuple(sorted(kwargs.items())))
    with _SEGMENTERS_LOCK:
        if key not in _SEGMENTERS:
            segmenter = Segmenter(path, **kwargs)
            while len(_SEGMENTERS) >= _MAX_SEGMENTERS:
                _SEGMENTERS.pop(next(iter(_SEGMENTERS)))
            _SEGMENTERS[key] = (segmenter, threading.Lock())
        return _SEGMENTERS[key]


# --------------------------------------------------------------------------------------------------- one image


def _one_line(error: BaseException, limit: int = 300) -> str:
    text = " ".join(str(error).split())
    if not isinstance(error, SkinsegError):
        text = f"{type(error).__name__}: {text}" if text else type(error).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _empty_row(rel: PurePosixPath, image_path: str | os.PathLike[str]) -> Row:
    row: Row = dict.fromkeys(CSV_FIELDS)
    row.update(path=str(rel), input=os.fspath(image_path), status="", error="")
    return row


def process_image(
    model_path: str | os.PathLike[str],
    image_path: str | os.PathLike[str],
    options: InferOptions,
    output_root: str | os.PathLike[str],
    rel_path: str | PurePosixPath,
    *,
    on_tile: Callable[[int, int], None] | None = None,
    since_ns: int | None = None,
) -> Row:
    """Segment one image file and write its outputs under ``output_root``; return its report row.

    The row has the keys :data:`CSV_FIELDS`; ``status`` is ``ok``, ``skipped`` (outputs up to date and not
    ``options.overwrite``) or ``failed`` with a one-line ``error``. Never raises for a bad image or a failed
    write; a model that cannot be loaded raises :class:`ModelError` (nothing can succeed then). ``since_ns``
    (the output folder's :class:`~skinseg.runtime.outputs.SettingsStamp`) makes masks not newer than it out of date.
    """
    start = time.perf_counter()
    rel = PurePosixPath(rel_path)
    row = _empty_row(rel, image_path)
    try:
        paths = output_paths(output_root, rel, options)
        if not options.overwrite and outputs_up_to_date(image_path, paths, since_ns):
            row["status"] = "skipped"
            return row
    except Exception as e:  # a refused path fails this image only
        row.update(status="failed", error=_one_line(e), seconds=0.0)
        return row
    segmenter, lock = get_segmenter(model_path, options)  # no model, no batch: this one raises
    waited = 0.0
    try:
        image = read_image(image_path, max_pixels=options.max_pixels)
        before = time.perf_counter()
        with lock:
            waited = time.perf_counter() - before
            result = segmenter.segment(image, on_tile=on_tile)
        paths.mask.parent.mkdir(parents=True, exist_ok=True)
        check_inside(Path(output_root).resolve(), paths.mask.parent, rel)  # in case a link appeared meanwhile
        write_outputs(paths, image, result)
        row.update(stats_row(result.stats), status="ok")
    except Exception as e:  # one bad file must never stop the batch: record the reason and go on
        row.update(status="failed", error=_one_line(e))
    row["seconds"] = round(time.perf_counter() - start - waited, 4)
    return row


# --------------------------------------------------------------------------------------------------- the batch


def _collision_row(item: InputItem, first: InputItem) -> Row:
    row = _empty_row(item.rel, item.path)
    row.update(
        status="failed",
        error=(
            f"{item.path}: its outputs would overwrite those of {first.path} (same folder and name stem "
            f"'{item.rel.stem}'); rename one of the two files"
        ),
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
) -> BatchSummary:
    """Segment every image in ``sources`` into ``output``; write ``results.csv`` and ``summary.json``.

    Usage problems (no images found, a bad model, an unwritable or locked output folder) raise
    :class:`UsageError` before any image is touched. Images that fail are recorded and the batch goes on.
    Events passed to ``on_event`` (from the calling thread): ``waiting`` (for the lock), ``start`` (total,
    provider), ``settings_changed`` (right after ``start``, when the folder holds outputs of another model or
    other options, or of unknown settings: they will all be redone; ``previous`` and ``current`` settings,
    ``previous`` ``None`` when unknown), ``image_start``, ``tiles`` (done, total), ``image_done`` (row),
    ``summary``.
    """
    emit = on_event or (lambda event: None)
    output = Path(output)
    items = discover_inputs(sources, recursive=recursive, output=output)
    if not items:
        raise UsageError(
            f"no images found in {', '.join(map(os.fspath, sources))} (looked for "
            f"{', '.join(sorted(SUPPORTED_EXTENSIONS))}); add --recursive to search sub-folders"
        )
    segmenter, _ = get_segmenter(model_path, options)  # a bad model stops us before any image or output
    prepare_output(output)

    def on_wait() -> None:
        emit({"event": "waiting", "output": str(output)})

    with output_lock(output, wait=wait, on_wait=on_wait):
        remove_stale_temps(output)
        return _run_locked(items, Path(model_path), output, options, segmenter.provider, emit)


def _run_locked(
    items: list[InputItem],
    model_path: Path,
    output: Path,
    options: InferOptions,
    provider: str,
    emit: Callable[[Event], None],
) -> BatchSummary:
    results_path = output / RESULTS_NAME
    # Rows of inputs deleted since the previous run go; those of inputs not given this time stay.
    previous = drop_deleted_inputs(read_results(results_path), {str(item.rel) for item in items})
    model_sha256 = file_sha256(model_path)
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
    start = time.perf_counter()
    last_checkpoint = start
    emit({"event": "start", "total": len(items), "provider": provider, "model": str(model_path), "output": str(output)})
    if stamp.changed and (had_outputs or stamp.previous is not None):
        current = {"model_sha256": model_sha256, "options": options.output_settings()}
        emit({"event": "settings_changed", "output": str(output), "previous": stamp.previous, "current": current})

    def record(index: int, row: Row) -> None:
        nonlocal last_checkpoint
        if row["status"] == "skipped":  # report what the outputs on disk say
            row = merge_rows(previous, [row])[row["path"]]
            if row.get("width") is None:
                row = row_from_outputs(row, output_paths(output, row["path"], options), options.max_pixels)
        rows.append(row)
        setattr(summary, row["status"], getattr(summary, row["status"]) + 1)
        if row["status"] == "ok":
            summary.megapixels += row["width"] * row["height"] / 1e6
        emit({"event": "image_done", "index": index, "done": len(rows), "total": len(items), "row": row})
        if time.perf_counter() - last_checkpoint >= CHECKPOINT_SECONDS:
            with contextlib.suppress(OSError):  # a full disk shows up in the final write, with a message
                write_results(results_path, merge_rows(previous, rows).values())
            last_checkpoint = time.perf_counter()

    try:
        _pipeline(items, model_path, output, options, emit, record, stamp.since_ns)
    except BaseException:
        summary.interrupted = True
        raise
    finally:
        summary.seconds = time.perf_counter() - start
        write_reports(output, merge_rows(previous, rows).values(), summary, options)
    emit({"event": "summary", "summary": summary.to_dict()})
    return summary


def _pipeline(
    items: list[InputItem],
    model_path: Path,
    output: Path,
    options: InferOptions,
    emit: Callable[[Event], None],
    record: Callable[[int, Row], None],
    since_ns: int | None = None,
) -> None:
    """Run :func:`process_image` on ``items`` with :data:`PIPELINE_DEPTH` images in flight; events and rows
    are handed to ``emit``/``record`` on this thread."""
    events: queue.SimpleQueue[Event] = queue.SimpleQueue()
    seen: dict[tuple[str, str], InputItem] = {}
    jobs: deque[tuple[int, InputItem]] = deque()
    for index, item in enumerate(items):
        first = seen.setdefault(output_key(item.rel), item)
        if first is item:
            jobs.append((index, item))
        else:
            record(index, _collision_row(item, first))

    def work(index: int, item: InputItem) -> Row:
        rel = str(item.rel)
        events.put({"event": "image_start", "index": index, "path": rel})

        def on_tile(done: int, total: int) -> None:
            events.put({"event": "tiles", "index": index, "path": rel, "done": done, "total": total})

        return process_image(model_path, item.path, options, output, item.rel, on_tile=on_tile, since_ns=since_ns)

    def drain() -> None:
        while True:
            try:
                emit(events.get_nowait())
            except queue.Empty:
                return

    pending: deque[tuple[int, cf.Future[Row]]] = deque()
    with cf.ThreadPoolExecutor(PIPELINE_DEPTH, thread_name_prefix="skinseg-infer") as pool:
        try:
            while jobs or pending:
                while jobs and len(pending) < PIPELINE_DEPTH:
                    index, item = jobs.popleft()
                    pending.append((index, pool.submit(work, index, item)))
                cf.wait([f for _, f in pending], timeout=0.1, return_when=cf.FIRST_COMPLETED)
                drain()
                for entry in [e for e in pending if e[1].done()]:
                    pending.remove(entry)
                    record(entry[0], entry[1].result())
            drain()
        except BaseException:
            for _, future in pending:
                future.cancel()
            pool.shutdown(wait=True)  # images being written finish (their outputs are complete): record them
            for index, future in pending:
                if future.done() and not future.cancelled() and future.exception() is None:
                    record(index, future.result())
            raise
