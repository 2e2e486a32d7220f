"""Segment an image with a skinseg model: one pipeline, any backend that predicts tiles.

:class:`Segmenter` is the pipeline, written once: it brings an image to the model's scale, applies the colour
pre-processing the model was trained with, predicts it tile by tile with Gaussian blending (optionally with
test-time flips), brings the probabilities back to the original size, thresholds and post-processes them, and
records how long each phase took. What predicts the tiles is a *backend* (MONAI's inferers take the network as
an argument the same way):

- :class:`OnnxBackend` runs an ONNX file on onnxruntime (the default: ``Segmenter("model.onnx")``);
- ``skinseg.training.keras_segmenter.KerasBackend`` runs a ``.keras`` model on TensorFlow (the ``train`` extra).

A backend has a ``metadata`` (:class:`ModelMetadata` or None), a ``provider`` name, the input sizes it accepts
(``fixed_tile``, ``fixed_batch``) and ``predict(batch)``: ``N×th×tw×3`` float32 RGB 0–255 in, ``N×th×tw``
probabilities out. Colour order, value range, layout and dtype are the backend's business.

This module never imports TensorFlow, Keras, tf2onnx or onnx: metadata comes from onnxruntime itself.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np

from skinseg.runtime import postprocess as pp
from skinseg.runtime.defaults import (
    DEFAULT_FILL_HOLES,
    DEFAULT_KEEP_LARGEST,
    DEFAULT_OVERLAP,
    DEFAULT_OVERLAY_SIZE,
    DEFAULT_THRESHOLD,
    DEFAULT_TTA,
)
from skinseg.runtime.errors import ImageError, ModelError, ParameterError, UsageError, one_line, param, render
from skinseg.runtime.imageio import decode_image, load_image_file
from skinseg.runtime.metadata import METADATA_KEY, ModelMetadata, Scale, parse_metadata
from skinseg.runtime.options import SegmentOptions
from skinseg.runtime.preprocess import apply_color_constancy
from skinseg.runtime.providers import (
    check_provider_used,
    cuda_build,
    import_onnxruntime,
    installed_runtimes,
    load_gpu_libraries,
    resolve_providers,
)
from skinseg.runtime.quality import GENERIC, needs_review, quality_features
from skinseg.runtime.tiling import flip_tta, parse_tile, plan_tiles, tiled_predict

__all__ = ["Backend", "OnnxBackend", "Result", "Segmenter", "check_options"]

_INPUT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(uint8)": np.uint8}
MAX_OVERLAP = 0.9  # beyond it the tiles multiply without limit (0.999: 1,000,000 tiles where 25% needs 2)
FAR_SCALE = 2.0  # a working scale this many times finer or coarser (on a side) than the model's own is warned of
PHASES = ("decode", "resize", "preprocess", "model", "blend", "postprocess")
"""The phases :attr:`Result.timings` reports, in pipeline order (``blend``: tiling and stitching around the model;
``resize`` covers both the resize to the working scale and the one back to full size)."""


@dataclass
class Result:
    """One segmented image. ``mask`` and ``prob`` have the original image's size."""

    mask: np.ndarray  # H×W uint8, 0 or 255
    prob: np.ndarray | None  # H×W uint8, probability × 255 (None when segmented with keep_prob=False)
    stats: dict[str, Any]
    provider: str
    seconds: float
    scale_factor: float  # working size / original size
    working_size: tuple[int, int]  # (width, height) the model saw
    tiles: int
    threshold: float
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase (see PHASES)
    extra: dict[str, Any] = field(default_factory=dict)


def _static(dim: Any) -> int | None:
    return dim if isinstance(dim, int) and dim > 0 else None


