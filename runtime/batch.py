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
- Every output stays inside the output folder: a relative path with ``..``, an absolute one, or a symlinked
  folder that leads out is refused for that image.
- ``results.csv`` (one row per image) and ``summary.json`` are written atomically; a rerun merges its rows into
  the previous ones. ``results.csv`` is also checkpointed during the run.
- Two inputs whose outputs would have the same name (``a.jpg`` and ``a.png`` in one folder; names compared
  case-insensitively, for case-insensitive file systems) are not overwritten: the second one fails with a reason.

Progress is reported through ``on_event(dict)`` callbacks, always from the calling thread; nothing here prints.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import csv
import io
import itertools
import json
import os
import queue
import re
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import cv2
import numpy as np

from runtime import postprocess as pp
from runtime.errors import ImageError, SkinsegError, UsageError
from runtime.gallery import write_gallery
from runtime.imageio import (
    DEFAULT_MAX_PIXELS,
    SUPPORTED_EXTENSIONS,
    file_sha256,
    is_supported,
    read_image,
    read_mask,
    write_bytes_atomic,
    write_jpeg_atomic,
    write_png_atomic,
)

__all__ = [
    "CSV_FIELDS",
    "LOCK_NAME",
    "PIPELINE_DEPTH",
    "RESULTS_NAME",
    "SUMMARY_NAME",
    "BatchSummary",
    "InferOptions",
    "InputItem",
    "OutputPaths",
    "default_model_path",
    "discover_inputs",
    "get_segmenter",
    "output_lock",
    "output_paths",
    "process_image",
    "run_batch",
]

DEFAULT_MODEL = Path(__file__).resolve().parent / "models" / "skinseg_default.onnx"
LOCK_NAME = ".skinseg.lock"
RESULTS_NAME = "results.csv"
SUMMARY_NAME = "summary.json"
PIPELINE_DEPTH = 3  # images in flight: one in the model, up to two being decoded or written
CHECKPOINT_SECONDS = 2.0  # results.csv is rewritten at most this often during a run
OUTPUT_SUFFIXES = ("_mask.png", "_overlay.jpg", "_prob.png", "_contours.json")
CSV_FIELDS = (
    "path",
    "input",
    "width",
    "height",
    "area_px",
    "area_fraction",
    "bbox_x",
    "bbox_y",
    "bbox_w",
    "bbox_h",
    "n_components",
    "mean_prob",
    "seconds",
    "status",
    "error",
)
_TEMP_FILE = re.compile(r"^\.(?P<name>.+)\.[0-9a-f]{8}\.tmp$")  # what runtime.imageio's atomic writers leave
_GLOB_CHARS = frozenset("*?[")

Event = dict[str, Any]
Row = dict[str, Any]


# --------------------------------------------------------------------------------------------------- options


@dataclass(frozen=True)
class InferOptions:
    """What `skinseg infer` does to each image. ``None`` means the model's own setting (from its metadata)."""

    device: str = "auto"
    threads: int | None = None
    tile: int | None = None
    scale: str | None = None
    overlap: float = 0.25
    batch_size: int = 4
    threshold: float | None = None
    keep_largest: bool = True
    fill_holes: bool = True
    max_pixels: int = DEFAULT_MAX_PIXELS
    save_prob: bool = False
    contours: bool = False
    overwrite: bool = False

    def segmenter_kwargs(self) -> dict[str, Any]:
        """The options that shape the :class:`~runtime.segmenter.Segmenter` (and so its cache key)."""
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
            "max_pixels": self.max_pixels,
        }


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
    """A cached :class:`~runtime.segmenter.Segmenter` for this model file and options, and its inference lock.

    The cache is per process and keyed by the model's real path, size and modification time and
    :meth:`InferOptions.segmenter_kwargs`, so a replaced model file is reloaded. Hold the lock while running
    the model: one inference at a time keeps onnxruntime's threads from competing for the cores.
    """
    from runtime.segmenter import Segmenter

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


# --------------------------------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class InputItem:
    """An input image and where its outputs go, relative to the output folder (POSIX form)."""

    path: Path
    rel: PurePosixPath


def _has_glob(text: str) -> bool:
    return any(c in _GLOB_CHARS for c in text)


def _glob_base(pattern: str) -> Path:
    """The folder a glob pattern starts from: its leading components without wildcards."""
    base = list(itertools.takewhile(lambda part: not _has_glob(part), Path(pattern).parts))
    return Path(*base) if base else Path(".")


def _inside(real: str, root_real: str) -> bool:
    return real == root_real or real.startswith(root_real.rstrip(os.sep) + os.sep)


