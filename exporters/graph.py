"""ONNX graph clean-up for exported skinseg models.

Three kinds of passes live here:

- :func:`rewrite_dilated_convs` is a *tf2onnx custom rewriter* (it runs on tf2onnx's TensorFlow-level graph,
  before ops are lowered to ONNX). TensorFlow implements a dilated ``padding="same"`` convolution as
  ``SpaceToBatchND -> Conv2D(VALID) -> BatchToSpaceND`` whose paddings are computed from the input's runtime
  shape. tf2onnx's own ``rewrite_conv_dilations`` folds that chain only when the paddings are constants
  (static H/W) or the padding is VALID, so with dynamic H/W every dilated convolution would otherwise come
  out as a ``SpaceToDepth/Pad/Conv/DepthToSpace`` chain plus a shape sub-graph. For a stride-1 convolution the
  "same" padding does not depend on the input size, so the chain is exactly one ``Conv`` with ``dilations``
  and constant explicit ``pads``.
- :func:`split_weights` and :func:`restore_weights` keep a frozen ``GraphDef``'s weights out of grappler's
  constant folding (tf2onnx's first step), which otherwise holds several copies of every weight.
- The other functions work on an ``onnx.ModelProto`` after conversion (no TensorFlow needed): readable
  dynamic dimension names, folding the input ``Rescaling`` into the first convolution(s), op counts and an
  optional onnxslim pass.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

# Op types that betray an un-rewritten dilated convolution.
DILATION_CHAIN_OPS = frozenset({"SpaceToDepth", "DepthToSpace", "SpaceToBatchND", "BatchToSpaceND"})
DIM_NAMES = ("batch", "height", "width")


# --------------------------------------------------------------------------------------------------------
# tf2onnx rewriter (TensorFlow-level graph)
# --------------------------------------------------------------------------------------------------------


def _dilated_conv_pattern() -> Any:
    from tf2onnx.graph_matcher import OpTypePattern

    space_to_batch = OpTypePattern("SpaceToBatchND", name="s2b", inputs=["*", "Const|ConstV2", "*"])
    conv = OpTypePattern("Conv2D|DepthwiseConv2dNative", name="conv", inputs=[space_to_batch, "*"])
    return OpTypePattern("BatchToSpaceND", name="b2s", inputs=[conv, "Const|ConstV2", "*"])


def _const_starts(pairs: Any) -> list[int] | None:
    """``[s_h, s_w]`` from a ``Pack([Pack([s_h, e_h]), Pack([s_w, e_w])])`` whose starts are constants."""
    if pairs.type != "Pack":
        return None
    starts = []
    for row in pairs.inputs:
        if row.type != "Pack" or len(row.inputs) != 2 or not row.inputs[0].is_const():
            return None
        starts.append(int(row.inputs[0].get_tensor_value()))
    return starts


def _base_ends(pairs: Any) -> list[int] | None:
    """The shape-independent part of each pad end: ``end_i = StridedSlice(Add(const, FloorMod(...)), i)``."""
    ends = []
    for index, row in enumerate(pairs.inputs):
        node = row.inputs[1]
        if node.type != "StridedSlice" or node.inputs[1].get_tensor_value() != [index]:
            return None
        add = node.inputs[0]
        if add.type not in ("Add", "AddV2"):
            return None
        consts = [i for i in add.inputs if i.is_const()]
        if len(consts) != 1 or not any(i.type == "FloorMod" for i in add.inputs):
            return None
        ends.append(int(np.asarray(consts[0].get_tensor_value())[index]))
    return ends


def rewrite_dilated_convs(g: Any, ops: list[Any]) -> list[Any]:
    """tf2onnx custom rewriter: ``SpaceToBatchND -> Conv2D -> BatchToSpaceND`` with runtime-shaped paddings
    (a stride-1 dilated convolution) -> one ``Conv2D`` with ``dilations`` and explicit paddings.

    Pass it as ``custom_rewriter=[rewrite_dilated_convs]``; chains it cannot prove equivalent are left alone.
    """
    from tf2onnx.graph_matcher import GraphMatcher

    for match in list(GraphMatcher(_dilated_conv_pattern(), allow_reorder=False).match_ops(ops)):
        s2b, conv, b2s = match.get_op("s2b"), match.get_op("conv"), match.get_op("b2s")
        block = s2b.inputs[1].get_tensor_value()
        if (
            block != b2s.inputs[1].get_tensor_value()
            or len(block) != 2
            or conv.get_attr_value("padding") != b"VALID"
            or conv.get_attr_value("data_format", b"NHWC") != b"NHWC"
            or list(conv.get_attr_value("strides")) != [1, 1, 1, 1]
            or list(conv.get_attr_value("dilations", [1, 1, 1, 1])) != [1, 1, 1, 1]
            or s2b.inputs[2].is_const()  # constant paddings: tf2onnx's own rewriter already handles them
        ):
            continue
        starts, ends = _const_starts(s2b.inputs[2]), _base_ends(s2b.inputs[2])
        # BatchToSpaceND crops only the runtime "round up to a multiple of the block" extra, at the end.
        if starts is None or ends is None or _const_starts(b2s.inputs[2]) != [0, 0]:
            continue
        g.replace_inputs(conv, [s2b.input[0], conv.input[1]])
        g.copy_shape(b2s.output[0], conv.output[0])
        g.replace_all_inputs(b2s.output[0], conv.output[0])
        conv.set_attr("dilations", [1, *block, 1])
        conv.set_attr("padding", "EXPLICIT")
        conv.set_attr("explicit_paddings", [0, 0, starts[0], ends[0], starts[1], ends[1], 0, 0])
    return g.get_nodes()


# --------------------------------------------------------------------------------------------------------
# Frozen TensorFlow graph: the weights kept out of grappler
# --------------------------------------------------------------------------------------------------------


def _data_inputs(node: Any) -> list[str]:
    """Names of the nodes whose outputs ``node`` reads (control inputs ``^name`` left out)."""
    return [name.split(":")[0] for name in node.input if not name.startswith("^")]


def _constant_nodes(graph_def: Any) -> set[str]:
    """Names of the nodes grappler's constant folding could evaluate: ``Const`` and every node with data inputs
    that all come from such nodes (an over-estimate is safe: it only keeps more weights in)."""
    inputs = {node.name: _data_inputs(node) for node in graph_def.node}
    consumers: dict[str, list[str]] = {}
    for name, sources in inputs.items():
        for source in sources:
            consumers.setdefault(source, []).append(name)
    constant = {node.name for node in graph_def.node if node.op == "Const"}
    work = list(constant)
    while work:
        for name in consumers.get(work.pop(), []):
            if name not in constant and all(source in constant for source in inputs[name]):
                constant.add(name)
                work.append(name)
    return constant


def split_weights(graph_def: Any, min_bytes: int) -> tuple[Any, dict[str, Any]]:
    """``(skeleton, weights)``: a copy of a frozen TensorFlow ``GraphDef`` without its weights, and the weights'
    ``Const`` nodes (they stay in ``graph_def``) by the name of the stub that stands for them.

    A weight is a ``Const`` of at least ``min_bytes`` whose value reaches no computation on constants, only
    ``Identity`` nodes (a frozen variable read) before ops that also read the image. Grappler's constant folding
    would fold nothing of it but those identities, each into a ``Const`` of the same value named as the
    identity; the skeleton has that already, with a ``Placeholder`` of the value's dtype and shape in place of
    each such ``Const``. So folding the skeleton and :func:`restore_weights` give the graph that folding the
    whole graph gives, without grappler's copies of every weight (the seed's 31 M-parameter network: about
    1.3 GB). Constants that feed computations on constants (a transposed or cast kernel, batch-norm statistics)
    stay in and are folded as before.
    """
    nodes = {node.name: node for node in graph_def.node}
    readers: dict[str, list[str]] = {}  # data and control
    for node in graph_def.node:
        for name in node.input:
            readers.setdefault(name.lstrip("^").split(":")[0], []).append(node.name)
    constant = _constant_nodes(graph_def)

    def read_chain(name: str) -> list[str] | None:
        """``name`` and the identities its value passes through; None if it reaches another constant op."""
        chain, stack = [name], [name]
        while stack:
            for reader in readers.get(stack.pop(), []):
                if reader not in constant or reader in chain:
                    continue
                if nodes[reader].op != "Identity" or len(nodes[reader].input) != 1:
                    return None
                chain.append(reader)
                stack.append(reader)
        return chain

    weights: dict[str, Any] = {}
    dropped: set[str] = set()
    for node in graph_def.node:
        if node.op != "Const" or len(node.attr["value"].tensor.tensor_content) < min_bytes:
            continue
        chain = read_chain(node.name)
        if chain is None:
            continue
        for name in chain:  # a stub where the value leaves the chain (or nothing reads it), the rest dropped
            outside = [r for r in readers.get(name, []) if r not in chain]
            if outside or not readers.get(name):
                weights[name] = node
            else:
                dropped.add(name)

    skeleton = type(graph_def)()
    for field, value in graph_def.ListFields():  # all but the nodes: versions, function library, debug info
        if field.name == "node":
            continue
        if field.message_type is None:
            setattr(skeleton, field.name, value)
        else:
            getattr(skeleton, field.name).CopyFrom(value)
    for node in graph_def.node:
        if node.name in dropped:
            continue
        if node.name not in weights:
            skeleton.node.add().CopyFrom(node)
            continue
        tensor = weights[node.name].attr["value"].tensor
        stub = skeleton.node.add(name=node.name, op="Placeholder", device=node.device)
        stub.attr["dtype"].type = tensor.dtype
        stub.attr["shape"].shape.CopyFrom(tensor.tensor_shape)
    return skeleton, weights


def restore_weights(graph_def: Any, weights: dict[str, Any]) -> Any:
    """Replace the stubs of :func:`split_weights` with ``Const`` nodes of their weights, in place; returns
    ``graph_def``. Stubs the optimizer removed (unused weights) stay removed."""
    for node in graph_def.node:
        if node.op == "Placeholder" and node.name in weights:
            name = node.name
            node.CopyFrom(weights[name])
            node.name = name
    return graph_def


# --------------------------------------------------------------------------------------------------------
# ONNX-level passes
# --------------------------------------------------------------------------------------------------------


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    """How many nodes of each op type the main graph has."""
    return dict(Counter(node.op_type for node in model.graph.node))


def dilation_chain_ops(model: onnx.ModelProto) -> list[str]:
    """Names of nodes left from a dilated convolution that was not rewritten (should be empty)."""
    return [f"{n.op_type} {n.name}" for n in model.graph.node if n.op_type in DILATION_CHAIN_OPS]


def _set_dims(value_info: onnx.ValueInfoProto, dims: list[str | int]) -> dict[str, str]:
    """Set a tensor's dims; return ``{old dim_param: new name}`` for the renamed symbolic ones."""
    shape = value_info.type.tensor_type.shape
    renamed: dict[str, str] = {}
    old = list(shape.dim)
    del shape.dim[:]
    for i, dim in enumerate(dims):
        new = shape.dim.add()
        if isinstance(dim, int):
            new.dim_value = dim
        else:
            new.dim_param = dim
            if i < len(old) and old[i].dim_param:
                renamed[old[i].dim_param] = dim
    return renamed


