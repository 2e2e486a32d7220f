"""Batch segmentation: many image files in, masks, overlays and a report out (the core of `skinseg infer`).

One image's whole job is :func:`process_image`: a function of (model path, image path, options, output folder,
relative path) that reads the image, segments it, writes its outputs and returns its report row. Its only shared
state is a per-process cache of loaded models (:func:`get_segmenter`), so the same call runs unchanged on other
processes or machines (the Dask path, :mod:`skinseg.runtime.cluster`).

:func:`run_batch` finds the inputs, loads the model once (from one read of the file, whose hash it records) and
checks the output folder before touching an image, takes the folder's lock, and runs :func:`process_image` on a
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
Input discovery lives in :mod:`skinseg.runtime.inputs`, output paths and writing in :mod:`skinseg.runtime.outputs`,
and the report files in :mod:`skinseg.runtime.report`. Their public names are re-exported here.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import queue
import shutil
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Any

from skinseg import __version__
from skinseg.runtime.defaults import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_MAX_IN_FLIGHT,
    DEFAULT_MAX_PIXELS,
    DEFAULT_OVERLAY_COLOR,
    DEFAULT_OVERLAY_OPACITY,
    DEFAULT_OVERLAY_SIZE,
    default_memory_limit,
)
from skinseg.runtime.errors import ImageError, ModelError, ParameterError, ResourceError, UsageError, one_line, param
from skinseg.runtime.imageio import decode_image, file_fingerprint, image_size, load_image_file
from skinseg.runtime.inputs import InputItem, Unreadable, discover, discover_inputs, output_key
from skinseg.runtime.outputs import (
    LOCK_NAME,
    OUTPUT_SUFFIXES,
    RESULTS_NAME,
    SETTINGS_NAME,
    SUMMARY_NAME,
    OutputPaths,
    check_inside,
    is_ours,
    output_lock,
    output_paths,
    outputs_up_to_date,
    prepare_output,
    quick_stat,
    remove_stale_temps,
    settings_digest,
    stamp_settings,
    up_to_date,
    write_outputs,
)
from skinseg.runtime.report import (
    CSV_FIELDS,
    BatchSummary,
    Row,
    drop_deleted_inputs,
    merge_rows,
    read_results,
    stats_row,
    versions,
    write_reports,
    write_results,
)

__all__ = [
    "CSV_FIELDS",
    "LOCK_NAME",
    "OUTPUT_SUFFIXES",
    "RESULTS_NAME",
    "SETTINGS_NAME",
    "SUMMARY_NAME",
    "BatchSummary",
    "InferOptions",
    "InputItem",
    "OutputPaths",
    "default_model_path",
    "discover_inputs",
    "estimate_memory",
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
PIPELINE_DEPTH = DEFAULT_MAX_IN_FLIGHT  # kept for callers of the old name
CHECKPOINT_SECONDS = 2.0  # results.csv is rewritten at most this often during a run
WORKER_THREAD_NAME = "skinseg-infer"  # the image workers' thread names start with it
MAX_IN_FLIGHT = 64  # images worked on at once, at most (more only queue for the one model and the cores)
INTERRUPT_GRACE_SECONDS = 8.0  # after an interrupt, images in flight get this long to finish
DISK_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))
FAILED_FINGERPRINT_MAX_BYTES = 512 << 20  # a failed input larger than this is retried rather than hashed each run

Event = dict[str, Any]


# --------------------------------------------------------------------------------------------------- options


@dataclass(frozen=True)
class InferOptions:
    """What `skinseg infer` does to each image. ``None`` means the model's own setting (from its metadata).

    ``overlay_size``: the overlay's long side in px (``None``: the photo's full size); ``memory_limit`` (bytes)
    and ``max_in_flight`` bound the images worked on at once; ``model_sha256`` is set by :func:`run_batch` to the
    model it loaded, so every image of a run, on any machine, is segmented by that model or fails.
    """

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
    overlay_size: int | None = DEFAULT_OVERLAY_SIZE
    retry_failed: bool = False
    memory_limit: int | None = None
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
    overlay_color: tuple[int, int, int] = DEFAULT_OVERLAY_COLOR
    overlay_opacity: float = DEFAULT_OVERLAY_OPACITY
    review_below: float | None = None  # flag masks whose quality estimate is below it; None: the model's threshold
    model_sha256: str | None = None

    def check(self) -> None:
        """UsageError for an option that makes no sense, before any work."""
        from skinseg.runtime.metadata import Scale
        from skinseg.runtime.segmenter import check_options
        from skinseg.runtime.tiling import parse_tile

        check_options(threads=self.threads, overlap=self.overlap, batch_size=self.batch_size, threshold=self.threshold)
        if self.review_below is not None and not 0.0 <= self.review_below <= 1.0:
            raise ParameterError(f"{param('review_below')} must be a Jaccard within [0, 1], got {self.review_below!r}")
        if self.tile is not None:
            parse_tile(self.tile)
        if self.scale is not None:
            try:
                Scale.parse(self.scale)
            except ValueError as e:
                raise ParameterError(f"{param('scale')}: {e}") from None
        if self.max_in_flight < 1:
            raise ParameterError(f"{param('max_in_flight')} must be a positive integer, got {self.max_in_flight!r}")
        if not 0.0 <= self.overlay_opacity <= 1.0:
            raise ParameterError(f"{param('overlay_opacity')} must be within [0, 1], got {self.overlay_opacity!r}")
        if len(self.overlay_color) != 3 or not all(0 <= int(c) <= 255 for c in self.overlay_color):
            raise ParameterError(
                f"{param('overlay_color')} must be three values from 0 to 255, got {self.overlay_color!r}"
            )

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
        """The options that change an image's outputs (recorded in every output and in the settings stamp).

        Not the ones that only change the speed or memory (``device``, ``threads``, ``batch_size``,
        ``memory_limit``, ``max_in_flight``), which images are refused (``max_pixels``), nor ``overwrite`` and
        ``retry_failed``.
        """
        kwargs = self.segmenter_kwargs()
        for key in ("device", "threads", "batch_size", "max_pixels"):
            del kwargs[key]
        kwargs.update(save_prob=self.save_prob, contours=self.contours, overlay_size=self.overlay_size)
        style = (tuple(self.overlay_color), self.overlay_opacity)
        if style != (DEFAULT_OVERLAY_COLOR, DEFAULT_OVERLAY_OPACITY):  # only when set: earlier outputs stay current
            kwargs.update(overlay_color=list(style[0]), overlay_opacity=style[1])
        return kwargs

    def settings(self, model_sha256: str) -> str:
        """The digest every output records: the model and :meth:`output_settings`."""
        return settings_digest(model_sha256, self.output_settings())


def default_model_path() -> Path:
    """The bundled default model; :class:`UsageError` while none is installed."""
    if DEFAULT_MODEL.is_file():
        return DEFAULT_MODEL
    raise UsageError(
        f"{param('model')} is required until a default model is installed (there is none at {DEFAULT_MODEL}); "
        f"pass {param('model', 'path/to/model.onnx')}"
    )


# --------------------------------------------------------------------------------------------------- models

_SEGMENTERS: dict[tuple[Any, ...], tuple[Any, threading.Lock]] = {}
_SEGMENTERS_LOCK = threading.Lock()
_MAX_SEGMENTERS = 4


def get_segmenter(
    model_path: str | os.PathLike[str], options: InferOptions, *, budget: int | None = None
) -> tuple[Any, threading.Lock]:
    """A cached :class:`~skinseg.runtime.segmenter.Segmenter` for this model and options, and its inference lock.

    The model file is read once (its bytes make the session, and their SHA-256 is the segmenter's
    ``model_sha256``), so replacing the file while a run uses it changes nothing. The cache is per process, keyed by
    the model's real path, ``options.model_sha256`` (the model a run pinned) and
    :meth:`InferOptions.segmenter_kwargs`; without a pinned hash, a file replaced since is read again. A file
    that no longer has the pinned hash raises :class:`ModelError`. Hold the lock while running the model: one
    inference at a time keeps onnxruntime's threads from competing for the cores.

    ``budget`` (bytes): the model's working memory (:func:`model_memory`, the segmenter's ``working_memory``) must
    fit in it, or :class:`UsageError` says so before the segmenter's first full-size tile is run.
    """
    from skinseg.runtime.segmenter import OnnxBackend, Segmenter

    path = Path(model_path).resolve()
    kwargs = options.segmenter_kwargs()
    identity: Any = options.model_sha256
    if identity is None:
        try:
            st = path.stat()
            identity = (st.st_size, st.st_mtime_ns)
        except OSError:
            identity = None  # the backend reports the missing file
    key = (str(path), identity, tuple(sorted(kwargs.items())))
    with _SEGMENTERS_LOCK:
        if key not in _SEGMENTERS:
            data = _read_model(path)
            sha = hashlib.sha256(data).hexdigest() if data is not None else None
            if options.model_sha256 is not None and sha != options.model_sha256:
                raise ModelError(
                    f"{model_path}: the model file changed since this run started (sha256 {str(sha)[:12]}, the run "
                    f"uses {options.model_sha256[:12]}); run again to use the new model"
                )
            backend = OnnxBackend(path, device=kwargs["device"], threads=kwargs["threads"], data=data)
            need = None
            if budget is not None:  # before Segmenter runs its first tile: that alone may not fit
                need = model_memory(backend, options)
                _check_model_memory(model_path, backend, options, need, budget)
            segmenter = Segmenter(backend, **kwargs)
            segmenter.model_sha256 = sha
            segmenter.working_memory = need
            while len(_SEGMENTERS) >= _MAX_SEGMENTERS:
                _SEGMENTERS.pop(next(iter(_SEGMENTERS)))
            _SEGMENTERS[key] = (segmenter, threading.Lock())
        found = _SEGMENTERS[key]
    if budget is not None:
        segmenter = found[0]
        if getattr(segmenter, "working_memory", None) is None:
            segmenter.working_memory = model_memory(segmenter.backend, options)
        _check_model_memory(model_path, segmenter.backend, options, segmenter.working_memory, budget)
    return found


MEASURE_TILE = 256  # px: the tile the model's working memory per pixel is measured on


def _heap_in_use() -> int:
    """Bytes this process has allocated (glibc's ``mallinfo2``: exact, unlike the resident size, which freed memory
    kept for reuse hides); the resident size where that is not available."""
    global _MALLINFO2
    if _MALLINFO2 is None:
        _MALLINFO2 = False
        with contextlib.suppress(OSError, AttributeError):
            import ctypes

            class _Info(ctypes.Structure):
                _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                                                                  "usmblks", "fsmblks", "uordblks", "fordblks",
                                                                  "keepcost")]  # fmt: skip

            function = ctypes.CDLL("libc.so.6").mallinfo2
            function.restype = _Info
            _MALLINFO2 = function
    if _MALLINFO2:
        info = _MALLINFO2()
        return int(info.uordblks + info.hblkhd)  # in use from the heap, and in blocks of their own (mmap)
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


_MALLINFO2: Any = None


def _tile_of(backend: Any, options: InferOptions) -> tuple[int, int] | None:
    from skinseg.runtime.tiling import parse_tile

    if options.tile is not None:
        return parse_tile(options.tile)
    if backend.metadata is not None:
        return tuple(backend.metadata.tile_size)  # type: ignore[return-value]
    return None


def _batch_of(backend: Any, options: InferOptions) -> int:
    """Tiles one model call takes: the batch size, four times over with test-time flips."""
    from skinseg.runtime.defaults import DEFAULT_TTA

    tta = options.tta
    if tta is None:
        recommended = backend.metadata.tta if backend.metadata is not None else None
        tta = DEFAULT_TTA if recommended is None else recommended
    return (backend.fixed_batch or options.batch_size) * (4 if tta else 1)


def model_memory(backend: Any, options: InferOptions) -> int:
    """Bytes the model needs to segment one batch of tiles with ``options`` (one inference runs at a time).

    The network's working memory per input pixel is measured: the memory this process allocates over one run of a
    blank :data:`MEASURE_TILE` tile (the model's own when its input size is fixed) on a new session, counted twice
    (onnxruntime's arena grows by doubling: the bundled model takes 495 bytes a pixel measured so, and peaked at
    16.3 GB, 970 bytes a pixel, on 4096 px tiles). To it come the batch's input and output (16 bytes a pixel);
    multiplied by the tile's pixels and the tiles a call takes (the batch size, 4× with ``--tta``).
    """
    tile = _tile_of(backend, options)
    if tile is None:
        return 0  # no tile, no segmenter: Segmenter says why
    fixed_h, fixed_w = backend.fixed_tile
    size = (fixed_h or MEASURE_TILE, fixed_w or MEASURE_TILE)
    runs = backend.fixed_batch or 1
    try:
        import numpy as np

        blank = np.zeros((runs, *size, 3), np.float32)
        before = _heap_in_use()
        backend.predict(blank)  # a new session's arena grows to what the run needs, and keeps it
        per_pixel = max(0, _heap_in_use() - before) / (runs * size[0] * size[1])
    except Exception:  # noqa: BLE001  the model cannot take this size: the segmenter's own probe says why
        per_pixel = 0.0
    return int(tile[0] * tile[1] * _batch_of(backend, options) * (2 * per_pixel + 16))


def _check_model_memory(
    model_path: str | os.PathLike[str], backend: Any, options: InferOptions, need: int, budget: int
) -> None:
    """UsageError, in one line, when the model's working memory ``need`` does not fit in ``budget``."""
    if need <= budget:
        return
    tile = _tile_of(backend, options) or (0, 0)
    size = f"{tile[0]}×{tile[1]}"
    what = param("tile", options.tile) if options.tile is not None else f"{model_path}: its tile size {size} (metadata)"
    batch = _batch_of(backend, options)
    calls = f" in batches of {batch}" if batch > 1 else ""
    fixes = f"a smaller {param('tile')}" if backend.fixed_tile == (None, None) else "another model"
    if batch > 1:
        fixes += f" or {param('batch_size')}"
    limit = (
        param("memory_limit", _size(budget))
        if options.memory_limit is not None
        else f"the memory limit ({_size(budget)}, {param('memory_limit', 'auto')})"
    )
    raise UsageError(
        f"{what}: segmenting {size} tiles{calls} needs about {_size(need)} of working memory, more than {limit}; "
        f"use {fixes}, or raise {param('memory_limit')}"
    )


def _size(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def _read_model(path: Path) -> bytes | None:
    """The model file's bytes (one read: what is hashed is what is loaded), or None to let the backend say why."""
    try:
        if not path.is_file():
            return None
        return path.read_bytes()
    except OSError:
        return None


# --------------------------------------------------------------------------------------------------- one image


def _empty_row(rel: PurePosixPath | str, image_path: str | os.PathLike[str]) -> Row:
    row: Row = dict.fromkeys(CSV_FIELDS)
    # The input as an absolute path: a later run started in another folder (cron runs from $HOME) still finds it.
    row.update(path=str(rel), input=os.path.abspath(image_path), status="", error="")
    return row


def estimate_memory(width: int, height: int, options: InferOptions, work: tuple[int, int] | None = None) -> int:
    """Bytes one image of ``width × height`` needs while it is worked on (an upper estimate for admission).

    Full size: the probability map and the mask (1 byte a pixel each), the hole-filling frame (1) and the PNG
    encoder's copy (1); the decode kept for the overlay (3 bytes a pixel at up to 1/2 of each side of a large
    photo, all of a small one) and the overlay itself; at the working size ``work`` (the size the model sees, e.g.
    the full size with ``--scale native``): the resized image and its colour-corrected copy (3 + 3), the blending
    sums (4 + 4) and the probabilities (1); 64 MB of slack. The model's own working memory is counted once per run,
    not per image (:func:`model_memory`).
    """
    pixels = width * height
    decoded = pixels if max(width, height) <= 2 * DEFAULT_OVERLAY_SIZE else pixels // 4
    if options.overlay_size is None:
        decoded = pixels
    overlay = min(pixels, (options.overlay_size or max(width, height)) ** 2)
    working = 15 * work[0] * work[1] if work is not None else 0
    return 4 * pixels + 3 * decoded + 6 * overlay + (pixels if options.save_prob else 0) + working + (64 << 20)


def image_cost(segmenter: Any, image_path: str | os.PathLike[str], options: InferOptions) -> int:
    """:func:`estimate_memory` of an image file, from its header and the size ``segmenter`` works at."""
    try:
        width, height = image_size(image_path)
        work = segmenter.work_size(width, height)
    except (ImageError, OSError, ValueError, ArithmeticError):
        return 64 << 20  # it will fail fast
    return estimate_memory(width, height, options, work)


def _overlay_size(width: int, height: int, options: InferOptions) -> tuple[int, int]:
    long_side = max(width, height)
    limit = options.overlay_size or long_side
    from skinseg.runtime.imageio import JPEG_MAX_SIDE

    limit = min(limit, JPEG_MAX_SIDE)  # a JPEG cannot be wider: a 70,000 px photo still gets an overlay
    if long_side <= limit:
        return width, height
    f = limit / long_side
    return max(1, round(width * f)), max(1, round(height * f))


def _decoder_versions() -> dict[str, str]:
    """The versions of the code that judged an input (a failure under another skinseg or OpenCV is retried)."""
    global _DECODERS
    if _DECODERS is None:
        found = versions()
        _DECODERS = {"skinseg": found["skinseg"], "opencv": found["opencv"]}
    return _DECODERS


_DECODERS: dict[str, str] | None = None


def _foreign_outputs(paths: OutputPaths | None) -> list[str]:
    """The names of the image's output files present in the output folder that skinseg did not write."""
    if paths is None:
        return []
    return sorted(p.name for p in paths.all() if os.path.lexists(p) and not is_ours(p))


def failure_key(options: InferOptions, model_sha256: str, paths: OutputPaths | None) -> str:
    """What an image's failure depended on besides the input's content: the model, the output options,
    ``max_pixels``, the versions of skinseg and OpenCV, and the foreign files in the way of its outputs. A failed
    row records it (its ``settings``); a rerun retries the image when it differs (another ``--max-pixels``, the
    foreign file moved away, a fixed decoder), and otherwise not: it would fail the same way again."""
    facts = {
        **options.output_settings(),
        "max_pixels": options.max_pixels,
        "decoders": _decoder_versions(),
        "foreign": _foreign_outputs(paths),
    }
    return settings_digest(model_sha256, facts)


def _failed_before(
    previous: Row | None,
    options: InferOptions,
    model_sha256: str,
    paths: OutputPaths,
    image_path: str | os.PathLike[str],
) -> bool:
    """Whether ``previous`` is a failure of this very input in the same circumstances (then it is not retried)."""
    if not previous or previous.get("status") != "failed" or not previous.get("fingerprint"):
        return False
    if previous.get("settings") != failure_key(options, model_sha256, paths):
        return False
    try:
        return file_fingerprint(image_path) == previous["fingerprint"]
    except (ImageError, OSError):
        return False


def _stat(path: str | os.PathLike[str]) -> list[int] | None:
    try:
        return quick_stat(os.stat(path))
    except OSError:
        return None


def _failed_fingerprint(image_path: str | os.PathLike[str], before: list[int] | None) -> str | None:
    """The content fingerprint of an input refused before it was read whole, if it is a regular file of a size
    worth hashing again on each run (a multi-gigabyte file that lies about its content is simply retried) and it
    has not changed since the attempt began (``before``, its :func:`quick_stat`): a copy that completed meanwhile
    is not what failed, and must be retried."""
    try:
        if before is None or before[0] > FAILED_FINGERPRINT_MAX_BYTES:
            return None
        fingerprint = file_fingerprint(image_path)
    except (ImageError, OSError):
        return None
    return fingerprint if _stat(image_path) == before else None


def _check_not_foreign(paths: OutputPaths, previous: Row | None) -> None:
    """ImageError if an output would replace a file skinseg did not write."""
    ours_before = previous is not None and previous.get("status") in ("ok", "skipped")
    for path in paths.all():
        if os.path.lexists(path) and not ours_before and not is_ours(path):
            raise ImageError(
                f"{path} exists and was not written by skinseg; refusing to overwrite it (move it away, or choose "
                f"another {param('output')} than the input folder)"
            )


def _check_space(output_root: str | os.PathLike[str], width: int, height: int) -> None:
    """OSError(ENOSPC) before any work when the output disk cannot take this image's outputs."""
    need = width * height // 8 + (8 << 20)  # a 1-bit mask without compression, an overlay, a margin
    try:
        free = shutil.disk_usage(output_root).free
    except OSError:
        return
    if free < need:
        raise OSError(errno.ENOSPC, f"no space left on the output disk ({free / 1e6:.0f} MB free)")


def _no_work_row(
    row: Row, paths: OutputPaths, image_path: str | os.PathLike[str], options: InferOptions, settings: str,
    previous: Row | None,
) -> Row | None:  # fmt: skip
    """The row of an image that needs no work (its outputs are up to date; or it failed before and has not changed
    since), or None."""
    if options.overwrite:
        return None
    record = up_to_date(paths, image_path, settings)
    if record is not None:
        return {**row, **(record.get("row") or {}), "status": "skipped", "fingerprint": record.get("input")}
    sha = options.model_sha256 or ""
    if previous is not None and not options.retry_failed and _failed_before(previous, options, sha, paths, image_path):
        return {**previous, "input": row["input"], "retried": False}
    return None


def no_work_row(
    model_path: str | os.PathLike[str],
    image_path: str | os.PathLike[str],
    options: InferOptions,
    output_root: str | os.PathLike[str],
    rel_path: str | PurePosixPath,
    *,
    previous: Row | None = None,
) -> Row | None:
    """What :func:`process_image` would return without segmenting (``skipped``, or ``failed`` before and
    unchanged), or None when the image needs work: the check a cluster's client makes before submitting a task."""
    rel = PurePosixPath(rel_path)
    segmenter, _ = get_segmenter(model_path, options)
    settings = options.settings(segmenter.model_sha256 or "")
    row = {**_empty_row(rel, image_path), "settings": settings, "model_sha256": segmenter.model_sha256}
    try:
        done = _no_work_row(row, output_paths(output_root, rel, options), image_path, options, settings, previous)
        return None if done is None else _with_review(done, segmenter, options)
    except (ImageError, OSError):
        return None  # the task says why


def process_image(
    model_path: str | os.PathLike[str],
    image_path: str | os.PathLike[str],
    options: InferOptions,
    output_root: str | os.PathLike[str],
    rel_path: str | PurePosixPath,
    *,
    on_tile: Callable[[int, int], None] | None = None,
    previous: Row | None = None,
) -> Row:
    """Segment one image file and write its outputs under ``output_root``; return its report row.

    The row has the keys :data:`CSV_FIELDS`; ``status`` is ``ok``, ``skipped`` (outputs up to date and not
    ``options.overwrite``) or ``failed`` with a one-line ``error``. ``previous`` is the image's row of an earlier
    run (from ``results.csv``): an unchanged input that failed then fails again without being retried (the row
    has ``retried`` False). Never raises for a bad image or a failed write (a full disk marks the row
    ``stop``); a model that cannot be loaded, or that changed since ``options.model_sha256``, raises
    :class:`ModelError` (nothing can succeed then).
    """
    start = time.perf_counter()
    rel = PurePosixPath(rel_path)
    row = _empty_row(rel, image_path)
    segmenter, lock = get_segmenter(model_path, options)  # no model, no batch: this one raises
    settings = options.settings(segmenter.model_sha256 or "")
    row["settings"] = settings
    row["model_sha256"] = segmenter.model_sha256  # the settings say it too: a skipped mask was made by this model
    before = _stat(image_path)
    paths: OutputPaths | None = None
    try:
        paths = output_paths(output_root, rel, options)
        done = _no_work_row(row, paths, image_path, options, settings, previous)
        if done is not None:
            return _with_review(done, segmenter, options)
        row["skinseg_version"] = __version__  # this run works on it (a skipped row has its mask's record's)
        _check_not_foreign(paths, previous)
        file = load_image_file(image_path, max_pixels=options.max_pixels)
        row["fingerprint"] = file.fingerprint
        width, height = file.info.width, file.info.height
        _check_space(output_root, width, height)
        overlay_wh = _overlay_size(width, height, options)
        factor = segmenter.decode_factor(width, height)
        image = decode_image(file, reduce=factor)
        picture = image if (image.shape[1], image.shape[0]) == overlay_wh else None
        if picture is None and overlay_wh[0] > image.shape[1]:  # a larger overlay than the decode: decode again
            picture = decode_image(file, reduce=max(f for f in (1, 2, 4, 8) if width / f >= overlay_wh[0]))
        stat_now = quick_stat(file.stat)
        del file
        before = time.perf_counter()
        with lock:
            waited = time.perf_counter() - before
            result = segmenter.segment(image, on_tile=on_tile, full_size=(width, height), keep_prob=options.save_prob)
        if picture is None:
            picture = image
        if (picture.shape[1], picture.shape[0]) != overlay_wh:
            import cv2

            picture = cv2.resize(picture, overlay_wh, interpolation=cv2.INTER_AREA)
        del image
        paths.mask.parent.mkdir(parents=True, exist_ok=True)
        check_inside(Path(output_root).resolve(), paths.mask.parent, rel)  # in case a link appeared meanwhile
        stats = {**stats_row(result.stats), "model_sha256": segmenter.model_sha256, "skinseg_version": __version__}
        record = {"input": row["fingerprint"], "stat": stat_now, "settings": settings, "row": stats}
        write_outputs(
            paths, picture, result, record=record, color=options.overlay_color, opacity=options.overlay_opacity
        )
        row.update(stats, status="ok")
        row["seconds"] = round(time.perf_counter() - start - waited, 4)
    except OSError as e:  # the output side: a full disk stops the batch, other write errors fail this image
        row.update(status="failed", error=one_line(e), fingerprint=None)
        if e.errno in DISK_FULL:
            row.update(error=f"the output disk is full ({e.strerror or e}); free space and run again", stop="disk full")
    except Exception as e:  # one bad file must never stop the batch: record the reason and go on
        row.update(status="failed", error=one_line(e))
        if not isinstance(e, ImageError) or isinstance(e, ResourceError):
            row["fingerprint"] = None  # not the input's fault: retried next time
        else:  # the input's: not retried until it, or what the failure depended on, changes
            if row.get("fingerprint") is None:  # refused before it was read whole
                row["fingerprint"] = _failed_fingerprint(image_path, before)
            with contextlib.suppress(OSError):
                row["settings"] = failure_key(options, segmenter.model_sha256 or "", paths)
    if row.get("seconds") is None:
        row["seconds"] = round(time.perf_counter() - start, 4)
    return _with_review(row, segmenter, options)


def _with_review(row: Row, segmenter: Any, options: InferOptions) -> Row:
    """``row`` with its ``review`` flag at this run's threshold (``options.review_below``, else the model's): a
    skipped image's estimate, recorded when it was segmented, is judged again by the threshold of today."""
    from skinseg.runtime.quality import needs_review

    quality = segmenter.quality
    if row.get("status") in ("ok", "skipped") and row.get("quality") is not None and quality is not None:
        below = options.review_below if options.review_below is not None else quality.review_below
        row["review"] = needs_review(row["quality"], below)
    return row


# --------------------------------------------------------------------------------------------------- the batch


def _collision_row(item: InputItem, first: InputItem, n: int) -> Row:
    """The failed row of an input whose outputs would be ``first``'s; keyed apart when the two share a path."""
    row = _empty_row(item.rel if item.rel != first.rel else f"{item.rel} [{n}]", item.path)
    row.update(
        status="failed",
        error=(
            f"{item.path}: its outputs would overwrite those of {first.path} (same folder and name stem "
            f"'{item.rel.stem}'); rename one of the two files"
        ),
    )
    return row


def _unreadable_row(folder: Unreadable) -> Row:
    row = _empty_row(f"{folder.rel}/" if folder.rel.parts else "./", folder.path)
    row.update(
        status="failed", error=f"{folder.path}: the folder cannot be read ({folder.reason}); its images were not found"
    )
    return row


def pin_model(model_path: str | os.PathLike[str], options: InferOptions) -> tuple[Any, InferOptions]:
    """Load the model for a run and pin it: the segmenter, and ``options`` carrying its SHA-256. UsageError when the
    model's working memory alone exceeds ``options.memory_limit`` (or the default), before it runs a full tile."""
    budget = options.memory_limit or default_memory_limit()
    segmenter, _ = get_segmenter(model_path, replace(options, model_sha256=None), budget=budget)
    pinned = replace(options, model_sha256=segmenter.model_sha256)
    with _SEGMENTERS_LOCK:  # the same segmenter under the pinned key: process_image finds it, never re-reads
        key = (str(Path(model_path).resolve()), pinned.model_sha256, tuple(sorted(pinned.segmenter_kwargs().items())))
        _SEGMENTERS[key] = (segmenter, _lock_of(segmenter))
    return segmenter, pinned


def _lock_of(segmenter: Any) -> threading.Lock:
    for seg, lock in _SEGMENTERS.values():
        if seg is segmenter:
            return lock
    return threading.Lock()


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
    """Segment every image in ``sources`` into ``output``; write ``results.csv`` and ``summary.json``.

    ``scheduler``: run the images as tasks on a Dask cluster instead of this process's threads (``local:N``, a
    scheduler file or address; :mod:`skinseg.runtime.cluster`), with the same outputs, reports and lock.

    Usage problems (a source that does not exist, a bad model, an unwritable or locked output folder) raise
    :class:`UsageError` before any image is touched; sources that hold no image give an empty summary (``total``
    0) and write nothing. Images that fail are recorded and the batch goes on. Events passed to ``on_event``
    (from the calling thread): ``waiting`` (for the lock), ``start`` (total, provider), ``settings_changed``
    (right after ``start``, when the folder holds outputs of another model or other options: they will be
    redone), ``hidden`` (before ``start``: image files skipped for their hidden names, ``count`` and a few
    ``examples``), ``image_start``, ``tiles`` (done, total), ``image_done`` (row), ``stopping`` (an interrupt or a
    full disk: images in flight are finishing), ``summary``.
    """
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
        emit({"event": "hidden", "count": len(found.hidden), "examples": [str(p) for p in found.hidden[:3]]})
    if not found.items and not found.unreadable:
        return BatchSummary(0, 0, 0, 0.0, 0.0, "", str(model_path), "", str(output))
    segmenter, options = pin_model(model_path, options)  # a bad model stops us before any image or output
    if found.items:  # once per run: a --scale far from the model's, judged on the first photo's size
        with contextlib.suppress(ImageError, OSError, ValueError):
            if note := segmenter.scale_warning(*image_size(found.items[0].path)):
                emit({"event": "warning", "kind": "scale", "message": note})
    cluster, completed = None, []  # completed: the summary, once the batch ended and its reports are written
    if scheduler is not None and not local_cluster:  # an unreachable scheduler stops us before any output
        from skinseg.runtime.cluster import connect

        cluster = connect(scheduler, security=security)
    try:
        prepare_output(output)

        def on_wait() -> None:
            emit({"event": "waiting", "output": str(output)})

        with output_lock(output, wait=wait, on_wait=on_wait):
            provider, make_runner = segmenter.provider, None
            remove_stale_temps(output)  # a killed run's temporary files and local cluster's scratch space
            if scheduler is not None and local_cluster:  # started once the lock is ours, its scratch inside
                from skinseg.runtime.cluster import SCRATCH_NAME, connect

                cluster = connect(scheduler, scratch=output / SCRATCH_NAME)
            if cluster is not None:
                cluster.check_workers(model_path, output)
                provider, make_runner = f"{segmenter.provider} on {cluster.describe()}", cluster.runner
            _run_locked(
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
    make_runner: Callable[..., Any] | None = None,
    *,
    completed: list[BatchSummary] | None = None,
) -> BatchSummary:
    """The batch, the output folder's lock held; ``completed`` gets the summary as soon as a batch that was not
    interrupted has its reports written."""
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
    start = time.perf_counter()
    last_checkpoint = start
    total = len(items) + len(unreadable)
    emit({"event": "start", "total": total, "provider": provider, "model": str(model_path), "output": str(output)})
    if stamp.changed and (had_outputs or stamp.previous is not None):
        current = {"model_sha256": model_sha256, "options": options.output_settings()}
        emit({"event": "settings_changed", "output": str(output), "previous": stamp.previous, "current": current})

    def record(index: int, row: Row) -> None:
        nonlocal last_checkpoint
        if row["status"] == "skipped":  # report what the outputs on disk say
            row = merge_rows(previous, [row])[row["path"]]
        rows.append(row)
        if row["status"] == "failed" and row.get("retried") is False:
            summary.failed_before += 1
        else:
            setattr(summary, row["status"], getattr(summary, row["status"]) + 1)
        if row["status"] == "ok":
            summary.megapixels += row["width"] * row["height"] / 1e6
        if row["status"] in ("ok", "skipped") and row.get("review") == 1:
            summary.review += 1
        emit({"event": "image_done", "index": index, "done": len(rows), "total": total, "row": row})
        if time.perf_counter() - last_checkpoint >= CHECKPOINT_SECONDS:
            with contextlib.suppress(OSError):  # a full disk shows up in the final write, with a message
                write_results(results_path, merge_rows(previous, rows).values())
            last_checkpoint = time.perf_counter()

    for k, folder in enumerate(unreadable):
        record(len(items) + k, _unreadable_row(folder))

    def finish() -> None:
        summary.seconds = time.perf_counter() - start
        summary.not_done = total - len(rows)
        write_reports(output, merge_rows(previous, rows).values(), summary, options, fresh=rows)
        if completed is not None and not summary.interrupted:
            completed.append(summary)
        emit({"event": "summary", "summary": summary.to_dict()})

    try:
        summary.stopped = _pipeline(items, model_path, output, options, emit, record, previous, make_runner)
    except BaseException:
        summary.interrupted = True
        summary.stopped = "interrupted"
        finish()
        raise
    finish()
    return summary


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


def _pipeline(
    items: list[InputItem],
    model_path: Path,
    output: Path,
    options: InferOptions,
    emit: Callable[[Event], None],
    record: Callable[[int, Row], None],
    previous: dict[str, Row],
    make_runner: Callable[..., Any] | None = None,
) -> str:
    """Run :func:`process_image` on ``items``, admitting images by estimated memory (``options.memory_limit``) and
    count (``options.max_in_flight``); events and rows are handed to ``emit``/``record`` on this thread.

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
            record(index, _collision_row(item, first, clashes[key]))
    runner = (make_runner or _LocalRunner)(model_path, output, options, previous, events)

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
                try:
                    row = entry[1].result()
                except StopBatch as e:  # the image was not done, and none after it can be: stop, no row
                    row = {"stop": e.reason}
                if row.get("stop") and not stopped:
                    stopped = row["stop"]
                    emit({"event": "stopping", "reason": stopped, "in_flight": len(pending)})
                if "status" in row:
                    record(entry[0], row)
        drain()
    except BaseException:
        emit({"event": "stopping", "reason": "interrupted", "in_flight": len(pending)})
        _finish_in_flight(pending, record, drain)
        raise
    finally:
        runner.close()
    return stopped


class _LocalRunner:
    """Images worked on by a few daemon threads of this process, admitted by their estimated memory."""

    def __init__(
        self, model_path: Path, output: Path, options: InferOptions, previous: dict[str, Row], events: queue.SimpleQueue
    ) -> None:
        self.model_path, self.output, self.options, self.previous, self.events = (
            model_path, output, options, previous, events,
        )  # fmt: skip
        self.segmenter, _ = get_segmenter(model_path, options)
        model = getattr(self.segmenter, "working_memory", None) or 0  # one inference at a time: counted once
        self.budget = max(0, (options.memory_limit or default_memory_limit()) - model)
        self.slots = max(1, min(int(options.max_in_flight), MAX_IN_FLIGHT))
        self._pool = _DaemonPool(self.slots, WORKER_THREAD_NAME)

    def cost(self, item: InputItem) -> int:
        return image_cost(self.segmenter, item.path, self.options)

    def start(self, index: int, item: InputItem) -> Future:
        return self._pool.submit(lambda: self._work(index, item))

    def _work(self, index: int, item: InputItem) -> Row:
        rel = str(item.rel)
        self.events.put({"event": "image_start", "index": index, "path": rel})

        def on_tile(done: int, total: int) -> None:
            self.events.put({"event": "tiles", "index": index, "path": rel, "done": done, "total": total})

        return process_image(
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


def _wait_any(futures: list[Future], timeout: float) -> None:
    import concurrent.futures as cf

    if futures:
        cf.wait(futures, timeout=timeout, return_when=cf.FIRST_COMPLETED)
    else:
        time.sleep(timeout)


def _finish_in_flight(
    pending: deque[tuple[int, Future, int]], record: Callable[[int, Row], None], drain: Callable[[], None]
) -> None:
    """After an interrupt: let images in flight finish (their outputs are whole either way) for a few seconds, and
    record those that did; a second interrupt, or a worker stuck past the grace, ends the wait."""
    deadline = time.monotonic() + INTERRUPT_GRACE_SECONDS
    with contextlib.suppress(KeyboardInterrupt):
        while pending and time.monotonic() < deadline:
            _wait_any([f for _, f, _ in pending], timeout=0.1)
            for entry in [e for e in pending if e[1].done()]:
                pending.remove(entry)
                if not entry[1].cancelled() and entry[1].exception() is None and "status" in entry[1].result():
                    record(entry[0], entry[1].result())
    with contextlib.suppress(Exception):
        drain()
