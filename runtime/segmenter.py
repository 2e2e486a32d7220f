"""Segment an image with a skinseg ONNX model on onnxruntime.

:class:`Segmenter` loads the model once and reads its ``skinseg`` metadata (tile size, training scale,
threshold, layout). :meth:`Segmenter.segment` then brings an image to the model's scale, predicts it tile by
tile with Gaussian blending, brings the probabilities back to the original size and thresholds them.

This module never imports TensorFlow, Keras, tf2onnx or onnx: metadata comes from onnxruntime itself.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from runtime import postprocess as pp
from runtime.errors import ImageError, ModelError, UsageError
from runtime.imageio import DEFAULT_MAX_PIXELS, read_image
from runtime.metadata import METADATA_KEY, ModelMetadata, Scale, parse_metadata
from runtime.postprocess import DEFAULT_FILL_HOLES, DEFAULT_KEEP_LARGEST
from runtime.providers import check_provider_used, resolve_providers
from runtime.tiling import DEFAULT_BATCH_SIZE, plan_tiles, tiled_predict

__all__ = ["Result", "Segmenter"]

_INPUT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(uint8)": np.uint8}


@dataclass
class Result:
    """One segmented image. ``mask`` and ``prob`` have the original image's size."""

    mask: np.ndarray  # H×W uint8, 0 or 255
    prob: np.ndarray  # H×W uint8, probability × 255 (uint8 keeps a 30 MP map at 30 MB)
    stats: dict[str, Any]
    provider: str
    seconds: float
    scale_factor: float  # working size / original size
    working_size: tuple[int, int]  # (width, height) the model saw
    tiles: int
    threshold: float
    extra: dict[str, Any] = field(default_factory=dict)


def _first_line(error: BaseException, limit: int = 200) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _static(dim: Any) -> int | None:
    return dim if isinstance(dim, int) and dim > 0 else None


MAX_TILE = 4096  # px: a larger tile is a typo (its Gaussian weights alone would take gigabytes)


def check_options(*, threads: int | None, overlap: float, batch_size: int, threshold: float | None) -> None:
    """The option rules every segmenter shares, with the CLI's option names in the messages."""
    if threads is not None and (int(threads) != threads or threads < 1):
        raise UsageError(f"--threads must be a positive integer, got {threads!r}")
    if not 0.0 <= overlap < 1.0:
        raise UsageError(f"--overlap must be within [0, 1), got {overlap!r}; 0.25 is a good default")
    if int(batch_size) != batch_size or batch_size < 1:
        raise UsageError(f"--batch-size must be a positive integer, got {batch_size!r}")
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise UsageError(f"--threshold must be within [0, 1], got {threshold!r}")


def parse_tile(tile: int | Sequence[int]) -> tuple[int, int]:
    """``(height, width)`` from one or two integers, each within 1..MAX_TILE."""
    t = (int(tile), int(tile)) if isinstance(tile, (int, np.integer)) else tuple(int(v) for v in tile)
    if len(t) != 2 or min(t) < 1 or max(t) > MAX_TILE:
        raise UsageError(f"--tile must be one or two integers from 1 to {MAX_TILE} (height, width), got {tile!r}")
    return t[0], t[1]