def name_dynamic_dims(model: onnx.ModelProto, *, layout: str, in_channels: int = 3, out_channels: int = 1) -> None:
    """Give the single input and output readable dims (``batch``, ``height``, ``width``), in place.

    The output of a segmentation model has the input's height and width. Intermediate ``value_info`` entries
    that reused tf2onnx's ``unk__N`` names are renamed consistently.
    """
    batch, height, width = DIM_NAMES

    def dims(channels: int) -> list[str | int]:
        return [batch, channels, height, width] if layout == "nchw" else [batch, height, width, channels]

    renamed = _set_dims(model.graph.input[0], dims(in_channels))
    renamed.update(_set_dims(model.graph.output[0], dims(out_channels)))
    for info in model.graph.value_info:
        for dim in info.type.tensor_type.shape.dim:
            if dim.dim_param in renamed:
                dim.dim_param = renamed[dim.dim_param]


def _consumers(model: onnx.ModelProto, tensor: str) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if tensor in n.input]


def _scalar_initializer(model: onnx.ModelProto, name: str) -> float | None:
    for init in model.graph.initializer:
        if init.name == name:
            value = numpy_helper.to_array(init)
            return float(value.reshape(-1)[0]) if value.size == 1 else None
    return None


def _rescale_prefix(model: onnx.ModelProto) -> tuple[list[onnx.NodeProto], float] | None:
    """``image -> Mul(scalar) [-> Add(0)]`` at the graph input: the nodes and the scale, or None."""
    source = model.graph.input[0].name
    first = _consumers(model, source)
    if len(first) != 1 or first[0].op_type != "Mul":
        return None
    mul = first[0]
    other = mul.input[1] if mul.input[0] == source else mul.input[0]
    scale = _scalar_initializer(model, other)
    if scale is None:
        return None
    nodes = [mul]
    after = _consumers(model, mul.output[0])
    if len(after) == 1 and after[0].op_type == "Add":
        add = after[0]
        offset = _scalar_initializer(model, add.input[1] if add.input[0] == mul.output[0] else add.input[0])
        if offset != 0.0:
            return None  # a non-zero offset cannot be folded exactly through zero padding
        nodes.append(add)
    return nodes, scale


