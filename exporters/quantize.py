"""Smaller/faster variants of an exported fp32 model: int8 (static QDQ) and float16 weights.

Both read the fp32 model's ``skinseg`` metadata, set ``export_options.quantize`` and write it to the new file,
which is written atomically (temporary file + ``os.replace``). :func:`compare_models` measures what a variant
costs and gains against its fp32 reference.

int8 defaults follow onnxruntime's guidance for x86-64 CPUs with VNNI (``quantize_static`` docstring, ORT
1.32): QDQ format, QUInt8 (asymmetric) activations, QInt8 per-channel weights, ``reduce_range=False``. On a
CPU without VNNI pass ``reduce_range=True``; on ARM, ``activation_type="qint8"``.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from skinseg.exporters import graph
from skinseg.exporters.keras_to_onnx import (
    as_image_batch,
    atomic_output,
    check_output_path,
    onnx_predict,
    onnx_session,
    save_model,
)
from skinseg.runtime.defaults import DEFAULT_THRESHOLD
from skinseg.runtime.errors import ModelError, UsageError
from skinseg.runtime.metadata import METADATA_KEY, ModelMetadata, parse_metadata
from skinseg.runtime.metrics import mask_iou

QUANT_TYPES = ("quint8", "qint8")


def read_metadata(model: onnx.ModelProto, source: str) -> ModelMetadata:
    """The model's skinseg metadata; ModelError naming ``source`` if absent or invalid."""
    text = graph.get_metadata(model, METADATA_KEY)
    if text is None:
        raise ModelError(f"{source}: no '{METADATA_KEY}' metadata; export it with `skinseg export` first")
    return parse_metadata(text, source=source)


def load_onnx(path: str | os.PathLike[str]) -> onnx.ModelProto:
    """Load an ONNX file; ModelError naming it when missing or not ONNX."""
    source = Path(path)
    if not source.is_file():
        raise ModelError(f"{source}: ONNX file not found; check the path")
    try:
        return onnx.load(os.fspath(source))
    except Exception as e:  # protobuf DecodeError and friends
        raise ModelError(f"{source}: not a readable ONNX file ({type(e).__name__}); re-export the model") from None


def _write_with_metadata(model: onnx.ModelProto, out: Path, metadata: ModelMetadata, quantize: dict[str, Any]) -> None:
    options = {**metadata.export_options, "quantize": quantize}
    graph.set_metadata(model, METADATA_KEY, dataclasses.replace(metadata, export_options=options).to_json())
    with atomic_output(out) as tmp:
        save_model(model, tmp)
        onnx.checker.check_model(os.fspath(tmp))


class ImageCalibrationReader:
    """onnxruntime ``CalibrationDataReader``: one image (NHWC float32 0–255) per ``get_next`` call."""

    def __init__(self, images: Sequence[np.ndarray], *, input_name: str, layout: str) -> None:
        self._batches = [as_image_batch(image, "calibration_images") for image in images]
        self._input_name, self._layout = input_name, layout
        self._iter: Iterator[np.ndarray] = iter(self._batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._iter, None)
        if batch is None:
            return None
        feed = batch.transpose(0, 3, 1, 2) if self._layout == "nchw" else batch
        return {self._input_name: np.ascontiguousarray(feed)}

    def rewind(self) -> None:
        self._iter = iter(self._batches)


def _quant_type(name: str) -> Any:
    from onnxruntime.quantization import QuantType

    value = str(name).lower()
    if value not in QUANT_TYPES:
        raise UsageError(f"quantization type {name!r} is not supported: use one of {', '.join(QUANT_TYPES)}")
    return QuantType.QUInt8 if value == "quint8" else QuantType.QInt8


