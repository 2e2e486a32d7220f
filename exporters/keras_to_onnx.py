"""Export a trained Keras segmentation model to a self-describing ONNX file.

How (Keras 3.15 / TensorFlow 2.21 / tf2onnx 1.17): the model is wrapped in a ``tf.function`` with the input
signature ``TensorSpec([None, None, None, 3], float32, name="image")`` that calls ``model(image,
training=False)`` and returns ``{"mask": ...}``; ``tf2onnx.convert.from_function`` converts it. That fixes the
ONNX input and output names whatever the Keras layer names are, keeps batch, height and width dynamic, and
never goes through the Keras-2-only ``model.save(format="tf")`` path.

The exported graph takes float32 RGB in [0, 255] (the ``Rescaling`` layer is part of the model) and returns
the lesion probability in [0, 1]:

- ``layout="nhwc"``: ``image`` is ``batch × height × width × 3``, ``mask`` is ``batch × height × width × 1``;
- ``layout="nchw"``: ``image`` is ``batch × 3 × height × width`` and ``mask`` is ``batch × 1 × height ×
  width``. tf2onnx's ``inputs_as_nchw``/``outputs_as_nchw`` plus its transpose optimizer cancel every layout
  transpose, and the ``Rescaling`` multiply is folded into the first convolution, so the first node is a
  ``Conv`` reading ``image`` directly.

Every export is checked: Keras and onnxruntime run on the same images and the file is only moved into place
(``os.replace`` of a temporary file in the same folder) when they agree.
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from skinseg import install_hint
from skinseg.exporters import graph
from skinseg.runtime import atomic
from skinseg.runtime.errors import MissingExtraError, ModelError, UsageError
from skinseg.runtime.imageio import file_sha256
from skinseg.runtime.metadata import LAYOUTS, METADATA_KEY, ModelMetadata

MIN_OPSET = 13
FP32_TOLERANCE = 1e-4
WEIGHT_BYTES = 1 << 16  # constants of at least 64 KiB are weights, kept out of grappler (see _lean_freezing)
_TRAIN_EXTRA = install_hint("train")


@dataclass(frozen=True)
class ExportReport:
    """What :func:`export_onnx` wrote and how well the ONNX model matches Keras."""

    path: Path
    opset: int
    layout: str
    max_abs_diff: float
    check_images: int
    check_shape: tuple[int, ...]
    size_bytes: int
    seconds: float
    source_model_sha256: str
    op_counts: dict[str, int] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()


def max_supported_opset() -> int:
    """The highest opset both the installed onnx and tf2onnx (1.17: 18) can produce."""
    highest = onnx.defs.onnx_opset_version()
    try:
        from tf2onnx import constants
    except ImportError:
        return highest
    return min(highest, max(constants.OPSET_TO_IR_VERSION))


def check_opset(opset: int) -> int:
    """Return ``opset`` or raise :class:`UsageError` naming the valid range."""
    top = max_supported_opset()
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= top:
        raise UsageError(
            f"opset {opset!r} is not supported: use an integer from {MIN_OPSET} to {top} "
            f"(the installed onnx/tf2onnx maximum); 17 is the default"
        )
    return opset


def check_layout(layout: str) -> str:
    """Return the lower-cased layout or raise :class:`UsageError`."""
    value = str(layout).lower()
    if value not in LAYOUTS:
        raise UsageError(f"layout {layout!r} is not supported: use one of {', '.join(LAYOUTS)}")
    return value


def check_output_path(path: str | os.PathLike[str]) -> Path:
    """Return ``path`` as a Path, or raise :class:`UsageError` if a file cannot be written there."""
    out = Path(path)
    if out.is_dir():
        raise UsageError(f"{out}: is a folder; give a file path such as {out / 'model.onnx'}")
    parent = out.parent
    if not parent.is_dir():
        raise UsageError(f"{out}: folder {parent} does not exist; create it first or choose another path")
    if not os.access(parent, os.W_OK | os.X_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise UsageError(f"{out}: not writable; choose a path in a folder you can write to")
    return out


def sha256_weights(model: Any) -> str:
    """Hex SHA-256 of a Keras model's weights (shapes, dtypes and values, in layer order)."""
    digest = hashlib.sha256()
    for weight in model.get_weights():
        array = np.ascontiguousarray(weight)
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def _import_tensorflow() -> tuple[Any, Any]:
    try:
        import tensorflow as tf
        import tf2onnx
    except ImportError as e:
        raise MissingExtraError(
            f"exporting to ONNX needs TensorFlow and tf2onnx ({e.name} is missing); {_TRAIN_EXTRA}"
        ) from None
    return tf, tf2onnx