def _is_our_output(name: str) -> bool:
    return name.lower().endswith(OUTPUT_SUFFIXES)


def _walk(root: Path, rel: PurePosixPath, *, recursive: bool, output_real: str | None) -> Iterator[InputItem]:
    """Supported images under ``root``; symlinked folders are followed once (loops end), hidden names skipped,
    and files that look like our own outputs inside the output folder are ignored."""
    visited: set[str] = set()
    stack = [(root, rel)]
    while stack:
        folder, folder_rel = stack.pop()
        real = os.path.realpath(folder)
        if real in visited:
            continue
        visited.add(real)
        in_output = output_real is not None and _inside(real, output_real)
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:
            continue  # an unreadable sub-folder is not an input
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                is_dir = entry.is_dir()
                is_file = not is_dir and entry.is_file()
            except OSError:
                continue
            if is_dir and recursive:
                stack.append((Path(entry.path), folder_rel / entry.name))
            elif is_file and is_supported(entry.name) and not (in_output and _is_our_output(entry.name)):
                yield InputItem(Path(entry.path), folder_rel / entry.name)


def discover_inputs(
    sources: Iterable[str | os.PathLike[str]], *, recursive: bool = False, output: str | os.PathLike[str] | None = None
) -> list[InputItem]:
    """The images named by ``sources`` (files, folders or glob patterns), each once, sorted by output path.

    A folder's images map to their path below that folder (sub-folders only with ``recursive``); a single file
    maps to its name; a glob match maps to its path below the pattern's fixed leading folders. Supported
    extensions (any case): ``SUPPORTED_EXTENSIONS``. Raises :class:`UsageError` for a source that does not
    exist or a named file that is not a supported image.
    """
    output_real = os.path.realpath(output) if output is not None else None
    found: list[InputItem] = []
    for source in sources:
        text = os.fspath(source)
        path = Path(text)
        if path.is_dir():
            found.extend(_walk(path, PurePosixPath(), recursive=recursive, output_real=output_real))
        elif path.is_file():
            if not is_supported(path):
                raise UsageError(
                    f"{text}: not a supported image extension (supported: {', '.join(sorted(SUPPORTED_EXTENSIONS))})"
                )
            found.append(InputItem(path, PurePosixPath(path.name)))
        elif _has_glob(text):
            found.extend(_glob(text, recursive=recursive, output_real=output_real))
        else:
            raise UsageError(f"{text}: no such file or folder; check the SOURCE path")
    unique: dict[str, InputItem] = {}
    for item in found:
        unique.setdefault(os.path.realpath(item.path), item)
    return sorted(unique.values(), key=lambda i: str(i.rel))


def _glob(pattern: str, *, recursive: bool, output_real: str | None) -> Iterator[InputItem]:
    import glob

    base = _glob_base(pattern)
    for match in sorted(glob.glob(pattern, recursive=recursive)):
        path = Path(match)
        rel = PurePosixPath(Path(os.path.relpath(path, base)).as_posix())
        if path.is_dir():
            yield from _walk(path, rel, recursive=recursive, output_real=output_real)
        elif path.is_file() and is_supported(path):
            in_output = output_real is not None and _inside(os.path.realpath(path.parent), output_real)
            if not (in_output and _is_our_output(path.name)):
                yield InputItem(path, rel)


def _output_key(rel: PurePosixPath) -> tuple[str, str]:
    return (str(rel.parent).casefold(), rel.stem.casefold())


# --------------------------------------------------------------------------------------------------- outputs


@dataclass(frozen=True)
class OutputPaths:
    """Where one image's outputs go; ``prob`` and ``contours`` are ``None`` when not requested."""

    mask: Path
    overlay: Path
    prob: Path | None
    contours: Path | None

    def all(self) -> list[Path]:
        return [p for p in (self.overlay, self.prob, self.contours, self.mask) if p is not None]


def _check_inside(root: Path, folder: Path, rel: PurePosixPath) -> None:
    real = folder.resolve()
    if real != root and root not in real.parents:
        raise ImageError(
            f"{rel}: its output folder {folder} resolves to {real}, outside --output {root} (a symlink?); "
            "refusing to write there — remove the link or choose another --output"
        )