class Segmenter:
    """A loaded skinseg model, ready to segment images of any size.

    Args:
        model_path: the ``.onnx`` file.
        device: ``auto``, ``cpu``, ``cuda``, ``tensorrt`` or ``openvino`` (see :mod:`runtime.providers`).
        threads: onnxruntime intra-op threads (``None``: onnxruntime's default, one per physical core).
        tile: ``(height, width)`` of the tiles; defaults to the metadata's. Required without metadata.
        scale: a :class:`Scale` or its CLI form (``native``, ``0.25``, ``1024``); defaults to the training
            scale from the metadata. Required without metadata.
        overlap: fraction of a tile shared with its neighbours (0 ≤ overlap < 1).
        batch_size: tiles per onnxruntime call.
        threshold: probability cut-off; defaults to the metadata's (0.5 without metadata).
        keep_largest: keep only the largest connected component of the mask.
        fill_holes: fill holes inside the mask.
        max_pixels: :meth:`segment_file` refuses larger images before decoding them.
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        *,
        device: str = "auto",
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
        import onnxruntime as ort

        self.model_path = Path(model_path)
        name = str(self.model_path)
        check_options(threads=threads, overlap=overlap, batch_size=batch_size, threshold=threshold)
        if not self.model_path.is_file():
            what = "is a directory, not an .onnx file" if self.model_path.is_dir() else "file not found"
            raise ModelError(f"{name}: {what}")

        self.device = device
        self._requested = resolve_providers(device)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.inter_op_num_threads = 1
        options.log_severity_level = 4  # fatal only: failures reach the user as one-line errors, not ORT logs
        if threads is not None:
            options.intra_op_num_threads = int(threads)
        try:
            self._session = ort.InferenceSession(name, sess_options=options, providers=self._requested)
        except Exception as e:  # onnxruntime raises its own exception types for every kind of bad file
            raise ModelError(
                f"{name}: not a loadable ONNX model ({_first_line(e)}); check the file is complete or re-export it"
            ) from None
        check_provider_used(device, self._requested, self._session.get_providers())

        self.metadata = self._read_metadata(name)
        meta = self.metadata
        if meta is None and (tile is None or scale is None):
            raise ModelError(
                f"{name}: the model has no skinseg metadata, so its tile size and scale are unknown; "
                "give both tile and scale (--tile 256 --scale 0.25), or export it with `skinseg export`"
            )
        try:
            self.scale = (
                meta.train_scale if scale is None else scale if isinstance(scale, Scale) else Scale.parse(scale)
            )
        except ValueError as e:
            raise UsageError(f"--scale: {e}") from None
        self.threshold = float(threshold if threshold is not None else meta.threshold if meta else 0.5)
        self.overlap = float(overlap)
        self.keep_largest = bool(keep_largest)
        self.fill_holes = bool(fill_holes)
        self.max_pixels = int(max_pixels)
        self.color_order = meta.color_order if meta else "rgb"
        self.value_range = tuple(meta.value_range) if meta else (0.0, 255.0)
        self._setup_io(name, tile, int(batch_size))

    # ------------------------------------------------------------------------------------------- model checks

    def _read_metadata(self, name: str) -> ModelMetadata | None:
        props = self._session.get_modelmeta().custom_metadata_map or {}
        text = props.get(METADATA_KEY)
        return None if text is None else parse_metadata(text, source=name)

    def _setup_io(self, name: str, tile: int | Sequence[int] | None, batch_size: int) -> None:
        meta = self.metadata
        inputs = self._session.get_inputs()
        by_name = {i.name: i for i in inputs}
        if meta is not None and meta.input_name in by_name:
            inp = by_name[meta.input_name]
        elif len(inputs) == 1:
            inp = inputs[0]
        else:
            raise ModelError(
                f"{name}: the model has {len(inputs)} inputs ({', '.join(by_name)}); a skinseg model takes one image"
            )
        shape = list(inp.shape)
        if len(shape) != 4:
            raise ModelError(
                f"{name}: input {inp.name!r} has shape {shape} (rank {len(shape)}); a skinseg model takes a "
                "4-D image batch, NHWC [N, H, W, 3] or NCHW [N, 3, H, W]"
            )
        if meta is not None:
            layout = meta.layout
        elif shape[3] == 3:
            layout = "nhwc"
        elif shape[1] == 3:
            layout = "nchw"
        else:
            layout = "unknown"
        channels = shape[3] if layout == "nhwc" else shape[1] if layout == "nchw" else None
        if layout == "unknown" or (isinstance(channels, int) and channels != 3):
            raise ModelError(
                f"{name}: input {inp.name!r} has shape {shape}; a skinseg model takes 3-channel images, "
                "NHWC [N, H, W, 3] or NCHW [N, 3, H, W]"
            )
        if inp.type not in _INPUT_TYPES:
            raise ModelError(f"{name}: input {inp.name!r} is {inp.type}; skinseg feeds float, float16 or uint8")
        spatial = (shape[1], shape[2]) if layout == "nhwc" else (shape[2], shape[3])
        fixed = (_static(spatial[0]), _static(spatial[1]))

        if tile is not None:
            t = parse_tile(tile)
        elif meta is not None:
            t = tuple(meta.tile_size)
        else:  # unreachable: checked in __init__
            raise ModelError(f"{name}: no tile size")
        for got, want, side in zip(t, fixed, ("height", "width"), strict=True):
            if want is not None and got != want:
                raise ModelError(
                    f"{name}: the model's input {side} is fixed at {want} px but the tile is {t[0]}×{t[1]}; "
                    f"use --tile {fixed[0]} or re-export the model with dynamic height and width"
                )
        outputs = self._session.get_outputs()
        out_names = [o.name for o in outputs]
        self.output_name = meta.output_name if meta is not None and meta.output_name in out_names else out_names[0]
        self.input_name = inp.name
        self.layout = layout
        self.tile: tuple[int, int] = (int(t[0]), int(t[1]))
        self._input_dtype = _INPUT_TYPES[inp.type]
        self._fixed_batch = _static(shape[0])
        self.batch_size = self._fixed_batch or batch_size
        self._probe(name)

    def _probe(self, name: str) -> None:
        """Run one blank tile now, so a tile size the model cannot take is a usage error before any image."""
        try:
            self.predict_tiles(np.zeros((self._fixed_batch or 1, *self.tile, 3), np.float32))
        except ModelError:
            raise
        except Exception as e:  # onnxruntime's own exception types
            raise UsageError(
                f"{name}: the model cannot segment {self.tile[0]}×{self.tile[1]} tiles ({_first_line(e)}); "
                "use the model's own tile size (leave --tile out)"
            ) from None

    # ------------------------------------------------------------------------------------------- properties

    @property
    def provider(self) -> str:
        """The execution provider onnxruntime actually uses (e.g. ``CPUExecutionProvider``)."""
        return self._session.get_providers()[0]

    def __repr__(self) -> str:
        return (
            f"Segmenter({str(self.model_path)!r}, tile={self.tile}, scale={self.scale}, "
            f"layout={self.layout!r}, provider={self.provider!r})"
        )

    # ------------------------------------------------------------------------------------------- inference

    def predict_tiles(self, batch: np.ndarray) -> np.ndarray:
        """Run the model on an ``N×th×tw×3`` RGB batch (float, 0–255); return ``N×th×tw`` float32 in 0–1."""
        x = batch
        if self.color_order == "bgr":
            x = x[..., ::-1]
        lo, hi = self.value_range
        if (lo, hi) != (0.0, 255.0):
            x = x * np.float32((hi - lo) / 255.0) + np.float32(lo)
        if self.layout == "nchw":
            x = x.transpose(0, 3, 1, 2)
        x = np.ascontiguousarray(x, dtype=self._input_dtype)
        n = len(x)
        if self._fixed_batch is not None and n < self._fixed_batch:
            x = np.concatenate([x, np.zeros((self._fixed_batch - n, *x.shape[1:]), x.dtype)])
        try:
            y = self._session.run([self.output_name], {self.input_name: x})[0]
        except Exception as e:  # onnxruntime's own types; typically a tile size the network cannot take
            raise ModelError(
                f"{self.model_path}: inference failed on a batch of {n} {self.tile[0]}×{self.tile[1]} tiles "
                f"({_first_line(e)}); try a tile that is a multiple of 32"
            ) from None
        y = np.asarray(y)[:n]
        if y.ndim == 4:
            first, last = (1, 3) if self.layout == "nchw" else (3, 1)
            if y.shape[first] == 1:
                y = y.squeeze(first)
            elif y.shape[last] == 1:
                y = y.squeeze(last)
        if y.shape != (n, *self.tile):
            raise ModelError(
                f"{self.model_path}: output {self.output_name!r} has shape {list(y.shape)} for {n} tiles of "
                f"{self.tile[0]}×{self.tile[1]}; a skinseg model returns one probability channel per pixel"
            )
        y = np.clip(y.astype(np.float32, copy=False), 0.0, 1.0)
        return np.nan_to_num(y, copy=False, nan=0.0)  # a NaN pixel is background, not undefined uint8

    def segment(self, image: np.ndarray, on_tile: Callable[[int, int], None] | None = None) -> Result:
        """Segment an ``H×W×3`` uint8 RGB image (gray and RGBA are accepted). ``on_tile(done, total)`` reports
        progress after each batch of tiles."""
        start = time.perf_counter()
        image = _as_rgb(image)
        return self._segment(image, (image.shape[1], image.shape[0]), on_tile, start)

    def segment_file(self, path: str | os.PathLike[str], on_tile: Callable[[int, int], None] | None = None) -> Result:
        """Read and segment an image file; the mask has the file's full (EXIF-oriented) size.

        The file is decoded at full size, exactly as ``skinseg infer`` and ``skinseg evaluate`` do (they need the
        full image for the overlay and the scores), so the API, the CLI and the published figures agree pixel for
        pixel. Raises :class:`ImageError` for a file that cannot be read.
        """
        start = time.perf_counter()
        image = read_image(path, max_pixels=self.max_pixels)
        return self._segment(image, (image.shape[1], image.shape[0]), on_tile, start)

    def _check_work_size(self, size: tuple[int, int], work: tuple[int, int]) -> None:
        """Refuse an image the scale would blow up (a 1×3000 strip at short side 256 is 196 MP of work)."""
        area, work_area = size[0] * size[1], work[0] * work[1]
        limit = max(4 * area, 4 * self.tile[0] * self.tile[1])
        if work_area > limit or work_area > self.max_pixels:
            raise ImageError(
                f"{size[0]}×{size[1]} px would be segmented at {work[0]}×{work[1]} px (scale {self.scale}), "
                f"{work_area / area:.0f}× its own size; not a dermoscopy photo? Otherwise use a smaller --scale"
            )

    def _segment(
        self,
        image: np.ndarray,
        size: tuple[int, int],
        on_tile: Callable[[int, int], None] | None,
        start: float,
    ) -> Result:
        width, height = size
        work_size = self.scale.work_size(width, height, self.tile)
        self._check_work_size(size, work_size)
        if (image.shape[1], image.shape[0]) == work_size:
            work = image
        else:
            shrinking = work_size[0] < image.shape[1]
            work = cv2.resize(image, work_size, interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
        del image  # the caller may still hold it; we need only the working copy
        tiles = len(plan_tiles(work_size[1], work_size[0], self.tile, self.overlap))
        prob_work = tiled_predict(
            work,
            self.predict_tiles,
            tile=self.tile,
            overlap=self.overlap,
            batch_size=self.batch_size,
            on_tile=on_tile,
        )
        del work
        prob = np.empty(prob_work.shape, np.uint8)
        np.multiply(prob_work, 255.0, out=prob_work)
        np.add(prob_work, 0.5, out=prob_work)
        np.copyto(prob, prob_work, casting="unsafe")  # values are within [0.5, 255.5): truncation rounds
        del prob_work
        if work_size != (width, height):
            prob = cv2.resize(prob, (width, height), interpolation=cv2.INTER_LINEAR)
        mask = pp.threshold(prob, self.threshold)
        if self.keep_largest:
            mask = pp.keep_largest_component(mask)
        if self.fill_holes:
            mask = pp.fill_holes(mask)
        return Result(
            mask=mask,
            prob=prob,
            stats=pp.mask_stats(mask, prob),
            provider=self.provider,
            seconds=time.perf_counter() - start,
            scale_factor=work_size[0] / width,
            working_size=work_size,
            tiles=tiles,
            threshold=self.threshold,
        )


def _as_rgb(image: np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        kind = image.dtype if isinstance(image, np.ndarray) else type(image).__name__
        raise ImageError(f"expected a uint8 RGB image array, got {kind}")
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    elif image.ndim == 3 and image.shape[2] == 4:
        image = np.ascontiguousarray(image[..., :3])
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] < 1 or image.shape[1] < 1:
        raise ImageError(f"expected an H×W×3 RGB image, got shape {image.shape}")
    return image