def check_options(*, threads: int | None, overlap: float, batch_size: int, threshold: float | None) -> None:
    """The option rules every segmenter shares; the messages name the parameters (:func:`~skinseg.runtime.errors.
    param`: the caller's names, the command line's flags when the CLI runs)."""
    if threads is not None and (int(threads) != threads or threads < 1):
        raise ParameterError(f"{param('threads')} must be a positive integer, got {threads!r}")
    if not 0.0 <= overlap <= MAX_OVERLAP:
        raise ParameterError(
            f"{param('overlap')} must be within [0, {MAX_OVERLAP:g}], got {overlap!r}; {DEFAULT_OVERLAP:g} is a good "
            "default",
        )
    if int(batch_size) != batch_size or batch_size < 1:
        raise ParameterError(f"{param('batch_size')} must be a positive integer, got {batch_size!r}")
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise ParameterError(f"{param('threshold')} must be within [0, 1], got {threshold!r}")


# ---------------------------------------------------------------------------------------------- backends


class Backend(Protocol):
    """What :class:`Segmenter` needs from a model runner."""

    model_path: Path
    metadata: ModelMetadata | None
    fixed_tile: tuple[int | None, int | None]  # input (height, width) the model requires, None where free
    fixed_batch: int | None  # batch size the model requires, None if free

    @property
    def provider(self) -> str: ...

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """``N×th×tw×3`` float32 RGB (0–255) → ``N×th×tw`` (or ``N×th×tw×1``) probabilities."""
        ...