def output_paths(
    output_root: str | os.PathLike[str], rel_path: str | PurePosixPath, options: InferOptions
) -> OutputPaths:
    """The output files for the input at ``rel_path``; :class:`ImageError` if any would leave ``output_root``.

    ``rel_path`` must be relative and free of ``..``; the folder it lands in, with every symlink resolved, must
    lie inside ``output_root``.
    """
    rel = PurePosixPath(rel_path)
    if rel.is_absolute() or not rel.parts or ".." in rel.parts or rel.name in ("", "."):
        raise ImageError(f"{rel_path}: output path must be relative without '..'; refusing to write outside --output")
    root = Path(output_root).resolve()
    folder = root.joinpath(*rel.parent.parts)
    _check_inside(root, folder, rel)
    stem = rel.stem
    return OutputPaths(
        mask=folder / f"{stem}_mask.png",
        overlay=folder / f"{stem}_overlay.jpg",
        prob=folder / f"{stem}_prob.png" if options.save_prob else None,
        contours=folder / f"{stem}_contours.json" if options.contours else None,
    )


def outputs_up_to_date(image_path: str | os.PathLike[str], paths: OutputPaths) -> bool:
    """Whether every requested output exists and the mask (written last) is not older than the image."""
    try:
        source = os.stat(image_path).st_mtime_ns
        mask = os.stat(paths.mask).st_mtime_ns
    except OSError:
        return False
    return mask >= source and all(p.is_file() for p in paths.all())


def write_outputs(paths: OutputPaths, image: np.ndarray, result: Any) -> None:
    """Write the overlay, the optional probability map and contours, then the mask (last: it marks completion)."""
    write_jpeg_atomic(paths.overlay, pp.overlay(image, result.mask), quality=90)
    if paths.prob is not None:
        write_png_atomic(paths.prob, result.prob, bits=8)
    if paths.contours is not None:
        text = json.dumps(pp.contours_json(result.mask), separators=(",", ":"))
        write_bytes_atomic(paths.contours, text.encode("utf-8"))
    write_png_atomic(paths.mask, result.mask, bits=1)


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


def _stats_row(stats: dict[str, Any]) -> Row:
    bbox = stats.get("bbox") or [None] * 4
    return {
        "width": stats["width"],
        "height": stats["height"],
        "area_px": stats["area_px"],
        "area_fraction": stats["fraction"],
        "bbox_x": bbox[0],
        "bbox_y": bbox[1],
        "bbox_w": bbox[2],
        "bbox_h": bbox[3],
        "n_components": stats["n_components"],
        "mean_prob": stats["mean_prob"],
    }


def process_image(
    model_path: str | os.PathLike[str],
    image_path: str | os.PathLike[str],
    options: InferOptions,
    output_root: str | os.PathLike[str],
    rel_path: str | PurePosixPath,
    *,
    on_tile: Callable[[int, int], None] | None = None,
) -> Row:
    """Segment one image file and write its outputs under ``output_root``; return its report row.

    The row has the keys :data:`CSV_FIELDS`; ``status`` is ``ok``, ``skipped`` (outputs up to date and not
    ``options.overwrite``) or ``failed`` with a one-line ``error``. Never raises for a bad image or a failed
    write; a model that cannot be loaded raises :class:`ModelError` (nothing can succeed then).
    """
    start = time.perf_counter()
    rel = PurePosixPath(rel_path)
    row = _empty_row(rel, image_path)
    try:
        paths = output_paths(output_root, rel, options)
        if not options.overwrite and outputs_up_to_date(image_path, paths):
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
        _check_inside(Path(output_root).resolve(), paths.mask.parent, rel)  # in case a link appeared meanwhile
        write_outputs(paths, image, result)
        row.update(_stats_row(result.stats), status="ok")
    except Exception as e:  # one bad file must never stop the batch: record the reason and go on
        row.update(status="failed", error=_one_line(e))
    row["seconds"] = round(time.perf_counter() - start - waited, 4)
    return row


# --------------------------------------------------------------------------------------------------- reports


