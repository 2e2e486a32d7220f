"""Keras → ONNX export, graph clean-up, int8/fp16 variants and model checks.

One tiny UNet-like model (64×64 tiles, 4 filters, dilated convs, BN, dropout), briefly fitted on synthetic
"bright disk" images so its masks mean something, is exported once per variant (module-scoped fixtures).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from skinseg.exporters import graph  # noqa: E402
from skinseg.exporters.check import check_model, has_errors  # noqa: E402
from skinseg.exporters.keras_to_onnx import check_opset, export_onnx, max_supported_opset  # noqa: E402
from skinseg.exporters.quantize import compare_models, convert_fp16, mask_iou, quantize_int8  # noqa: E402
from skinseg.runtime.errors import ModelError, UsageError  # noqa: E402
from skinseg.runtime.metadata import METADATA_KEY, ModelMetadata, Scale, parse_metadata  # noqa: E402

TILE = (64, 64)
INT8_MIN_IOU = 0.9  # mean mask IoU of int8 vs fp32 at threshold 0.5 on the tiny model
FP16_MAX_DIFF = 2e-2  # max abs probability difference of fp16 vs fp32


def _disks(count: int, seed: int, size: tuple[int, int] = TILE) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic dermoscopy stand-ins: a bright disk (the "lesion") on a noisy dark background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: size[0], : size[1]]
    images = rng.uniform(0, 60, size=(count, *size, 3)).astype(np.float32)
    masks = np.zeros((count, *size, 1), np.float32)
    for i in range(count):
        cy, cx = rng.uniform(0.3, 0.7) * size[0], rng.uniform(0.3, 0.7) * size[1]
        r = rng.uniform(0.12, 0.25) * min(size)
        disk = (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
        images[i][disk] += rng.uniform(120, 190)
        masks[i][disk] = 1.0
    return np.clip(images, 0, 255), masks


def _tiny_unet(filters: int = 4) -> keras.Model:
    layers = keras.layers
    image = keras.Input((None, None, 3), name="image")
    x = layers.Rescaling(1 / 255)(image)
    c1 = layers.Conv2D(filters, 5, padding="same", dilation_rate=2, use_bias=False)(x)
    c1 = layers.Activation("relu")(layers.BatchNormalization()(c1))
    c1 = layers.Dropout(0.1)(c1)
    c2 = layers.Conv2D(2 * filters, 5, padding="same", dilation_rate=2, activation="relu")(layers.MaxPooling2D()(c1))
    up = layers.Conv2DTranspose(filters, 2, strides=2, padding="same")(c2)
    x = layers.Conv2D(filters, 3, padding="same", activation="relu")(layers.concatenate([up, c1]))
    mask = layers.Conv2D(1, 1, activation="sigmoid", name="mask")(x)
    return keras.Model(image, mask)


@pytest.fixture(scope="module")
def model() -> keras.Model:
    keras.utils.set_random_seed(0)
    net = _tiny_unet()
    images, masks = _disks(32, seed=1)
    net.compile(optimizer=keras.optimizers.Adam(0.01), loss="binary_crossentropy")
    net.fit(images, masks, batch_size=8, epochs=20, verbose=0)
    return net


@pytest.fixture(scope="module")
def metadata() -> ModelMetadata:
    return ModelMetadata(tile_size=TILE, train_scale=Scale("native"), skinseg_version="test")


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("export")


@pytest.fixture(scope="module")
def nhwc(model, metadata, out_dir):
    path = out_dir / "model.onnx"
    return path, export_onnx(model, path, metadata=metadata, check_inputs=_disks(2, seed=2)[0])


@pytest.fixture(scope="module")
def nchw(model, metadata, out_dir):
    path = out_dir / "model_nchw.onnx"
    return path, export_onnx(model, path, metadata=metadata, layout="nchw")


@pytest.fixture(scope="module")
def int8_path(nhwc, out_dir) -> Path:
    return quantize_int8(nhwc[0], out_dir / "model_int8.onnx", list(_disks(8, seed=3)[0]))


@pytest.fixture(scope="module")
def fp16_path(nhwc, out_dir) -> Path:
    return convert_fp16(nhwc[0], out_dir / "model_fp16.onnx")


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])


def _keras(model: keras.Model, images: np.ndarray) -> np.ndarray:
    return np.asarray(model(images, training=False))


@pytest.mark.train
def test_fp32_parity_within_1e4(nhwc):
    path, report = nhwc
    assert path.is_file() and report.path == path
    assert report.max_abs_diff <= 1e-4
    assert report.check_shape == (2, *TILE, 3)
    assert report.size_bytes == path.stat().st_size
    assert not report.warnings
    probabilities = np.asarray(onnx_out := _session(path).run(None, {"image": _disks(1, seed=2)[0]})[0])
    assert probabilities.min() >= 0.0 and probabilities.max() <= 1.0 and onnx_out.shape == (1, *TILE, 1)


@pytest.mark.train
def test_metadata_round_trip(nhwc, model, metadata):
    path, report = nhwc
    text = _session(path).get_modelmeta().custom_metadata_map[METADATA_KEY]
    meta = parse_metadata(text, source=str(path))
    assert meta.tile_size == TILE and meta.layout == "nhwc" and meta.skinseg_version == "test"
    assert meta.export_options["opset"] == 17
    assert meta.export_options["layout"] == "nhwc"
    assert meta.export_options["quantize"] == "none"
    assert len(meta.source_model_sha256) == 64 and meta.source_model_sha256 == report.source_model_sha256


@pytest.mark.train
def test_export_from_keras_file_hashes_the_file(model, metadata, tmp_path):
    source = tmp_path / "model.keras"
    model.save(source)
    report = export_onnx(source, tmp_path / "m.onnx", metadata=metadata)
    assert report.source_model_sha256 == hashlib.sha256(source.read_bytes()).hexdigest()
    assert report.max_abs_diff <= 1e-4


@pytest.mark.train
@pytest.mark.parametrize(("batch", "height", "width"), [(1, 64, 64), (3, 96, 128)])
def test_dynamic_batch_and_size(nhwc, model, batch, height, width):
    path, _ = nhwc
    images = np.random.default_rng(4).uniform(0, 255, (batch, height, width, 3)).astype(np.float32)
    out = _session(path).run(None, {"image": images})[0]
    assert out.shape == (batch, height, width, 1)
    assert np.abs(out - _keras(model, images)).max() <= 1e-5


@pytest.mark.train
def test_dims_have_readable_names(nhwc, nchw):
    for (path, _), expected in [
        (nhwc, ["batch", "height", "width", 3]),
        (nchw, ["batch", 3, "height", "width"]),
    ]:
        proto = onnx.load(os.fspath(path))
        dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
        assert proto.graph.input[0].name == "image" and dims == expected
        assert proto.graph.output[0].name == "mask"


@pytest.mark.train
def test_dilated_convs_are_single_native_convs(nhwc):
    proto = onnx.load(os.fspath(nhwc[0]))
    counts = graph.op_counts(proto)
    assert counts.get("SpaceToDepth", 0) == 0 and counts.get("DepthToSpace", 0) == 0
    dilations = [
        list(onnx.helper.get_attribute_value(a))
        for node in proto.graph.node
        if node.op_type == "Conv"
        for a in node.attribute
        if a.name == "dilations"
    ]
    assert dilations.count([2, 2]) == 2


@pytest.mark.train
def test_nchw_first_node_is_conv_on_the_input(nchw, model):
    path, report = nchw
    proto = onnx.load(os.fspath(path))
    first = proto.graph.node[0]
    assert first.op_type == "Conv" and first.input[0] == "image"
    assert "Transpose" not in graph.op_counts(proto)
    images = np.random.default_rng(5).uniform(0, 255, (2, 96, 64, 3)).astype(np.float32)
    out = _session(path).run(None, {"image": images.transpose(0, 3, 1, 2).copy()})[0]
    assert out.shape == (2, 1, 96, 64)
    assert np.abs(out.transpose(0, 2, 3, 1) - _keras(model, images)).max() <= 1e-5
    assert report.max_abs_diff <= 1e-4


@pytest.mark.train
def test_int8_agrees_with_fp32(nhwc, int8_path):
    images, truth = _disks(4, seed=6)
    fp32 = _session(nhwc[0]).run(None, {"image": images})[0] > 0.5
    # The fitted model does segment the disks, so the int8-vs-fp32 IoU below is not vacuous.
    assert mask_iou(fp32, truth > 0.5) > 0.5
    result = compare_models(nhwc[0], int8_path, images)
    assert result["mean_iou"] >= INT8_MIN_IOU, result
    print("int8 vs fp32:", result)
    proto = onnx.load(os.fspath(int8_path))
    meta = parse_metadata(graph.get_metadata(proto, METADATA_KEY) or "")
    assert meta.export_options["quantize"]["type"] == "int8"
    assert "QuantizeLinear" in graph.op_counts(proto)
    # Conv weights are stored as int8 (on this tiny model the QDQ scales outweigh the saving in bytes).
    assert any(init.data_type == onnx.TensorProto.INT8 and init.dims for init in proto.graph.initializer)


@pytest.mark.train
def test_fp16_parity_and_float32_io(nhwc, fp16_path):
    images = _disks(2, seed=7)[0]
    result = compare_models(nhwc[0], fp16_path, images)
    assert result["max_abs_diff"] <= FP16_MAX_DIFF, result
    print("fp16 vs fp32:", result)
    session = _session(fp16_path)
    assert session.get_inputs()[0].type == session.get_outputs()[0].type == "tensor(float)"
    meta = parse_metadata(session.get_modelmeta().custom_metadata_map[METADATA_KEY])
    assert meta.export_options["quantize"] == {"type": "fp16"}


@pytest.mark.train
def test_check_model_accepts_good_files(nhwc, nchw, int8_path, fp16_path):
    for path in (nhwc[0], nchw[0], int8_path, fp16_path):
        findings = check_model(path)
        assert not has_errors(findings), [str(f) for f in findings]
        assert all(str(path) in f.message for f in findings)


@pytest.mark.train
def test_check_model_reports_broken_files(nhwc, tmp_path):
    good = nhwc[0].read_bytes()
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(good[: len(good) // 3])
    noise = tmp_path / "noise.onnx"
    noise.write_bytes(np.random.default_rng(8).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    bare = tmp_path / "bare.onnx"
    proto = onnx.load_from_string(good)
    del proto.metadata_props[:]
    bare.write_bytes(proto.SerializeToString())
    for path in (truncated, noise, bare, tmp_path / "missing.onnx"):
        findings = check_model(path)
        assert has_errors(findings), (path, [str(f) for f in findings])
    assert any("metadata" in f.message for f in check_model(bare) if f.level == "error")


@pytest.mark.train
def test_failed_parity_leaves_no_file(model, metadata, tmp_path):
    out = tmp_path / "bad.onnx"
    with pytest.raises(ModelError, match="differs from Keras"):
        export_onnx(model, out, metadata=metadata, tolerance=1e-12)
    assert list(tmp_path.iterdir()) == []


def test_bad_opset_and_path_are_usage_errors(tmp_path, metadata):
    top = max_supported_opset()
    for opset in (12, top + 1):
        with pytest.raises(UsageError, match=f"13 to {top}"):
            check_opset(opset)
    with pytest.raises(UsageError, match="does not exist"):
        export_onnx(None, tmp_path / "nowhere" / "m.onnx", metadata=metadata)
    with pytest.raises(UsageError, match="is a folder"):
        export_onnx(None, tmp_path, metadata=metadata)
    with pytest.raises(UsageError, match="layout"):
        export_onnx(None, tmp_path / "m.onnx", metadata=metadata, layout="chw")


def _assert_same_graph(got: onnx.ModelProto, want: onnx.ModelProto) -> None:
    """The same nodes with the same attributes, the same initializer values and the same outputs (node and
    initializer names carry global counters, and the topological order of independent nodes may differ)."""

    def value(attribute: onnx.AttributeProto) -> str:
        v = onnx.helper.get_attribute_value(attribute)
        return repr(onnx.numpy_helper.to_array(v).tolist() if isinstance(v, onnx.TensorProto) else v)

    def nodes(m: onnx.ModelProto) -> list[tuple[str, list[tuple[str, str]]]]:
        return sorted((n.op_type, sorted((a.name, value(a)) for a in n.attribute)) for n in m.graph.node)

    def initializers(m: onnx.ModelProto) -> list[tuple[tuple[int, ...], bytes]]:
        return sorted((tuple(i.dims), onnx.numpy_helper.to_array(i).tobytes()) for i in m.graph.initializer)

    assert nodes(got) == nodes(want)
    assert initializers(got) == initializers(want)
    images, _ = _disks(2, seed=3)
    outputs = [ort.InferenceSession(m.SerializeToString()).run(None, {"image": images})[0] for m in (got, want)]
    np.testing.assert_array_equal(outputs[0], outputs[1])


def test_the_lean_conversion_builds_the_stock_graph_and_falls_back_when_an_optimizer_fails(model, monkeypatch):
    """Without tf2onnx's per-pass weight copies (the seed network's export: 9.3 → 2.8 GB), the same ONNX graph."""
    from tf2onnx import graph as tf2onnx_graph

    from skinseg.exporters import keras_to_onnx

    update = tf2onnx_graph.Node.update_proto
    lean = keras_to_onnx.convert(model, opset=17, layout="nhwc")
    stock = keras_to_onnx.convert(model, opset=17, layout="nhwc", lean=False)
    assert tf2onnx_graph.Node.update_proto is update  # tf2onnx is left as it was
    _assert_same_graph(lean, stock)

    import tf2onnx.optimizer

    real = tf2onnx.optimizer.optimize_graph
    calls = []

    def failing_once(graph, catch_errors=True, optimizers=None):
        calls.append(catch_errors)
        if not catch_errors:
            raise RuntimeError("an optimizer that needed its safety copy")
        return real(graph, catch_errors, optimizers=optimizers)

    monkeypatch.setattr(tf2onnx.optimizer, "optimize_graph", failing_once)
    fallback = keras_to_onnx.convert(model, opset=17, layout="nhwc")
    assert calls == [False, True]  # the lean way failed, the stock way ran
    assert sorted(n.op_type for n in fallback.graph.node) == sorted(n.op_type for n in stock.graph.node)


def test_a_reshape_that_writes_the_graph_output_keeps_the_output_rank():
    """tf2onnx 1.17's reshape optimizer rewrites a run-time-shaped Reshape as a Reshape to a higher rank and a
    Squeeze that it never makes the graph output; when the Reshape writes the output (the one-channel mask's last
    NCHW → NHWC step, in hash-order-dependent conversions) the model returned (1, N, H, W, 1). The conversion keeps
    that optimizer off graph outputs."""
    from onnx import TensorProto, helper
    from tf2onnx.graph import GraphUtil
    from tf2onnx.optimizer.identity_optimizer import IdentityOptimizer
    from tf2onnx.optimizer.reshape_optimizer import ReshapeOptimizer

    from skinseg.exporters import keras_to_onnx

    nchw_to_nhwc = [  # x: (N, 1, H, W) → (N, H, W, 1), the shape computed at run time as tf2onnx makes it
        helper.make_node("Shape", ["x"], ["shape_x"]),
        helper.make_node("Gather", ["shape_x", "nhw"], ["dims"], axis=0),
        helper.make_node("Concat", ["dims", "one"], ["shape"], axis=0),
        helper.make_node("Reshape", ["x", "shape"], ["mask"]),
    ]
    proto = helper.make_model(
        helper.make_graph(
            nchw_to_nhwc,
            "mask_to_nhwc",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1, "h", "w"])],
            [helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["n", "h", "w", 1])],
            [
                helper.make_tensor("nhw", TensorProto.INT64, [3], [0, 2, 3]),
                helper.make_tensor("one", TensorProto.INT64, [1], [1]),
            ],
        ),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    optimize_reshape = ReshapeOptimizer._optimize_reshape
    with keras_to_onnx._fixed_tf2onnx():
        g = IdentityOptimizer().optimize(GraphUtil.create_graph_from_onnx_model(proto), 0)
        assert [n.type for n in g.get_nodes() if "mask" in n.output] == ["Reshape"]  # it writes the output
        g = ReshapeOptimizer().optimize(g, 0)
    assert ReshapeOptimizer._optimize_reshape is optimize_reshape  # tf2onnx is left as it was
    x = np.arange(2 * 5 * 7, dtype=np.float32).reshape(2, 1, 5, 7)
    out = ort.InferenceSession(g.make_model("t").SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_array_equal(out, x.transpose(0, 2, 3, 1))


def test_grappler_folds_the_frozen_graph_without_its_weights(model, monkeypatch):
    """The lean freezing hands grappler the frozen graph with its weights as placeholders (the seed network's
    export: 3.5 → 2.0 GB peak RSS) and puts them back: the stock ONNX graph, weights and outputs."""
    from tf2onnx import tf_loader

    from skinseg.exporters import keras_to_onnx

    monkeypatch.setattr(keras_to_onnx, "WEIGHT_BYTES", 512)  # the tiny model's kernels count as weights
    kernels = {w.path: w.numpy().nbytes for w in model.weights if w.path.endswith("kernel")}
    assert sum(size >= 512 for size in kernels.values()) >= 3
    seen: list[tuple[int, int]] = []  # (largest constant in bytes, placeholders) of each graph grappler folds
    grappler = tf_loader.tf_optimize_grappler

    def recording(input_names, output_names, graph_def):
        consts = [len(n.attr["value"].tensor.tensor_content) for n in graph_def.node if n.op == "Const"]
        seen.append((max(consts), sum(n.op == "Placeholder" for n in graph_def.node)))
        return grappler(input_names, output_names, graph_def)

    monkeypatch.setattr(tf_loader, "tf_optimize_grappler", recording)
    freeze = tf_loader.from_function
    lean = keras_to_onnx.convert(model, opset=17, layout="nhwc")
    assert tf_loader.from_function is freeze  # tf2onnx is left as it was
    largest, placeholders = seen[0]
    assert largest < 512 and placeholders == 1 + sum(size >= 512 for size in kernels.values())
    stock = keras_to_onnx.convert(model, opset=17, layout="nhwc", lean=False)
    assert seen[1][0] >= 512  # the stock way folds the weights
    _assert_same_graph(lean, stock)

    def failing(func):
        raise ValueError("a graph the lean freezing cannot take")

    monkeypatch.setattr(tf_loader, "convert_variables_to_constants_large_model", failing)
    fallback = keras_to_onnx.convert(model, opset=17, layout="nhwc")
    assert seen[2][0] >= 512  # converted the stock way
    _assert_same_graph(fallback, stock)


def test_split_weights_folds_to_what_grappler_folds_the_whole_graph_to():
    """A kernel read through identities becomes one placeholder named as the last identity; a kernel that feeds a
    computation on constants (a transpose grappler folds) and a small constant stay. Folding the skeleton and
    restoring the weights gives grappler's folding of the whole graph."""
    from tf2onnx import tf_loader

    ones = np.arange(3 * 3 * 3 * 8, dtype=np.float32).reshape(3, 3, 3, 8)  # 864 bytes
    with tf.Graph().as_default() as g:
        image = tf.compat.v1.placeholder(tf.float32, [None, None, None, 3], name="image")
        read = tf.constant(ones, name="read")
        out = tf.nn.conv2d(image, tf.identity(tf.identity(read), name="read_twice"), 1, "SAME")
        folded = tf.constant(ones.transpose(3, 0, 1, 2), name="folded")
        out += tf.nn.conv2d(image, tf.identity(tf.transpose(folded, [1, 2, 3, 0])), 1, "SAME")
        small = tf.constant(ones[:1], name="small")
        tf.identity(out + tf.nn.conv2d(image, small, 1, "SAME")[..., :1], name="mask")
    graph_def = g.as_graph_def()
    skeleton, weights = graph.split_weights(graph_def, min_bytes=800)
    assert list(weights) == ["read_twice"] and weights["read_twice"].name == "read"
    stub = next(n for n in skeleton.node if n.name == "read_twice")
    assert stub.op == "Placeholder" and stub.attr["dtype"].type == tf.float32.as_datatype_enum
    assert [d.size for d in stub.attr["shape"].shape.dim] == [3, 3, 3, 8]
    assert {"read", "Identity"}.isdisjoint(n.name for n in skeleton.node)  # the rest of the chain

    def fold(graph_def):
        with tf.Graph().as_default():
            return tf_loader.tf_optimize(["image:0"], ["mask:0"], graph_def)

    def nodes(graph_def):
        return sorted(
            (n.name, n.op, list(n.input), n.attr["value"].tensor.SerializeToString(deterministic=True))
            for n in graph_def.node
        )

    assert nodes(graph.restore_weights(fold(skeleton), weights)) == nodes(fold(graph_def))