def load_keras_model(model_or_path: Any) -> tuple[Any, str]:
    """``(model, sha256)``: a Keras model as given, or loaded from a ``.keras`` file (hash of the file)."""
    if not isinstance(model_or_path, (str, os.PathLike)):
        return model_or_path, sha256_weights(model_or_path)
    path = Path(model_or_path)
    if not path.is_file():
        raise UsageError(f"{path}: Keras model file not found; give the .keras file written by `skinseg train`")
    _import_tensorflow()
    import keras

    try:
        model = keras.saving.load_model(path, compile=False)
    except Exception as e:  # Keras raises many types for a bad archive
        raise ModelError(
            f"{path}: cannot load as a Keras model ({type(e).__name__}: {e}); re-save it with model.save()"
        ) from None
    return model, file_sha256(path)


def as_float32(model: Any) -> Any:
    """``model`` computing in float32: one trained under a mixed-precision policy (``[train] mixed_precision``:
    bfloat16 compute) is rebuilt from its config with float32 layers and given the same weights (they are float32
    variables already). The exported graph is float32 whatever the training precision: onnxruntime on a CPU runs
    float32, and ``--quantize fp16`` makes the half-precision variant."""

    def policy(layer: Any) -> str:
        p = getattr(layer, "dtype_policy", None)
        return getattr(p, "name", "float32")

    if all(policy(layer) == "float32" for layer in model.layers):
        return model

    def strip(obj: Any) -> Any:
        if isinstance(obj, dict):
            if obj.get("class_name") in ("DTypePolicy", "FloatDTypePolicy"):
                return "float32"
            return {k: "float32" if k == "dtype" and isinstance(v, str) else strip(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [strip(v) for v in obj]
        return obj

    rebuilt = model.__class__.from_config(strip(model.get_config()))
    rebuilt.set_weights(model.get_weights())
    bad = [layer.name for layer in rebuilt.layers if policy(layer) != "float32"]
    if bad:
        raise ModelError(
            f"model layer {bad[0]!r} keeps a {policy(rebuilt.get_layer(bad[0]))} policy; save it in float32"
        )
    return rebuilt


def _check_signature(model: Any, source: str) -> int:
    """Check the model takes one NHWC RGB image and returns one tensor; return its channel count."""
    inputs, outputs = list(model.inputs), list(model.outputs)
    if len(inputs) != 1 or len(outputs) != 1:
        raise UsageError(
            f"{source}: the model must have one input and one output, has {len(inputs)} and {len(outputs)}"
        )
    in_shape, out_shape = tuple(inputs[0].shape), tuple(outputs[0].shape)
    if len(in_shape) != 4 or in_shape[-1] != 3:
        raise UsageError(f"{source}: the model input must be (batch, height, width, 3) RGB, is {in_shape}")
    if len(out_shape) != 4 or not out_shape[-1]:
        raise UsageError(f"{source}: the model output must be (batch, height, width, classes), is {out_shape}")
    return int(out_shape[-1])


@contextmanager
def _quiet_tf2onnx() -> Iterator[None]:
    logger = logging.getLogger("tf2onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


@contextmanager
def _fixed_tf2onnx() -> Iterator[None]:
    """tf2onnx 1.17 with its reshape optimizer kept off a ``Reshape`` that writes a graph output.

    That optimizer turns a ``Reshape`` whose shape is computed at run time into one to a constant shape of higher
    rank followed by a ``Squeeze`` (``[1, -1, 0, 0, 1]`` then axis 0 for the last NCHW → NHWC transpose of a
    one-channel mask, which the transpose optimizer made a ``Reshape``), and inserts the ``Squeeze`` with
    ``Graph.insert_node_on_output``, which re-points the ``Reshape``'s consumers but not the graph's outputs. When
    the ``Reshape`` writes the graph output (the identity optimizer ran first) the ``Squeeze`` is dropped as dead
    and the model returns ``(1, batch, height, width, 1)``. Which optimizer reaches it first follows Python's hash
    order: 17 of 800 conversions of a small UNet (``tests/test_export_cli.py``'s) came out so. Left alone, that
    ``Reshape`` keeps its run-time shape: one ``Shape`` and a ``Gather`` more on a one-channel mask.
    """
    from tf2onnx.optimizer.reshape_optimizer import ReshapeOptimizer

    optimize_reshape = ReshapeOptimizer._optimize_reshape

    def keep_graph_outputs(self: Any, node: Any, graph_: Any) -> bool:
        if set(node.output) & set(graph_.outputs):
            return False
        return optimize_reshape(self, node, graph_)

    ReshapeOptimizer._optimize_reshape = keep_graph_outputs
    try:
        yield
    finally:
        ReshapeOptimizer._optimize_reshape = optimize_reshape


@contextmanager
def _lean_tf2onnx() -> Iterator[None]:
    """tf2onnx 1.17 without its memory sinks: :func:`_lean_optimizers` and :func:`_lean_freezing` (the seed's
    31 M-parameter network, whole ``skinseg export``: 11.3 GB peak RSS the stock way, 3.5 GB with lean
    optimizers, 2.1 GB with both; ``benchmarks/bench_export_memory.py``)."""
    with _lean_optimizers(), _lean_freezing():
        yield


@contextmanager
def _lean_optimizers() -> Iterator[None]:
    """tf2onnx's ONNX optimizers without their copies of every weight.

    1. Each optimizer pass re-serializes every node into its ``NodeProto`` after ``del attribute[:]``; with the
       upb protobuf runtime the removed attributes stay in the message's arena, so every pass keeps another copy
       of every weight tensor. A fresh ``NodeProto`` per update lets the old one, and its arena, go.
    2. ``optimize_graph(catch_errors=True)`` deep-copies the whole graph, weights included, before each of its
       optimizers so that a failing one can be skipped. Here the optimizers run on the graph itself; if one fails,
       :func:`convert` runs the conversion again the stock way.
    """
    from tf2onnx import convert as tf2onnx_convert
    from tf2onnx import graph as tf2onnx_graph

    node_update = tf2onnx_graph.Node.update_proto
    optimize_graph = tf2onnx_convert.optimizer.optimize_graph

    def update_proto(self: Any, external_tensor_storage: Any = None) -> None:
        old = self._op
        self._op = onnx.NodeProto(name=old.name, op_type=old.op_type, domain=old.domain, doc_string=old.doc_string)
        node_update(self, external_tensor_storage)

    def optimize_in_place(graph_: Any, catch_errors: bool = True, optimizers: Any = None) -> Any:
        return optimize_graph(graph_, False, optimizers=optimizers)

    tf2onnx_graph.Node.update_proto = update_proto
    tf2onnx_convert.optimizer.optimize_graph = optimize_in_place
    try:
        yield
    finally:
        tf2onnx_graph.Node.update_proto = node_update
        tf2onnx_convert.optimizer.optimize_graph = optimize_graph


@contextmanager
def _lean_freezing() -> Iterator[None]:
    """tf2onnx's freezing and grappler folding (``tf_loader.from_function``) without their copies of every weight.

    3. The stock freezing builds a frozen concrete function and keeps it, the ``GraphDef`` taken from it and a
       session graph imported from that alive while grappler runs. Here the ``GraphDef`` is frozen directly
       (tf2onnx's own large-model freezing: no function is built) and nothing else is kept.
    4. Grappler's constant folding holds several copies of every weight (the meta-graph, its serialization, the
       C++ graph and its folded tensors, the result). Here grappler folds the graph with its weights as
       placeholders (:func:`graph.split_weights`: constants of at least :data:`WEIGHT_BYTES` whose value is only
       read) and the weights are put back afterwards: the same folded graph, so the same ONNX graph.
    """
    from tf2onnx import tf_loader

    from_function = tf_loader.from_function

    def freeze_lean(func: Any, input_names: list[str], output_names: list[str], large_model: bool = False) -> Any:
        import tensorflow as tf

        graph_def = tf_loader.fix_freezing_errors_part2(tf_loader.convert_variables_to_constants_large_model(func))
        skeleton, weights = graph.split_weights(graph_def, min_bytes=WEIGHT_BYTES)
        with tf.Graph().as_default():  # grappler's meta-graph export needs graph mode
            folded = tf_loader.tf_optimize(input_names, output_names, skeleton)
        del skeleton
        return graph.restore_weights(folded, weights)

    tf_loader.from_function = freeze_lean
    try:
        yield
    finally:
        tf_loader.from_function = from_function


def convert(
    model: Any, *, opset: int, layout: str, input_name: str = "image", output_name: str = "mask", lean: bool = True
) -> onnx.ModelProto:
    """Convert a Keras model to an ONNX ``ModelProto`` (no metadata, no checks) and clean its graph.

    ``lean`` converts without tf2onnx's copies of the weights (:func:`_lean_tf2onnx`); should that fail, the
    stock conversion runs instead.
    """
    tf, tf2onnx = _import_tensorflow()
    model = as_float32(model)
    out_channels = _check_signature(model, "model")
    spec = tf.TensorSpec([None, None, None, 3], tf.float32, name=input_name)

    @tf.function(input_signature=[spec])
    def serve(image: Any) -> dict[str, Any]:
        return {output_name: tf.cast(model(image, training=False), tf.float32)}

    nchw = layout == "nchw"

    def from_function() -> onnx.ModelProto:
        with _quiet_tf2onnx(), _fixed_tf2onnx():
            proto, _ = tf2onnx.convert.from_function(
                serve,
                input_signature=serve.input_signature,
                opset=opset,
                custom_rewriter=[graph.rewrite_dilated_convs],
                inputs_as_nchw=[input_name] if nchw else None,
                outputs_as_nchw=[output_name] if nchw else None,
            )
        return proto

    proto = None
    if lean:
        try:
            with _lean_tf2onnx():
                proto = from_function()
        except Exception:  # noqa: BLE001  an optimizer that needed its safety copy, a graph lean freezing
            # cannot take: the stock way
            logging.getLogger(__name__).info("lean tf2onnx conversion failed; converting the stock way")
    if proto is None:
        proto = from_function()
    graph.fold_input_rescaling(proto)
    graph.name_dynamic_dims(proto, layout=layout, out_channels=out_channels)
    return proto


def synthetic_images(tile_size: tuple[int, int], count: int = 2, seed: int = 0) -> np.ndarray:
    """``count`` random RGB images in [0, 255] at ``tile_size`` (height, width), NHWC float32."""
    rng = np.random.default_rng(seed)
    return rng.uniform(0.0, 255.0, size=(count, *tile_size, 3)).astype(np.float32)


def as_image_batch(images: np.ndarray, source: str = "check_inputs") -> np.ndarray:
    """An NHWC float32 batch from one ``H×W×3`` image or an ``N×H×W×3`` array; UsageError otherwise."""
    batch = np.asarray(images, dtype=np.float32)
    if batch.ndim == 3:
        batch = batch[None]
    if batch.ndim != 4 or batch.shape[-1] != 3 or batch.shape[0] == 0:
        raise UsageError(f"{source}: expected RGB images shaped (N, height, width, 3), got {batch.shape}")
    return batch


def keras_predict(model: Any, images: np.ndarray, batch_size: int = 4) -> np.ndarray:
    """Run the Keras model in inference mode (``training=False``) on an NHWC batch."""
    parts = [
        np.asarray(model(images[i : i + batch_size], training=False), dtype=np.float32)
        for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(parts)


def onnx_predict(session: Any, images: np.ndarray, layout: str) -> np.ndarray:
    """Run an onnxruntime session on an NHWC batch; return NHWC output whatever the model's layout."""
    feed = images.transpose(0, 3, 1, 2) if layout == "nchw" else images
    name = session.get_inputs()[0].name
    out = session.run(None, {name: np.ascontiguousarray(feed)})[0]
    return out.transpose(0, 2, 3, 1) if layout == "nchw" else out


def onnx_session(path: str | os.PathLike[str]) -> Any:
    """A CPU onnxruntime session for ``path``."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: no initializer-clean-up chatter
    return ort.InferenceSession(os.fspath(path), options, providers=["CPUExecutionProvider"])


def max_abs_diff(reference: np.ndarray, candidate: np.ndarray, source: str) -> float:
    """Largest absolute difference; ModelError if the shapes differ."""
    if reference.shape != candidate.shape:
        raise ModelError(
            f"{source}: ONNX output shape {candidate.shape} differs from Keras {reference.shape}; report a bug"
        )
    return float(np.max(np.abs(reference.astype(np.float64) - candidate.astype(np.float64))))


@contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path`` that becomes ``path`` on success (the runtime's one atomic writer,
    :func:`skinseg.runtime.atomic.atomic_path`); temporary files of killed exports are cleared first. UsageError
    when the folder cannot be written."""
    atomic.remove_stale_temps(path.parent, target=lambda name: name == path.name)
    try:
        with atomic.atomic_path(path) as tmp:
            yield tmp
    except OSError as e:
        raise UsageError(f"{path}: cannot write there ({e.strerror or e}); choose a writable folder") from None


def save_model(proto: onnx.ModelProto, path: Path) -> None:
    """Serialize ``proto`` to ``path`` (a single file; models over 2 GB are out of scope)."""
    try:
        path.write_bytes(proto.SerializeToString())
    except OSError as e:
        raise UsageError(
            f"{path}: cannot write the ONNX file ({e.strerror}); free space or choose another folder"
        ) from None


def export_onnx(
    model_or_path: Any,
    output_path: str | os.PathLike[str],
    *,
    metadata: ModelMetadata,
    opset: int = 17,
    layout: str = "nhwc",
    check_inputs: np.ndarray | None = None,
    tolerance: float = FP32_TOLERANCE,
    slim: bool = False,
    model_sha256: str | None = None,
) -> ExportReport:
    """Export a Keras model (object or ``.keras`` path) to ``output_path`` and check it against Keras.

    ``metadata`` is written under ``metadata_props["skinseg"]`` with ``layout``, ``export_options`` (opset,
    layout, quantize) and ``source_model_sha256`` filled in. ``check_inputs`` (NHWC RGB 0–255) default to
    two random images at ``metadata.tile_size``. ``model_sha256``: the hash of the file a given model object was
    loaded from (recorded as ``source_model_sha256``; otherwise an object's weights are hashed). Raises
    :class:`UsageError` for a bad opset, layout or output path and :class:`ModelError` when ONNX and Keras differ
    by more than ``tolerance``; nothing is left on disk on any failure.
    """
    start = time.perf_counter()
    opset, layout = check_opset(opset), check_layout(layout)
    out = check_output_path(output_path)
    images = synthetic_images(metadata.tile_size) if check_inputs is None else as_image_batch(check_inputs)
    if model_sha256 is not None and not isinstance(model_or_path, (str, os.PathLike)):
        model, sha = model_or_path, model_sha256  # loaded by the caller, hashed from its file: not loaded twice
    else:
        model, sha = load_keras_model(model_or_path)
    model = as_float32(model)  # the parity check compares the float32 graph with the float32 Keras model

    proto = convert(model, opset=opset, layout=layout, input_name=metadata.input_name, output_name=metadata.output_name)
    gc.collect()  # the conversion's graphs hold reference cycles: free them before the checks
    if slim:
        proto = graph.slim(proto)
    options = {**metadata.export_options, "opset": opset, "layout": layout, "quantize": "none", "slim": slim}
    final = dataclasses.replace(metadata, layout=layout, export_options=options, source_model_sha256=sha)
    graph.set_metadata(proto, METADATA_KEY, final.to_json())
    warnings = tuple(f"dilated convolution left as a SpaceToDepth chain: {n}" for n in graph.dilation_chain_ops(proto))

    op_counts = graph.op_counts(proto)
    with atomic_output(out) as tmp:
        save_model(proto, tmp)
        del proto
        gc.collect()
        got = onnx_predict(onnx_session(tmp), images, layout)
        diff = max_abs_diff(keras_predict(model, images), got, str(out))
        if not diff <= tolerance:
            raise ModelError(
                f"{out}: ONNX output differs from Keras by {diff:.3g} (max abs) on {len(images)} "
                f"check images, more than the allowed {tolerance:g}; nothing was written. The model may "
                "use a layer tf2onnx converts inexactly; report it with the model"
            )
        size = tmp.stat().st_size
    return ExportReport(
        path=out,
        opset=opset,
        layout=layout,
        max_abs_diff=diff,
        check_images=len(images),
        check_shape=tuple(images.shape),
        size_bytes=size,
        seconds=time.perf_counter() - start,
        source_model_sha256=sha,
        op_counts=op_counts,
        warnings=warnings,
    )