def _csv_value(key: str, value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        digits = {"area_fraction": 6, "mean_prob": 4, "seconds": 3}.get(key, 6)
        return f"{value:.{digits}f}"
    return str(value)


_INT_FIELDS = frozenset({"width", "height", "area_px", "bbox_x", "bbox_y", "bbox_w", "bbox_h", "n_components"})
_FLOAT_FIELDS = frozenset({"area_fraction", "mean_prob", "seconds"})


def _parse_csv_row(raw: dict[str, str]) -> Row:
    row: Row = {k: raw.get(k) or "" for k in CSV_FIELDS}
    for key in _INT_FIELDS | _FLOAT_FIELDS:
        try:
            row[key] = (int if key in _INT_FIELDS else float)(row[key]) if row[key] != "" else None
        except ValueError:
            row[key] = None
    return row


def read_results(path: str | os.PathLike[str]) -> dict[str, Row]:
    """Rows of a previous ``results.csv`` keyed by ``path`` (numbers parsed); empty if missing or unreadable."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            return {r["path"]: _parse_csv_row(r) for r in csv.DictReader(f) if r.get("path")}
    except (OSError, UnicodeDecodeError, csv.Error, KeyError):
        return {}


def write_results(path: str | os.PathLike[str], rows: Iterable[Row]) -> None:
    """Write ``results.csv`` atomically, rows sorted by ``path``."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in sorted(rows, key=lambda r: str(r["path"])):
        writer.writerow({k: _csv_value(k, row.get(k)) for k in CSV_FIELDS})
    write_bytes_atomic(path, buf.getvalue().encode("utf-8"))


def merge_rows(previous: dict[str, dict[str, Any]], current: Iterable[Row]) -> dict[str, Row]:
    """This run's rows over the previous ones; a skipped image keeps its previous data (status ``skipped``)."""
    merged: dict[str, Row] = dict(previous)
    for row in current:
        old = previous.get(row["path"])
        if row["status"] == "skipped" and old is not None and old.get("width") is not None:
            merged[row["path"]] = {**old, "input": row["input"], "status": "skipped", "error": ""}
        else:
            merged[row["path"]] = row
    return merged


def _row_from_outputs(row: Row, paths: OutputPaths, max_pixels: int) -> Row:
    """Fill a skipped row that has no previous data from the mask (and probability map) on disk."""
    try:
        mask = read_mask(paths.mask, max_pixels=max_pixels)
        prob = None
        if paths.prob is not None and paths.prob.is_file():
            prob = cv2.imdecode(np.fromfile(paths.prob, np.uint8), cv2.IMREAD_GRAYSCALE)
            prob = prob if prob is not None and prob.shape == mask.shape else None
        return {**row, **_stats_row(pp.mask_stats(mask, prob))}
    except (SkinsegError, OSError, ValueError, cv2.error):
        return row


def _versions() -> dict[str, str]:
    import importlib.metadata

    import onnxruntime

    try:
        skinseg = importlib.metadata.version("skinseg")
    except importlib.metadata.PackageNotFoundError:
        skinseg = "unknown"
    return {
        "skinseg": skinseg,
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
        "opencv": cv2.__version__,
    }


@dataclass
class BatchSummary:
    """What a batch did; ``exit_code`` is 1 when any image failed, else 0."""

    ok: int
    failed: int
    skipped: int
    seconds: float
    megapixels: float
    provider: str
    model: str
    model_sha256: str
    output: str
    versions: dict[str, str] = field(default_factory=dict)
    interrupted: bool = False

    @property
    def total(self) -> int:
        return self.ok + self.failed + self.skipped

    @property
    def megapixels_per_second(self) -> float:
        return self.megapixels / self.seconds if self.seconds > 0 else 0.0

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(total=self.total, megapixels_per_second=round(self.megapixels_per_second, 3))
        d["seconds"] = round(self.seconds, 3)
        d["megapixels"] = round(self.megapixels, 3)
        return d


# --------------------------------------------------------------------------------------------------- output folder


def prepare_output(output: str | os.PathLike[str]) -> Path:
    """Create the output folder and check it is writable; :class:`UsageError` (exit 2) otherwise."""
    path = Path(output)
    if path.exists() and not path.is_dir():
        raise UsageError(f"--output {path}: exists and is not a folder; choose a folder path")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".skinseg-probe-{secrets.token_hex(4)}"
        probe.touch(exist_ok=False)
        probe.unlink()
    except OSError as e:
        raise UsageError(
            f"--output {path}: the folder cannot be created or written ({e.strerror or e}); "
            "check its permissions or choose another folder"
        ) from None
    return path


@contextlib.contextmanager
def output_lock(output: str | os.PathLike[str], *, wait: bool = False, on_wait: Callable[[], None] | None = None):
    """Hold ``.skinseg.lock`` in ``output`` for the ``with`` block (``fcntl.flock``; released if the process dies).

    If another run holds it: :class:`UsageError` at once, or with ``wait`` block until it ends (``on_wait`` is
    called first). Where ``fcntl`` does not exist (Windows) no lock is taken.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on Linux/macOS
        yield
        return
    path = Path(output) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        raise UsageError(
            f"{path}: cannot create the lock file ({e.strerror or e}); check the folder's permissions"
        ) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
                raise UsageError(
                    f"{Path(output)}: another skinseg infer{f' (pid {holder})' if holder else ''} is writing to this "
                    "output folder; wait for it to finish, add --wait, or choose another --output"
                ) from None
            if on_wait is not None:
                on_wait()
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        yield
    finally:
        os.close(fd)  # closing releases the flock


def remove_stale_temps(output: str | os.PathLike[str]) -> int:
    """Delete temporary files a killed run left in ``output`` (only our own output names); return how many."""
    names = (*OUTPUT_SUFFIXES, RESULTS_NAME, SUMMARY_NAME)
    removed = 0
    for folder, _dirs, files in os.walk(output):
        for name in files:
            m = _TEMP_FILE.match(name)
            if m and m.group("name").endswith(names):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(folder, name))
                    removed += 1
    return removed


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
    provider), ``image_start``, ``tiles`` (done, total), ``image_done`` (row), ``summary``.
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
    previous = read_results(results_path)
    summary = BatchSummary(
        ok=0,
        failed=0,
        skipped=0,
        seconds=0.0,
        megapixels=0.0,
        provider=provider,
        model=str(model_path),
        model_sha256=file_sha256(model_path),
        output=str(output),
        versions=_versions(),
    )
    rows: list[Row] = []
    start = time.perf_counter()
    last_checkpoint = start
    emit({"event": "start", "total": len(items), "provider": provider, "model": str(model_path), "output": str(output)})

    def record(index: int, row: Row) -> None:
        nonlocal last_checkpoint
        if row["status"] == "skipped":  # report what the outputs on disk say
            row = merge_rows(previous, [row])[row["path"]]
            if row.get("width") is None:
                row = _row_from_outputs(row, output_paths(output, row["path"], options), options.max_pixels)
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
        _pipeline(items, model_path, output, options, emit, record)
    except BaseException:
        summary.interrupted = True
        raise
    finally:
        summary.seconds = time.perf_counter() - start
        _write_reports(output, merge_rows(previous, rows).values(), summary, options)
    emit({"event": "summary", "summary": summary.to_dict()})
    return summary


def _write_reports(output: Path, rows: Iterable[Row], summary: BatchSummary, options: InferOptions) -> None:
    rows = list(rows)
    try:
        write_results(output / RESULTS_NAME, rows)
        text = json.dumps({**summary.to_dict(), "options": asdict(options)}, indent=2)
        write_bytes_atomic(output / SUMMARY_NAME, text.encode("utf-8"))
        write_gallery(output, _gallery_entries(output, rows, options), summary=_gallery_summary(summary))
    except OSError as e:
        raise SkinsegError(
            f"{output}: cannot write {RESULTS_NAME} or {SUMMARY_NAME} ({e.strerror or e}); the masks are written, "
            "free some space or fix the permissions and run again to rebuild the report"
        ) from None


def _gallery_entries(output: Path, rows: list[Row], options: InferOptions) -> list[tuple[Row, Path | None, Path]]:
    entries = []
    for row in sorted(rows, key=lambda r: str(r["path"])):
        try:
            overlay: Path | None = output_paths(output, row["path"], options).overlay
        except ImageError:
            overlay = None
        entries.append((row, overlay, Path(str(row.get("input") or row["path"])).resolve()))
    return entries


def _gallery_summary(summary: BatchSummary) -> str:
    return (
        f"{summary.ok} ok, {summary.failed} failed, {summary.skipped} skipped in {summary.seconds:.1f} s "
        f"on {summary.provider}; model {Path(summary.model).name} (sha256 {summary.model_sha256[:12]})"
    )


def _pipeline(
    items: list[InputItem],
    model_path: Path,
    output: Path,
    options: InferOptions,
    emit: Callable[[Event], None],
    record: Callable[[int, Row], None],
) -> None:
    """Run :func:`process_image` on ``items`` with :data:`PIPELINE_DEPTH` images in flight; events and rows
    are handed to ``emit``/``record`` on this thread."""
    events: queue.SimpleQueue[Event] = queue.SimpleQueue()
    seen: dict[tuple[str, str], InputItem] = {}
    jobs: deque[tuple[int, InputItem]] = deque()
    for index, item in enumerate(items):
        first = seen.setdefault(_output_key(item.rel), item)
        if first is item:
            jobs.append((index, item))
        else:
            record(index, _collision_row(item, first))

    def work(index: int, item: InputItem) -> Row:
        rel = str(item.rel)
        events.put({"event": "image_start", "index": index, "path": rel})

        def on_tile(done: int, total: int) -> None:
            events.put({"event": "tiles", "index": index, "path": rel, "done": done, "total": total})

        return process_image(model_path, item.path, options, output, item.rel, on_tile=on_tile)

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
