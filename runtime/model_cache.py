"""The models a process has loaded: :class:`ModelCache`, one per process (:data:`MODELS`), and their memory.

A batch loads its model once and pins it (:meth:`ModelCache.pin`: the file's SHA-256 goes into the options), so
every image of the run, in this process or on a Dask worker, is segmented by that model or fails; a worker's first
image loads it there. :func:`model_memory` measures what the model needs to segment one batch of tiles, so a
memory limit too small for the model alone is said before any image.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

from skinseg.runtime.defaults import default_memory_limit
from skinseg.runtime.errors import ModelError, UsageError, param
from skinseg.runtime.options import InferOptions, SegmentOptions

__all__ = ["DEFAULT_MODEL", "MODELS", "ModelCache", "default_model_path", "model_memory"]

DEFAULT_MODEL = Path(__file__).resolve().parent / "models" / "skinseg_default.onnx"


def default_model_path() -> Path:
    """The bundled default model; :class:`UsageError` while none is installed."""
    if DEFAULT_MODEL.is_file():
        return DEFAULT_MODEL
    raise UsageError(
        f"{param('model')} is required until a default model is installed (there is none at {DEFAULT_MODEL}); "
        f"pass {param('model', 'path/to/model.onnx')}"
    )


class ModelCache:
    """Loaded :class:`~skinseg.runtime.segmenter.Segmenter` objects, each with its inference lock, keyed by the
    model file and the segmentation options (at most :attr:`size`; the oldest goes first).

    The model file is read once (its bytes make the session, and their SHA-256 is the segmenter's
    ``model_sha256``), so replacing the file while a run uses it changes nothing. The key is the model's real path,
    its identity (``options.model_sha256``, the model a run pinned; else the file's size and time, so a file
    replaced since is read again) and the :class:`SegmentOptions`. Hold the lock while running the model: one
    inference at a time keeps onnxruntime's threads from competing for the cores.
    """

    def __init__(self, size: int = 4) -> None:
        self.size = size
        self._entries: dict[tuple[Any, ...], tuple[Any, threading.Lock]] = {}
        self._lock = threading.Lock()

    @staticmethod
    def key(model_path: str | os.PathLike[str], options: SegmentOptions, sha256: str | None) -> tuple[Any, ...]:
        """The cache key of a model file with ``options``: pinned by ``sha256``, else by the file's size and time."""
        path = Path(model_path).resolve()
        identity: Any = sha256
        if identity is None:
            try:
                st = path.stat()
                identity = (st.st_size, st.st_mtime_ns)
            except OSError:
                identity = None  # the backend reports the missing file
        return (str(path), identity, tuple(sorted(options.segment.as_kwargs().items())))

    def get(
        self, model_path: str | os.PathLike[str], options: InferOptions, *, budget: int | None = None
    ) -> tuple[Any, threading.Lock]:
        """The segmenter for this model and options, and its inference lock; loaded on first use.

        A file that no longer has the pinned hash (``options.model_sha256``) raises :class:`ModelError`.
        ``budget`` (bytes): the model's working memory (:func:`model_memory`) must fit in it, or
        :class:`UsageError` says so before the segmenter's first full-size tile is run.
        """
        key = self.key(model_path, options, options.model_sha256)
        with self._lock:
            if key not in self._entries:
                self._add(key, self._load(model_path, options, budget))
            found = self._entries[key]
        if budget is not None:
            segmenter = found[0]
            if getattr(segmenter, "working_memory", None) is None:
                segmenter.working_memory = model_memory(segmenter.backend, options)
            _check_model_memory(model_path, segmenter.backend, options, segmenter.working_memory, budget)
        return found

    def pin(self, model_path: str | os.PathLike[str], options: InferOptions) -> tuple[Any, InferOptions]:
        """Load the model for a run and pin it: the segmenter, and ``options`` carrying its SHA-256. UsageError when
        the model's working memory alone exceeds ``options.memory_limit`` (or the default), before it runs a full
        tile."""
        budget = options.memory_limit or default_memory_limit()
        found = self.get(model_path, replace(options, model_sha256=None), budget=budget)
        pinned = replace(options, model_sha256=found[0].model_sha256)
        with self._lock:  # the same segmenter and lock under the pinned key: process_image finds it, never re-reads
            self._add(self.key(model_path, pinned, pinned.model_sha256), found)
        return found[0], pinned

    def _add(self, key: tuple[Any, ...], entry: tuple[Any, threading.Lock]) -> None:
        if key not in self._entries:
            while len(self._entries) >= self.size:
                self._entries.pop(next(iter(self._entries)))
        self._entries[key] = entry

    @staticmethod
    def _load(
        model_path: str | os.PathLike[str], options: InferOptions, budget: int | None
    ) -> tuple[Any, threading.Lock]:
        from skinseg.runtime.segmenter import OnnxBackend, Segmenter

        path = Path(model_path).resolve()
        data = _read_model(path)
        sha = hashlib.sha256(data).hexdigest() if data is not None else None
        if options.model_sha256 is not None and sha != options.model_sha256:
            raise ModelError(
                f"{model_path}: the model file changed since this run started (sha256 {str(sha)[:12]}, the run "
                f"uses {options.model_sha256[:12]}); run again to use the new model"
            )
        backend = OnnxBackend(path, device=options.device, threads=options.threads, data=data)
        need = None
        if budget is not None:  # before Segmenter runs its first tile: that alone may not fit
            need = model_memory(backend, options)
            _check_model_memory(model_path, backend, options, need, budget)
        segmenter = Segmenter(backend, options.segment)
        segmenter.model_sha256 = sha
        segmenter.working_memory = need
        return segmenter, threading.Lock()


MODELS = ModelCache()
"""This process's models: a batch's, and on a Dask worker those of the tasks it runs."""


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
