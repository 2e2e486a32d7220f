"""Tiny stand-in ONNX models for the runtime tests, built with ``onnx.helper`` (no TensorFlow).

``affine_model`` computes ``mask = w · rgb + b`` per pixel (a 1×1 projection of the three channels), so
with the defaults ``w = (1/255, 0, 0)``, ``b = 0`` the output is the red channel scaled to 0–1: an identity
we can check pixel for pixel. ``odd_input_model`` has an arbitrary input shape, to exercise the runtime's
model checks.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from skinseg.runtime.metadata import ModelMetadata, Scale

OPSET = 17
IR_VERSION = 8  # old enough for any onnxruntime the project supports
Dim = int | str


def metadata_json(
    tile: tuple[int, int] = (64, 64),
    scale: Scale | None = None,
    *,
    layout: str = "nhwc",
    threshold: float = 0.5,
    **kwargs: object,
) -> str:
    """A valid ``skinseg`` metadata document."""
    meta = ModelMetadata(tile_size=tile, train_scale=scale or Scale("native"), threshold=threshold, layout=layout)
    text = meta.to_json()
    if kwargs:
        import json

        d = json.loads(text)
        d.update(kwargs)
        text = json.dumps(d)
    return text


def _finish(graph: onnx.GraphProto, metadata: str | None) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="skinseg-tests")
    model.ir_version = IR_VERSION
    if metadata is not None:
        helper.set_model_props(model, {"skinseg": metadata})
    onnx.checker.check_model(model)
    return model


def affine_model(
    *,
    layout: str = "nhwc",
    weights: Sequence[float] = (1 / 255, 0.0, 0.0),
    bias: float = 0.0,
    metadata: str | None = None,
    spatial: tuple[Dim, Dim] = ("H", "W"),
    batch: Dim = "N",
    input_name: str = "image",
    output_name: str = "mask",
) -> onnx.ModelProto:
    """``mask = Σ weights[c]·image[c] + bias`` with a single output channel, NHWC or NCHW."""
    h, w = spatial
    if layout == "nhwc":
        in_shape, out_shape = [batch, h, w, 3], [batch, h, w, 1]
        wt = numpy_helper.from_array(np.asarray(weights, np.float32).reshape(3, 1), "w")
        nodes = [helper.make_node("MatMul", [input_name, "w"], ["proj"])]
    elif layout == "nchw":
        in_shape, out_shape = [batch, 3, h, w], [batch, 1, h, w]
        wt = numpy_helper.from_array(np.asarray(weights, np.float32).reshape(1, 3, 1, 1), "w")
        nodes = [helper.make_node("Conv", [input_name, "w"], ["proj"])]
    else:
        raise ValueError(layout)
    b = numpy_helper.from_array(np.asarray([bias], np.float32), "b")
    nodes.append(helper.make_node("Add", ["proj", "b"], [output_name]))
    graph = helper.make_graph(
        nodes,
        "affine",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, out_shape)],
        initializer=[wt, b],
    )
    return _finish(graph, metadata)


def identity_model(*, layout: str = "nhwc", metadata: str | None = None, **kwargs: object) -> onnx.ModelProto:
    """``mask = red / 255``."""
    return affine_model(layout=layout, metadata=metadata, **kwargs)  # type: ignore[arg-type]


def odd_input_model(shape: Sequence[Dim], *, metadata: str | None = None) -> onnx.ModelProto:
    """A model whose input has an arbitrary ``shape`` (output = input), to test the runtime's input checks."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["image"], ["mask"])],
        "odd",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, list(shape))],
        [helper.make_tensor_value_info("mask", TensorProto.FLOAT, list(shape))],
    )
    return _finish(graph, metadata)


def save(model: onnx.ModelProto, path: str | Path) -> Path:
    path = Path(path)
    onnx.save(model, str(path))
    return path
