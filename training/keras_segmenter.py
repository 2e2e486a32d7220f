"""Segment images with a ``.keras`` model through the runtime's own pipeline (needs the ``train`` extra).

:class:`KerasBackend` is a :class:`skinseg.runtime.segmenter.Backend` that predicts tiles with Keras instead of
onnxruntime; :func:`KerasSegmenter` puts it into the runtime's :class:`~skinseg.runtime.segmenter.Segmenter`. Scaling,
colour pre-processing, tiling, blending, thresholding and post-processing are the same code, so a ``.keras`` model
and its exported ``.onnx`` are evaluated the same way and their figures are comparable. The backend's metadata is
what ``skinseg export`` would write, so the defaults (scale, tile, colour constancy, flips) match too.
TensorFlow stays out of ``runtime``: this adapter lives with the training code.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from skinseg.data.run_folder import CONFIG_RESOLVED, RunFolder
from skinseg.runtime.errors import ModelError, param
from skinseg.runtime.metadata import ModelMetadata
from skinseg.runtime.options import SegmentOptions
from skinseg.runtime.segmenter import Segmenter

__all__ = ["KerasBackend", "KerasSegmenter", "open_segmenter"]


def keras_metadata(model: Any, path: Path) -> ModelMetadata | None:
    """The metadata ``skinseg export`` would write for this ``.keras`` file: from the run directory's
    ``config.resolved.ini`` next to it, else from the model's fixed input size; None if neither says."""
    from skinseg.exporters.from_run import build_metadata

    run = RunFolder.of_model(path)
    run_dir = run.path if run else None
    shape = tuple(model.inputs[0].shape)
    if run_dir is None and not (len(shape) == 4 and isinstance(shape[1], int) and isinstance(shape[2], int)):
        return None
    return build_metadata(model, run_dir)


class KerasBackend:
    """A ``.keras`` model predicting tiles in inference mode. ``threads`` sets TensorFlow's intra-op threads."""

    provider = "keras"
    fixed_batch = None

    def __init__(self, model_path: str | os.PathLike[str], *, threads: int | None = None) -> None:
        self.model_path = Path(model_path)
        if threads is not None:
            import tensorflow as tf

            # Once TensorFlow has started in this process its thread pool is fixed: keep it.
            with contextlib.suppress(RuntimeError):
                tf.config.threading.set_intra_op_parallelism_threads(int(threads))
        from skinseg.training.model import load_model

        self.model = load_model(self.model_path, compile=False)
        shape = tuple(self.model.inputs[0].shape)
        self.fixed_tile = tuple(v if isinstance(v, int) else None for v in shape[1:3])
        self.metadata = keras_metadata(self.model, self.model_path)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self.model(np.ascontiguousarray(batch, dtype=np.float32), training=False), np.float32)


def KerasSegmenter(model_path: str | os.PathLike[str], *, threads: int | None = None, **options: Any) -> Segmenter:  # noqa: N802
    """A :class:`Segmenter` whose tiles a ``.keras`` model predicts; ``options`` as for :class:`Segmenter`.

    Without a run directory or a fixed input size the tile size and scale are unknown: give both ``tile`` and
    ``scale``.
    """
    backend = KerasBackend(model_path, threads=threads)
    if backend.metadata is None and (options.get("tile") is None or options.get("scale") is None):
        raise ModelError(
            f"{model_path}: the model takes any input size and has no {CONFIG_RESOLVED} next to it, so its tile size "
            f"and scale are unknown; give both {param('tile')} and {param('scale')} (e.g. {param('tile', 256)} "
            f"{param('scale', 'tile')})"
        )
    return Segmenter(backend, threads=threads, **options)


def open_segmenter(
    model_path: str | os.PathLike[str], options: SegmentOptions | None = None, **changes: Any
) -> Segmenter:
    """A :class:`Segmenter` for a model file: ``.onnx`` on onnxruntime, ``.keras`` on Keras (``device`` ignored).

    ``options`` and ``changes`` as for :class:`Segmenter`. UsageError for another suffix.
    """
    from skinseg.runtime.errors import UsageError

    path = Path(model_path)
    suffix = path.suffix.lower()
    if suffix == ".keras":
        if not path.is_file():
            raise ModelError(f"{path}: file not found")
        return KerasSegmenter(path, **SegmentOptions.of(options, **changes).as_kwargs() | {"device": "auto"})
    if suffix != ".onnx":
        raise UsageError(f"{param('model', path)}: expected an .onnx or .keras file (got {suffix or 'no'} suffix)")
    return Segmenter(path, options, **changes)