class OnnxBackend:
    """An ONNX file on onnxruntime: reads the ``skinseg`` metadata, checks the input, predicts batches of tiles.

    ``device``: ``auto``, ``cpu``, ``cuda``, ``tensorrt`` or ``openvino`` (see :mod:`skinseg.runtime.providers`);
    ``threads``: onnxruntime intra-op threads (``None``: onnxruntime's default, one per physical core);
    ``session``: an ``onnxruntime.InferenceSession`` of this file made by the caller (e.g. with provider options),
    used instead of one made here; ``data``: the file's bytes, already read (the session is made from them, so
    what the caller hashed is what runs).
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        *,
        device: str = "auto",
        threads: int | None = None,
        session: Any = None,
        data: bytes | None = None,
    ):
        ort = import_onnxruntime()
        self.model_path = Path(model_path)
        name = str(self.model_path)
        if not self.model_path.is_file():
            what = "is a directory, not an .onnx file" if self.model_path.is_dir() else "file not found"
            raise ModelError(f"{name}: {what}")
        self.device = device
        with contextlib.suppress(AttributeError):
            ort.disable_telemetry_events()  # nothing leaves the machine, nothing is written outside --output
        if session is not None:
            self._session = session
        else:
            self._requested = resolve_providers(device)
            load_gpu_libraries(ort, self._requested)
            options = ort.SessionOptions()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            options.inter_op_num_threads = 1
            options.log_severity_level = 4  # fatal only: failures reach the user as one-line errors, not ORT logs
            if threads is not None:
                options.intra_op_num_threads = int(threads)
            try:
                source = name if data is None else data
                self._session = ort.InferenceSession(source, sess_options=options, providers=self._requested)
            except Exception as e:  # onnxruntime raises its own exception types for every kind of bad file
                raise ModelError(
                    f"{name}: not a loadable ONNX model ({one_line(e, typed=False)}); check the file is complete or "
                    "re-export it"
                ) from None
            check_provider_used(
                device,
                self._requested,
                self._session.get_providers(),
                built_for=cuda_build(ort),
                installed=installed_runtimes(),
            )
        props = self._session.get_modelmeta().custom_metadata_map or {}
        text = props.get(METADATA_KEY)
        self.metadata = None if text is None else parse_metadata(text, source=name)
        self._setup_io(name)

    def _setup_io(self, name: str) -> None:
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
        outputs = [o.name for o in self._session.get_outputs()]
        self.output_name = meta.output_name if meta is not None and meta.output_name in outputs else outputs[0]
        self.input_name = inp.name
        self.layout = layout
        self.fixed_tile = (_static(spatial[0]), _static(spatial[1]))
        self.fixed_batch = _static(shape[0])
        self._input_dtype = _INPUT_TYPES[inp.type]
        self.color_order = meta.color_order if meta else "rgb"
        self.value_range = tuple(meta.value_range) if meta else (0.0, 255.0)

    @property
    def provider(self) -> str:
        """The execution provider onnxruntime actually uses (e.g. ``CPUExecutionProvider``)."""
        return self._session.get_providers()[0]

    def predict(self, batch: np.ndarray) -> np.ndarray:
        step = self.fixed_batch
        if step is not None and len(batch) > step:  # a model with a fixed batch size gets it, chunk by chunk
            return np.concatenate([self._run(batch[i : i + step]) for i in range(0, len(batch), step)])
        return self._run(batch)

    def _run(self, batch: np.ndarray) -> np.ndarray:
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
        if self.fixed_batch is not None and n < self.fixed_batch:
            x = np.concatenate([x, np.zeros((self.fixed_batch - n, *x.shape[1:]), x.dtype)])
        try:
            y = self._session.run([self.output_name], {self.input_name: x})[0]
        except Exception as e:  # onnxruntime's own types; typically a tile size the network cannot take
            raise ModelError(
                f"{self.model_path}: inference failed on a batch of {n} {batch.shape[1]}×{batch.shape[2]} tiles "
                f"({one_line(e, typed=False)}); try a tile that is a multiple of 32"
            ) from None
        y = np.asarray(y)[:n]
        if y.ndim == 4:
            first, last = (1, 3) if self.layout == "nchw" else (3, 1)
            if y.shape[first] == 1:
                y = y.squeeze(first)
            elif y.shape[last] == 1:
                y = y.squeeze(last)
        return y


# ---------------------------------------------------------------------------------------------- pipeline


class _Clock:
    """Seconds per phase of one image; the model phase is timed inside the tile loop and taken out of blend."""

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(PHASES, 0.0)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - start


class Segmenter:
    """A loaded skinseg model, ready to segment images of any size.

    Args:
        model: an ``.onnx`` file (run by :class:`OnnxBackend`), or any :class:`Backend`; None (the default): the
            bundled model, as ``skinseg infer`` without ``--model``.
        options: a :class:`~skinseg.runtime.options.SegmentOptions` (its defaults when None); the options below,
            given by name, change it (``Segmenter("m.onnx", tile=512)``).
        device: ``auto``, ``cpu``, ``cuda``, ``tensorrt`` or ``openvino`` (ONNX files only).
        threads: onnxruntime intra-op threads (``None``: onnxruntime's default, one per physical core).
        tile: ``(height, width)`` of the tiles; defaults to the metadata's. Required without metadata.
        scale: a :class:`Scale` or its CLI form (``native``, ``tile``, ``0.25``, ``1024``, ``short:256``); defaults
            to the model's scale from the metadata. Required without metadata.
        overlap: fraction of a tile shared with its neighbours (0 ≤ overlap ≤ MAX_OVERLAP, 0.9).
        batch_size: tiles per model call.
        threshold: probability cut-off; defaults to the metadata's (DEFAULT_THRESHOLD, 0.5, without metadata).
        keep_largest: keep only the largest connected component; ``None``: the model's recommendation, else off.
        fill_holes: fill holes inside the mask; ``None``: the model's recommendation, else on.
        tta: average the predictions of each tile and its three flips (4× the model work); ``None``: the model's
            recommendation, else off.
        max_pixels: :meth:`segment_file` refuses larger images before decoding them.
    """

    model_sha256: str | None = None  # the model file's SHA-256 (set by a batch run, else computed when needed)
    options: SegmentOptions  # as given (None: the model's); the settings in effect are attributes (tile, scale…)

    def __init__(
        self,
        model: str | os.PathLike[str] | Backend | None = None,
        options: SegmentOptions | None = None,
        **changes: Any,
    ) -> None:
        # the options as given, each by name (a misspelt one is a TypeError); None: the model's, resolved below
        opts = self.options = SegmentOptions.of(options, **changes)
        check_options(threads=opts.threads, overlap=opts.overlap, batch_size=opts.batch_size, threshold=opts.threshold)
        tile = parse_tile(opts.tile) if opts.tile is not None else None
        if model is None:
            from skinseg.runtime.model_cache import default_model_path

            model = default_model_path()
        if isinstance(model, (str, os.PathLike)):
            model = OnnxBackend(model, device=opts.device, threads=opts.threads)
        self.backend: Backend = model
        self.model_path = Path(model.model_path)
        self.device = opts.device
        self.threads = opts.threads
        meta = self.metadata = model.metadata
        name = str(self.model_path)
        if meta is None and (tile is None or opts.scale is None):
            raise ModelError(
                f"{name}: the model has no skinseg metadata, so its tile size and scale are unknown; "
                f"give both tile and scale ({param('tile', 256)} {param('scale', 0.25)}), or export it with "
                "`skinseg export`"
            )
        scale = opts.scale
        try:
            parsed = scale if scale is None or isinstance(scale, Scale) else Scale.parse(scale)
            self.scale = meta.train_scale if parsed is None else parsed
        except ValueError as e:
            raise ParameterError(f"{param('scale')}: {e}") from None
        self.threshold = float(
            opts.threshold if opts.threshold is not None else meta.threshold if meta else DEFAULT_THRESHOLD
        )
        self.overlap = float(opts.overlap)
        self.keep_largest = _choose(opts.keep_largest, meta and meta.keep_largest, DEFAULT_KEEP_LARGEST)
        self.fill_holes = _choose(opts.fill_holes, meta and meta.fill_holes, DEFAULT_FILL_HOLES)
        self.tta = _choose(opts.tta, meta and meta.tta, DEFAULT_TTA)
        self.max_pixels = int(opts.max_pixels)
        self.color_constancy = dict(meta.color_constancy) if meta else {"method": "none"}
        self.quality = (meta.quality if meta is not None else None) or GENERIC  # estimates Result.stats["quality"]
        self.tile: tuple[int, int] = tile or tuple(meta.tile_size)  # type: ignore[assignment,union-attr]
        for got, want, side in zip(self.tile, model.fixed_tile, ("height", "width"), strict=True):
            if want is not None and got != want:
                raise ModelError(
                    f"{name}: the model's input {side} is fixed at {want} px but the tile is "
                    f"{self.tile[0]}×{self.tile[1]}; use {param('tile', model.fixed_tile[0])} or re-export the model "
                    "with "
                    "dynamic height and width"
                )
        self.batch_size = model.fixed_batch or int(opts.batch_size)
        self._probe(name)

    def _probe(self, name: str) -> None:
        """Run one blank tile now, so a tile size the model cannot take is a usage error before any image; then,
        where the model takes any size, one tile wider than high, so an output with height and width swapped
        (invisible on square tiles) is refused too."""
        try:
            self.predict_tiles(np.zeros((self.backend.fixed_batch or 1, *self.tile, 3), np.float32))
        except ModelError:
            raise
        except Exception as e:  # the backend's own exception types
            raise UsageError(
                f"{name}: the model cannot segment {self.tile[0]}×{self.tile[1]} tiles ({one_line(e, typed=False)}); "
                f"use the model's own tile size (leave {param('tile')} out)"
            ) from None
        if self.backend.fixed_tile != (None, None) or self.tile[0] != self.tile[1]:
            return
        wide = (self.tile[0], self.tile[1] + 64)
        try:
            y = np.asarray(self.backend.predict(np.zeros((self.backend.fixed_batch or 1, *wide, 3), np.float32)))
        except Exception:  # noqa: BLE001  a model that takes only its own tile: nothing to check
            return
        spatial = y.shape[1:3] if y.ndim == 4 and y.shape[-1] == 1 else y.shape[-2:]
        if tuple(spatial) == (wide[1], wide[0]):
            raise ModelError(
                f"{name}: the model returns its output with height and width swapped ({wide[0]}×{wide[1]} in, "
                f"{spatial[0]}×{spatial[1]} out); re-export it"
            )

    # ------------------------------------------------------------------------------------------- properties

    @property
    def provider(self) -> str:
        """What ran the model (e.g. ``CPUExecutionProvider``, or ``keras``)."""
        return self.backend.provider

    @property
    def layout(self) -> str:
        return getattr(self.backend, "layout", "nhwc")

    def settings(self) -> dict[str, Any]:
        """The settings in effect, the model's defaults filled in for :attr:`options` left to them (None): what a
        report records."""
        return {
            "tile": list(self.tile),
            "scale": self.scale.to_dict(),
            "overlap": self.overlap,
            "batch_size": self.batch_size,
            "threshold": self.threshold,
            "keep_largest": self.keep_largest,
            "fill_holes": self.fill_holes,
            "tta": self.tta,
            "color_constancy": self.color_constancy,
            "device": self.device,
            "threads": self.threads,
            "max_pixels": self.max_pixels,
        }

    def scale_warning(self, width: int, height: int) -> str | None:
        """A warning when this segmenter's scale puts a ``width × height`` photo far (:data:`FAR_SCALE` or more on a
        side) from the scale the model was trained at, naming the loss its card measured nearest that scale; None
        when the scale is near the model's own, or the model does not say its scale."""
        meta = self.metadata
        if meta is None:
            return None
        own_tile = (int(meta.tile_size[0]), int(meta.tile_size[1]))

        def ratio_of(scale: Scale | str) -> float:
            scale = scale if isinstance(scale, Scale) else Scale.parse(scale)
            w, h = scale.work_size(width, height, own_tile)
            tw, th = meta.train_scale.work_size(width, height, own_tile)
            return ((w * h) / (tw * th)) ** 0.5

        ratio = ratio_of(self.scale)
        if 1 / FAR_SCALE < ratio < FAR_SCALE:
            return None
        work = self.work_size(width, height)
        trained = meta.train_scale.work_size(width, height, own_tile)
        finer = f"{ratio:.1f}× finer" if ratio > 1 else f"{1 / ratio:.1f}× coarser"
        text = (
            f"{param('scale', self.scale)} segments a {width}×{height} photo at {work[0]}×{work[1]} px, {finer} than "
            f"{self.model_path.name} was trained at (scale {meta.train_scale}: {trained[0]}×{trained[1]} px)"
        )
        card = self.card()
        nearest = card.nearest_scale(ratio_of, ratio) if card is not None else None
        own = next((f for f in card.scale_figures if f.scale == str(meta.train_scale)), None) if card else None
        if card is not None and nearest is not None and own is not None and nearest[0] is not own:
            figure = nearest[0]
            slower = ""
            if figure.seconds_per_image and own.seconds_per_image:
                slower = f" and each image took {figure.seconds_per_image / own.seconds_per_image:.0f}× as long"
            text += (
                f": measured at {param('scale', figure.scale)}, its mean Jaccard fell from {own.mean_jaccard:.3f} to "
                f"{figure.mean_jaccard:.3f}{slower} ({card.scale_source or card.source})"
            )
        else:
            text += ": expect wrong masks (a model sees lesions at the scale it learnt them)"
        return render(text + f"; leave {param('scale')} out to use the model's own")

    def card(self) -> Any:
        """The :class:`~skinseg.runtime.card.ModelCard` of this model file, or None."""
        from skinseg.runtime.card import read_card

        if self.model_sha256 is None:
            try:
                self.model_sha256 = hashlib.sha256(self.model_path.read_bytes()).hexdigest()
            except OSError:
                return None
        return read_card(self.model_path, self.model_sha256)

    def __repr__(self) -> str:
        return (
            f"Segmenter({str(self.model_path)!r}, tile={self.tile}, scale={self.scale}, "
            f"layout={self.layout!r}, provider={self.provider!r})"
        )

    # ------------------------------------------------------------------------------------------- inference

    def predict_tiles(self, batch: np.ndarray) -> np.ndarray:
        """Run the model on an ``N×th×tw×3`` RGB batch (float, 0–255); return ``N×th×tw`` float32 in 0–1."""
        n = len(batch)
        y = np.asarray(self.backend.predict(np.ascontiguousarray(batch, dtype=np.float32)))
        if y.ndim == 4 and y.shape[-1] == 1:
            y = y[..., 0]
        if y.shape != (n, *self.tile):
            raise ModelError(
                f"{self.model_path}: the model returns shape {list(y.shape)} for {n} tiles of "
                f"{self.tile[0]}×{self.tile[1]}; a skinseg model returns one probability channel per pixel"
            )
        y = np.clip(y.astype(np.float32, copy=False), 0.0, 1.0)
        return np.nan_to_num(y, copy=False, nan=0.0)  # a NaN pixel is background, not undefined uint8

    def segment(
        self,
        image: np.ndarray,
        on_tile: Callable[[int, int], None] | None = None,
        *,
        full_size: tuple[int, int] | None = None,
        keep_prob: bool = True,
    ) -> Result:
        """Segment an ``H×W×3`` uint8 RGB image (gray and RGBA are accepted). ``on_tile(done, total)`` reports
        progress after each batch of tiles.

        ``full_size`` ``(width, height)``: ``image`` is a reduced decode of a photo of that size (see
        :meth:`decode_factor`); the working scale and the mask follow the photo's size. ``keep_prob`` False leaves
        ``Result.prob`` None: the full-size probabilities are dropped once the mask and its statistics are made
        (what ``skinseg infer`` does unless ``--save-prob``).
        """
        start = time.perf_counter()
        image = _as_rgb(image)
        return self._segment(image, on_tile, start, _Clock(), full_size=full_size, keep_prob=keep_prob)

    def decode_factor(self, width: int, height: int, *, preview: int = DEFAULT_OVERLAY_SIZE) -> int:
        """The JPEG reduced-decode factor (8, 4, 2 or 1) for a ``width × height`` photo: the largest that still
        gives the working scale and ``preview`` px on the long side (by default the overlay's default size,
        :data:`~skinseg.runtime.defaults.DEFAULT_OVERLAY_SIZE`).

        A decode at 1/2 or 1/4 is several times faster than a full one and the model never sees finer detail
        than its working scale; keeping ``preview`` px means a default overlay needs no second decode.
        """
        work_w, work_h = self.work_size(width, height)
        long_side = max(width, height)
        keep = min(preview, long_side) / long_side
        need_w, need_h = max(work_w, width * keep), max(work_h, height * keep)
        for factor in (8, 4, 2):
            if width / factor >= need_w and height / factor >= need_h:
                return factor
        return 1

    def work_size(self, width: int, height: int) -> tuple[int, int]:
        """``(w, h)`` a ``width × height`` photo is segmented at (its scale, tile and the model's setting)."""
        return self.scale.work_size(width, height, self.tile)

    def segment_file(
        self,
        path: str | os.PathLike[str],
        on_tile: Callable[[int, int], None] | None = None,
        *,
        keep_prob: bool = True,
    ) -> Result:
        """Read and segment an image file; the mask has the file's full (EXIF-oriented) size.

        The file is decoded at the reduction :meth:`decode_factor` allows, exactly as ``skinseg infer`` and
        ``skinseg evaluate`` decode it, so the API, the CLI and the published figures agree pixel for pixel.
        Raises :class:`ImageError` for a file that cannot be read.
        """
        start = time.perf_counter()
        clock = _Clock()
        with clock.phase("decode"):
            file = load_image_file(path, max_pixels=self.max_pixels)
            width, height = file.info.width, file.info.height
            image = decode_image(file, reduce=self.decode_factor(width, height))
            del file
        return self._segment(image, on_tile, start, clock, full_size=(width, height), keep_prob=keep_prob)

    def _check_work_size(self, size: tuple[int, int], work: tuple[int, int]) -> None:
        """Refuse an image the scale would blow up (a 1×3000 strip at short side 256 is 196 MP of work)."""
        area, work_area = size[0] * size[1], work[0] * work[1]
        limit = max(4 * area, 4 * self.tile[0] * self.tile[1])
        if work_area > limit or work_area > self.max_pixels:
            raise ImageError(
                f"{size[0]}×{size[1]} px would be segmented at {work[0]}×{work[1]} px (scale {self.scale}), "
                f"{work_area / area:.0f}× its own size; not a dermoscopy photo? Otherwise use a smaller "
                f"{param('scale')}"
            )

    def _segment(
        self,
        image: np.ndarray,
        on_tile: Callable[[int, int], None] | None,
        start: float,
        clock: _Clock,
        *,
        full_size: tuple[int, int] | None = None,
        keep_prob: bool = True,
    ) -> Result:
        width, height = full_size or (image.shape[1], image.shape[0])
        work_size = self.work_size(width, height)
        self._check_work_size((width, height), work_size)
        with clock.phase("resize"):
            if (image.shape[1], image.shape[0]) == work_size:
                work = image
            else:
                shrinking = work_size[0] < image.shape[1]
                work = cv2.resize(image, work_size, interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
        del image  # the caller may still hold it; we need only the working copy
        with clock.phase("preprocess"):
            work = apply_color_constancy(work, **self.color_constancy)
        tile = self._tile_for(work_size)
        tiles = len(plan_tiles(work_size[1], work_size[0], tile, self.overlap))

        def predict(batch: np.ndarray) -> np.ndarray:
            with clock.phase("model"):
                return self.predict_tiles(batch)

        with clock.phase("blend"):
            prob_work = tiled_predict(
                work,
                flip_tta(predict) if self.tta else predict,
                tile=tile,
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
        clock.seconds["blend"] -= clock.seconds["model"]
        with clock.phase("postprocess"):  # at the working scale: the same cost whatever the photo's size
            features = quality_features(
                prob, threshold=self.threshold, keep_largest=self.keep_largest, fill_holes=self.fill_holes
            )
        with clock.phase("resize"):
            if work_size != (width, height):
                prob = cv2.resize(prob, (width, height), interpolation=cv2.INTER_LINEAR)
        with clock.phase("postprocess"):
            mask = pp.threshold(prob, self.threshold)
            if self.keep_largest:
                mask = pp.keep_largest_component(mask)
            if self.fill_holes:
                mask = pp.fill_holes(mask, inplace=True)
            stats = pp.mask_stats(mask, prob)
            stats["quality"] = self.quality.estimate(features) if self.quality is not None else None
            stats["review"] = needs_review(stats["quality"], self.quality.review_below) if self.quality else None
            if not keep_prob:
                prob = None
        return Result(
            mask=mask,
            prob=prob,
            stats=stats,
            provider=self.provider,
            seconds=time.perf_counter() - start,
            scale_factor=work_size[0] / width,
            working_size=work_size,
            tiles=tiles,
            threshold=self.threshold,
            timings=dict(clock.seconds),
            extra={"quality_features": features},
        )

    def _tile_for(self, work_size: tuple[int, int]) -> tuple[int, int]:
        """The tile, capped where it exceeds both the working image (rounded up to 64 px) and the model's own
        tile: ``--tile 4096`` on a 600 px image would cost gigabytes for nothing. The model's tile and a model's
        fixed input size are never changed."""
        own = self.metadata.tile_size if self.metadata is not None else self.tile
        out = []
        for side, work, trained, pinned in zip(
            self.tile, (work_size[1], work_size[0]), own, self.backend.fixed_tile, strict=True
        ):
            cap = max(trained, -(-work // 64) * 64)
            out.append(side if pinned is not None or side <= cap else cap)
        return out[0], out[1]


def _choose(given: bool | None, recommended: bool | None, default: bool) -> bool:
    """An option as given, else the model's recommendation, else the runtime's default."""
    if given is not None:
        return bool(given)
    return bool(recommended) if recommended is not None else default


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