def quantize_int8(
    fp32_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    calibration_images: Sequence[np.ndarray],
    *,
    activation_type: str = "quint8",
    weight_type: str = "qint8",
    per_channel: bool = True,
    reduce_range: bool = False,
    preprocess: bool = True,
) -> Path:
    """Static QDQ int8 quantization of ``fp32_path`` calibrated (MinMax) on ``calibration_images``.

    ``calibration_images`` are ``H×W×3`` RGB arrays in [0, 255] (ideally a few dozen training tiles at the
    tile size). ``preprocess`` runs ``quant_pre_process`` (shape inference + graph optimisation) first.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    src, out = Path(fp32_path), check_output_path(out_path)
    if not calibration_images:
        raise UsageError("calibration_images: give at least one RGB image (a few dozen tiles is typical)")
    metadata = read_metadata(load_onnx(src), str(src))
    act, weight = _quant_type(activation_type), _quant_type(weight_type)
    reader = ImageCalibrationReader(calibration_images, input_name=metadata.input_name, layout=metadata.layout)
    with tempfile.TemporaryDirectory(prefix="skinseg-quant-") as work:
        source = src
        if preprocess:
            source = Path(work, "pre.onnx")
            quant_pre_process(os.fspath(src), os.fspath(source), skip_symbolic_shape=True)
        quantized = Path(work, "int8.onnx")
        quantize_static(
            os.fspath(source),
            os.fspath(quantized),
            reader,
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel,
            reduce_range=reduce_range,
            activation_type=act,
            weight_type=weight,
            calibrate_method=CalibrationMethod.MinMax,
        )
        model = onnx.load(os.fspath(quantized))
    settings = {
        "type": "int8",
        "activations": str(activation_type).lower(),
        "weights": str(weight_type).lower(),
        "per_channel": per_channel,
        "reduce_range": reduce_range,
        "calibration_images": len(calibration_images),
    }
    _write_with_metadata(model, out, metadata, settings)
    return out


def convert_fp16(fp32_path: str | os.PathLike[str], out_path: str | os.PathLike[str]) -> Path:
    """float16 weights and compute, float32 ``image`` input and ``mask`` output (Cast nodes at the edges).

    Uses ``onnxruntime.transformers.float16.convert_float_to_float16(keep_io_types=True)``, which ships
    inside onnxruntime (onnxconverter-common is not needed). Mainly useful to halve the file size; CPU
    execution providers run most fp16 ops by casting back to fp32, so it is rarely faster on CPU.
    """
    from onnxruntime.transformers.float16 import convert_float_to_float16

    src, out = Path(fp32_path), check_output_path(out_path)
    model = load_onnx(src)
    metadata = read_metadata(model, str(src))
    half = convert_float_to_float16(model, keep_io_types=True)
    graph.topological_sort(half)  # the converter appends its input Casts at the end of the node list
    _write_with_metadata(half, out, metadata, {"type": "fp16"})
    return out


def _timed_predict(path: Path, images: np.ndarray) -> tuple[np.ndarray, float]:
    """Outputs (NHWC) and seconds per image, one image per run after one warm-up run."""
    session = onnx_session(path)
    layout = read_metadata(load_onnx(path), str(path)).layout
    onnx_predict(session, images[:1], layout)
    outputs, start = [], time.perf_counter()
    for image in images:
        outputs.append(onnx_predict(session, image[None], layout))
    return np.concatenate(outputs), (time.perf_counter() - start) / len(images)


def compare_models(
    ref_path: str | os.PathLike[str],
    cand_path: str | os.PathLike[str],
    images: np.ndarray | Sequence[np.ndarray],
    threshold: float = DEFAULT_THRESHOLD,
) -> dict[str, float]:
    """Compare a candidate (int8/fp16) with its reference (fp32) on the same NHWC RGB 0–255 images.

    Returns ``ref_size_mb``, ``cand_size_mb``, ``ref_seconds_per_image``, ``cand_seconds_per_image``,
    ``speedup`` (reference time / candidate time), ``mean_iou`` of the masks at ``threshold`` and
    ``max_abs_diff`` of the probabilities.
    """
    ref, cand = Path(ref_path), Path(cand_path)
    batch = as_image_batch(np.stack(list(images)) if isinstance(images, (list, tuple)) else images, "images")
    ref_out, ref_s = _timed_predict(ref, batch)
    cand_out, cand_s = _timed_predict(cand, batch)
    if ref_out.shape != cand_out.shape:
        raise ModelError(f"{cand}: output shape {cand_out.shape} differs from {ref}'s {ref_out.shape}")
    ious = [mask_iou(r > threshold, c > threshold) for r, c in zip(ref_out, cand_out, strict=True)]
    return {
        "ref_size_mb": ref.stat().st_size / 1e6,
        "cand_size_mb": cand.stat().st_size / 1e6,
        "ref_seconds_per_image": ref_s,
        "cand_seconds_per_image": cand_s,
        "speedup": ref_s / cand_s if cand_s > 0 else float("inf"),
        "mean_iou": float(np.mean(ious)),
        "max_abs_diff": float(np.max(np.abs(ref_out.astype(np.float64) - cand_out.astype(np.float64)))),
    }
