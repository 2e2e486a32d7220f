"""Segment images with a ``.keras`` model through the runtime's own pipeline (needs the ``train`` extra).

:class:`KerasSegmenter` is a :class:`runtime.segmenter.Segmenter` whose tile predictions come from Keras instead
of onnxruntime. Scaling, tiling, Gaussian blending, thresholding and post-processing are the inherited code, so a
``.keras`` model and its exported ``.onnx`` are evaluated the same way and their figures are comparable.
TensorFlow stays out of ``runtime``: this adapter lives with the training code.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from runtime.errors import ModelError, UsageError
from runtime.imageio import DEFAULT_MAX_PIXELS
from runtime.metadata import Scale
from runtime.postprocess import DEFAULT_FILL_HOLES, DEFAULT_KEEP_LARGEST
from runtime.segmenter import Segmenter, check_options, parse_tile
from runtime.tiling import DEFAULT_BATCH_SIZE

__all__ = ["KerasSegmenter", "keras_defaults"]

RUN_CONFIG = "config.resolved.ini"


def keras_defaults(model: Any, path: Path) -> tuple[tuple[int, int], Scale]:
    """The tile ``(height, width)`` and scale ``skinseg export`` would record for this ``.keras`` file: from the
    run directory's ``config.resolved.ini`` next to it, else from the model's fixed input size."""
    from exporters.from_run import build_metadata

    run_dir = path.parent if (path.parent / RUN_CONFIG).is_file() else None
    shape = tuple(model.inputs[0].shape)
    if run_dir is None and not (len(shape) == 4 and isinstance(shape[1], int) and isinstance(shape[2], int)):
        raise ModelError(
            f"{path}: the model takes any input size and has no {RUN_CONFIG} next to it, so its tile size and scale "
            "are unknown; give both --tile and --scale (e.g. --tile 256 --scale tile)"
        )
    meta = build_metadata(model, run_dir)
    return meta.tile_size, meta.train_scale


class KerasSegmenter(Segmenter):
    """A loaded ``.keras`` model with :class:`Segmenter`'s options and methods (``segment``, ``segment_file``).

    ``tile`` and ``scale`` default to what the model was trained with (see :func:`keras_defaults`); ``threshold``
    defaults to 0.5, as ``skinseg export`` writes it. ``threads`` sets TensorFlow's intra-op threads.
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        *,
        threads: int | None = None,
        tile: int | Sequence[int] | None = None,
        scale: Scale | str | float | None = None,
        overlap: float = 0.25,
        batch_size: int = DEFAULT_BATCH_SIZE,
        threshold: float | None = None,
        keep_largest: bool = DEFAULT_KEEP_LARGEST,
        fill_holes: bool = DEFAULT_FILL_HOLES,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        # Segmenter.__init__ opens an onnxruntime session; we set the attributes its pipeline reads instead.
        check_options(threads=threads, overlap=overlap, batch_size=batch_size, threshold=threshold)
        self.model_path = Path(model_path)
        if threads is not None:
            import tensorflow as tf

            # Once TensorFlow has started in this process its thread pool is fixed: keep it.
            with contextlib.suppress(RuntimeError):
                tf.config.threading.set_intra_op_parallelism_threads(int(threads))
        from skinseg_cli.training.model import load_model

        self.model = load_model(self.model_path, compile=False)
        default_tile, default_scale = (None, None) if tile and scale else keras_defaults(self.model, self.model_path)
        try:
            self.scale = Scale.parse(scale) if isinstance(scale, (str, int, float)) else scale or default_scale
        except ValueError as e:
            raise UsageError(f"--scale: {e}") from None
        self.tile = _tile(tile, default_tile)
        self._check_tile()
        self.device = "cpu"
        self.metadata = None
        self.threshold = 0.5 if threshold is None else float(threshold)
        self.overlap = float(overlap)
        self.keep_largest = bool(keep_largest)
        self.fill_holes = bool(fill_holes)
        self.max_pixels = int(max_pixels)
        self.color_order = "rgb"
        self.value_range = (0.0, 255.0)
        self.layout = "nhwc"
        self.batch_size = int(batch_size)

    def _check_tile(self) -> None:
        shape = tuple(self.model.inputs[0].shape)
        for got, want, side in zip(self.tile, shape[1:3], ("height", "width"), strict=True):
            if isinstance(want, int) and got != want:
                raise ModelError(
                    f"{self.model_path}: the model's input {side} is fixed at {want} px but the tile is "
                    f"{self.tile[0]}×{self.tile[1]}; use --tile {shape[1]} or leave --tile out"
                )

    @property
    def provider(self) -> str:
        return "keras"

    def __repr__(self) -> str:
        return f"KerasSegmenter({str(self.model_path)!r}, tile={self.tile}, scale={self.scale})"

    def predict_tiles(self, batch: np.ndarray) -> np.ndarray:
        """Run the Keras model (inference mode) on an ``N×th×tw×3`` RGB batch (0–255); ``N×th×tw`` in 0–1."""
        n = len(batch)
        y = np.asarray(self.model(np.ascontiguousarray(batch, dtype=np.float32), training=False), np.float32)
        if y.ndim == 4 and y.shape[-1] == 1:
            y = y[..., 0]
        if y.shape != (n, *self.tile):
            raise ModelError(
                f"{self.model_path}: the model returns shape {list(y.shape)} for {n} tiles of "
                f"{self.tile[0]}×{self.tile[1]}; a skinseg model returns one probability channel per pixel"
            )
        return np.nan_to_num(np.clip(y, 0.0, 1.0), copy=False, nan=0.0)


def _tile(tile: int | Sequence[int] | None, default: tuple[int, int] | None) -> tuple[int, int]:
    if tile is None:
        if default is None:  # unreachable: keras_defaults raised
            raise UsageError("--tile is required for this model")
        return default
    return parse_tile(tile)