def _scale_conv_weights(model: onnx.ModelProto, conv: onnx.NodeProto, scale: float) -> None:
    """Point ``conv`` at a private ``scale * W`` copy of its weight initializer."""
    weight = next(init for init in model.graph.initializer if init.name == conv.input[1])
    scaled = numpy_helper.to_array(weight) * np.asarray(scale, dtype=np.float32)
    name = f"{weight.name}__rescaled_{conv.name}"
    model.graph.initializer.append(numpy_helper.from_array(scaled.astype(np.float32), name))
    conv.input[1] = name


def fold_input_rescaling(model: onnx.ModelProto) -> bool:
    """Fold Keras ``Rescaling(scale)`` (``Mul`` by a scalar, ``Add`` of 0) into the convolutions it feeds.

    Exact because ``Conv(s * x) == s * Conv(x)`` with zero padding. Applies only when every consumer is a
    ``Conv`` reading it as data input (optionally through a ``Transpose``). Returns whether the graph
    changed.
    With ``layout="nchw"`` this makes the first node a ``Conv`` that reads the input directly.
    """
    prefix = _rescale_prefix(model)
    if prefix is None:
        return False
    nodes, scale = prefix
    source, rescaled = model.graph.input[0].name, nodes[-1].output[0]
    convs: list[onnx.NodeProto] = []
    for node in _consumers(model, rescaled):
        if node.op_type == "Conv" and node.input[0] == rescaled:
            convs.append(node)
            continue
        targets = _consumers(model, node.output[0]) if node.op_type == "Transpose" else []
        if not targets or any(t.op_type != "Conv" or t.input[0] != node.output[0] for t in targets):
            return False
        convs.extend(targets)
    initializers = {init.name for init in model.graph.initializer}
    if not convs or any(conv.input[1] not in initializers for conv in convs):
        return False
    for conv in convs:
        _scale_conv_weights(model, conv, scale)
    for node in _consumers(model, rescaled):
        for i, name in enumerate(node.input):
            if name == rescaled:
                node.input[i] = source
    for node in nodes:
        model.graph.node.remove(node)
    _drop_unused_initializers(model)
    return True


