"""Check that an ONNX file is a usable skinseg model; every problem is a finding, never a traceback.

>>> for finding in check_model("model.onnx"):
...     print(finding)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from skinseg.exporters import graph
from skinseg.exporters.keras_to_onnx import onnx_session
from skinseg.runtime.errors import ModelError
from skinseg.runtime.metadata import METADATA_KEY, ModelMetadata, parse_metadata

LEVELS = ("ok", "warn", "error")
DEFAULT_TILE = (256, 256)


@dataclass(frozen=True)
class Finding:
    """One line of a model check: ``level`` is ``ok``, ``warn`` or ``error``."""

    level: str
    message: str

    def __str__(self) -> str:
        return f"{self.level.upper():<5} {self.message}"


def _ok(message: str) -> Finding:
    return Finding("ok", message)


def _warn(message: str) -> Finding:
    return Finding("warn", message)


def _error(message: str) -> Finding:
    return Finding("error", message)


def _load(path: Path) -> tuple[onnx.ModelProto | None, Finding]:
    if not path.is_file():
        return None, _error(f"{path}: file not found")
    try:
        model = onnx.load(os.fspath(path))
    except Exception as e:  # DecodeError, truncated files, random bytes
        if path.suffix.lower() in (".keras", ".h5"):
            return None, _error(f"{path}: a Keras model, not ONNX; export it first (skinseg export RUN_DIR)")
        return None, _error(f"{path}: not a readable ONNX file ({type(e).__name__}); re-export the model")
    if not model.graph.node:
        return None, _error(f"{path}: the ONNX graph is empty (truncated or not an ONNX model); re-export the model")
    return model, _ok(f"{path}: ONNX IR {model.ir_version}, opset {_opset(model)}, {len(model.graph.node)} nodes")


def _opset(model: onnx.ModelProto) -> int | None:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


def _checker(path: Path) -> Finding:
    try:
        onnx.checker.check_model(os.fspath(path))
    except Exception as e:  # ValidationError and protobuf errors
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return _error(f"{path}: onnx.checker rejects the model ({first_line}); re-export it")
    return _ok(f"{path}: onnx.checker passes")


def _metadata(model: onnx.ModelProto, path: Path) -> tuple[ModelMetadata | None, Finding]:
    text = graph.get_metadata(model, METADATA_KEY)
    if text is None:
        return None, _error(f"{path}: no '{METADATA_KEY}' metadata; export the model with `skinseg export`")
    try:
        meta = parse_metadata(text, source=str(path))
    except ModelError as e:
        return None, _error(str(e))
    quantize = meta.export_options.get("quantize", "none")
    quantize = quantize.get("type") if isinstance(quantize, dict) else quantize
    return meta, _ok(
        f"{path}: metadata: tile {meta.tile_size[0]}×{meta.tile_size[1]}, layout {meta.layout}, "
        f"threshold {meta.threshold:g}, quantize {quantize}"
    )


def _dims(info: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in info.type.tensor_type.shape.dim]


def _io(model: onnx.ModelProto, meta: ModelMetadata | None, path: Path) -> list[Finding]:
    inputs = [i for i in model.graph.input if i.name not in {init.name for init in model.graph.initializer}]
    if len(inputs) != 1 or len(model.graph.output) != 1:
        return [_error(f"{path}: expected one input and one output, found {len(inputs)} and {len(model.graph.output)}")]
    image = inputs[0]
    dims, layout = _dims(image), meta.layout if meta else "nhwc"
    channel_axis = 1 if layout == "nchw" else 3
    findings = []
    if image.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
        findings.append(_error(f"{path}: input '{image.name}' must be float32 RGB 0–255; re-export the model"))
    if len(dims) != 4 or dims[channel_axis] != 3:
        findings.append(
            _error(f"{path}: input '{image.name}' must be a 4-D {layout.upper()} 3-channel image, is {dims}")
        )
    if meta and image.name != meta.input_name:
        findings.append(_error(f"{path}: input is named '{image.name}' but the metadata says '{meta.input_name}'"))
    if not findings:
        findings.append(
            _ok(
                f"{path}: input '{image.name}' {dims}, "
                f"output '{model.graph.output[0].name}' {_dims(model.graph.output[0])}"
            )
        )
    leftovers = graph.dilation_chain_ops(model)
    if leftovers:
        findings.append(
            _warn(
                f"{path}: {len(leftovers)} SpaceToDepth/DepthToSpace nodes (slow dilated convolutions); "
                "re-export with this skinseg"
            )
        )
    return findings


def _run(path: Path, meta: ModelMetadata | None) -> Finding:
    height, width = meta.tile_size if meta else DEFAULT_TILE
    layout = meta.layout if meta else "nhwc"
    classes = len(meta.class_names) if meta else 1
    image = np.random.default_rng(0).uniform(0, 255, size=(1, height, width, 3)).astype(np.float32)
    feed = image.transpose(0, 3, 1, 2) if layout == "nchw" else image
    try:
        session = onnx_session(path)
        out = np.asarray(session.run(None, {session.get_inputs()[0].name: np.ascontiguousarray(feed)})[0])
    except Exception as e:  # onnxruntime raises its own exception types
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return _error(f"{path}: onnxruntime cannot run the model on a {height}×{width} image ({first_line})")
    expected = (1, classes, height, width) if layout == "nchw" else (1, height, width, classes)
    if out.shape != expected:
        return _error(f"{path}: a {height}×{width} image gives output shape {out.shape}, expected {expected}")
    if not np.all(np.isfinite(out)) or out.min() < 0.0 or out.max() > 1.0:
        return _error(
            f"{path}: output values span [{out.min():.3g}, {out.max():.3g}], expected probabilities in [0, 1]"
        )
    return _ok(
        f"{path}: onnxruntime run on a {height}×{width} image: output {out.shape} in [{out.min():.3f}, {out.max():.3f}]"
    )


def check_model(path: str | os.PathLike[str]) -> list[Finding]:
    """Check an ONNX file: loadable, onnx.checker, skinseg metadata, image input, a dummy run."""
    source = Path(path)
    model, loaded = _load(source)
    if model is None:
        return [loaded]
    findings = [loaded, _checker(source)]
    meta, meta_finding = _metadata(model, source)
    findings.append(meta_finding)
    io_findings = _io(model, meta, source)
    findings.extend(io_findings)
    if not has_errors(io_findings):  # a model with the wrong input would only add onnxruntime's raw complaint
        findings.append(_run(source, meta))
    return findings


def has_errors(findings: list[Finding]) -> bool:
    """Whether any finding is an error."""
    return any(f.level == "error" for f in findings)