def _drop_unused_initializers(model: onnx.ModelProto) -> None:
    used = {name for node in model.graph.node for name in node.input}
    keep = [init for init in model.graph.initializer if init.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)


def slim(model: onnx.ModelProto) -> onnx.ModelProto:
    """Run onnxslim (constant folding, dead-code and shape-chain simplification), keeping metadata."""
    import onnxslim

    props = [(p.key, p.value) for p in model.metadata_props]
    slimmed = onnxslim.slim(model)
    del slimmed.metadata_props[:]
    for key, value in props:
        slimmed.metadata_props.add(key=key, value=value)
    return slimmed


def set_metadata(model: onnx.ModelProto, key: str, value: str) -> None:
    """Set (replace) one ``metadata_props`` entry, in place."""
    for prop in model.metadata_props:
        if prop.key == key:
            prop.value = value
            return
    model.metadata_props.add(key=key, value=value)


def get_metadata(model: onnx.ModelProto, key: str) -> str | None:
    """One ``metadata_props`` value, or None."""
    return next((p.value for p in model.metadata_props if p.key == key), None)


def topological_sort(model: onnx.ModelProto) -> None:
    """Reorder the main graph's nodes so every node follows its producers (ONNX requires it), in place."""
    nodes = list(model.graph.node)
    producer = {out: i for i, node in enumerate(nodes) for out in node.output if out}
    placed: set[int] = set()
    order: list[int] = []

    def place(index: int) -> None:
        stack = [(index, False)]
        while stack:
            i, expanded = stack.pop()
            if i in placed:
                continue
            if expanded:
                placed.add(i)
                order.append(i)
                continue
            stack.append((i, True))
            stack.extend(
                (producer[name], False) for name in nodes[i].input if name in producer and producer[name] not in placed
            )

    for i in range(len(nodes)):
        place(i)
    del model.graph.node[:]
    model.graph.node.extend(nodes[i] for i in order)
