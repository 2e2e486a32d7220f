"""The UNet on the ImageNet-pretrained EfficientNet-Lite0 encoder: the converted weights reproduce the original
network, the model's interpolation is bilinear, it exports with a dynamic tile size, and the encoder freezes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow")

import keras  # noqa: E402

from skinseg.runtime.errors import ConfigError  # noqa: E402
from skinseg.training.encoders import (  # noqa: E402
    build_lite_unet,
    efficientnet_lite0_features,
    encoder_layers,
    load_encoder_weights,
)

pytestmark = pytest.mark.train
ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "training" / "weights" / "efficientnet_lite0_imagenet.npz"
PARITY = ROOT / "tests" / "data" / "efficientnet_lite0_parity.npz"


def test_converted_weights_reproduce_the_pytorch_network_on_real_photographs():
    """tests/data/…parity.npz holds PyTorch's feature maps (float16) on two sample photographs
    (tools/convert_efficientnet_lite0.py dump); the Keras encoder with the shipped weights must match them."""
    ref = np.load(PARITY)
    images = ref["images"]
    assert images.shape[0] == 2 and images.std() > 10  # real photographs, not blank arrays
    model = efficientnet_lite0_features(images.shape[1], images.shape[2], weights=WEIGHTS)
    outputs = model.predict(images.astype(np.float32), verbose=0)
    for name, got in zip(("s2", "s4", "s8", "s16", "s32"), outputs, strict=True):
        want = ref[name].astype(np.float32)
        assert got.shape == want.shape, name
        assert np.abs(want).max() > 0.5, name  # the features are not trivially zero
        assert np.abs(got - want).max() / np.abs(want).max() < 2e-3, name
    # Without the weights the same network is far off: the check can fail.
    random = efficientnet_lite0_features(images.shape[1], images.shape[2]).predict(images.astype(np.float32), verbose=0)
    want = ref["s32"].astype(np.float32)
    assert np.abs(random[-1] - want).max() / np.abs(want).max() > 0.1


def test_weights_that_do_not_fit_are_refused_in_one_line(tmp_path):
    model = efficientnet_lite0_features(64, 64)
    bad = tmp_path / "bad.npz"
    with np.load(WEIGHTS) as data:
        arrays = {k: data[k] for k in data.files}
    arrays["enc_stem_conv/kernel"] = arrays["enc_stem_conv/kernel"][:, :, :, :16]
    np.savez(bad, **arrays)
    with pytest.raises(ConfigError, match=r"enc_stem_conv/kernel is \(3, 3, 3, 32\)") as e:
        load_encoder_weights(model, bad)
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="cannot be read"):
        load_encoder_weights(model, tmp_path / "missing.npz")
    text = tmp_path / "text.npz"
    text.write_text("not an archive")
    with pytest.raises(ConfigError, match="cannot be read"):
        load_encoder_weights(model, text)


def test_the_output_interpolation_is_bilinear_inside_and_keeps_the_sign_at_the_border():
    import tensorflow as tf

    model = build_lite_unet(image_height=64, image_width=96)
    probe = keras.Model(model.input, [model.get_layer("logits").output, model.get_layer("logits_up").output])
    x = np.random.default_rng(0).uniform(0, 255, (2, 64, 96, 3)).astype(np.float32)
    logits, up = probe.predict(x, verbose=0)
    want = tf.image.resize(logits, (64, 96), method="bilinear").numpy()
    assert np.abs(up - want)[:, 1:-1, 1:-1].max() < 1e-5
    assert np.array_equal(np.sign(up), np.sign(want))


@pytest.mark.parametrize("size", [(100, 256), (256, 20)])
def test_a_size_not_divisible_by_32_is_refused_with_a_fix(size):
    with pytest.raises(ConfigError, match="multiple of 32"):
        build_lite_unet(image_height=size[0], image_width=size[1])


def test_exported_model_takes_other_tile_sizes_with_keras_parity(tmp_path):
    import onnxruntime as ort

    from skinseg.exporters.keras_to_onnx import convert

    model = build_lite_unet(image_height=64, image_width=64, base_filters=8, weights=WEIGHTS)
    proto = convert(model, opset=17, layout="nhwc")
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    rng = np.random.default_rng(1)
    for shape in ((1, 64, 64, 3), (2, 96, 160, 3)):
        x = rng.uniform(0, 255, shape).astype(np.float32)
        (got,) = session.run(None, {name: x})
        want = model.predict(x, verbose=0)
        assert got.shape == (*shape[:3], 1) and want.size == got.size
        want = want.reshape(got.shape)  # predict may stack replicas when another test left a distribution strategy
        assert np.abs(got - want).max() < 1e-4


def test_the_encoder_stays_frozen_for_the_configured_epochs_then_trains(tmp_path):
    from skinseg.training.losses import compile_model
    from skinseg.training.trainer import _encoder_freezer

    model = build_lite_unet(image_height=64, image_width=64, base_filters=8, weights=WEIGHTS)
    compile_model(model, loss="bce_jaccard_loss", metrics=[], learning_rate=1e-2, clipvalue=0.5)
    model.optimizer.build(model.trainable_variables)
    freezer = _encoder_freezer(model, 1)
    rng = np.random.default_rng(2)
    x = rng.uniform(0, 255, (4, 64, 64, 3)).astype(np.float32)
    y = (rng.uniform(size=(4, 64, 64, 1)) > 0.5).astype(np.float32)

    def snapshot():
        return {
            "stem": model.get_layer("enc_stem_conv").get_weights()[0].copy(),
            "bn_mean": model.get_layer("enc_b3_dw_bn").get_weights()[2].copy(),
            "decoder": model.get_layer("dec0_conv1").get_weights()[0].copy(),
        }

    start = snapshot()
    model.fit(x, y, epochs=1, batch_size=2, verbose=0, callbacks=[freezer])
    after_one = snapshot()
    assert np.array_equal(after_one["stem"], start["stem"])  # frozen weights
    assert np.array_equal(after_one["bn_mean"], start["bn_mean"])  # frozen batch-norm statistics
    assert not np.array_equal(after_one["decoder"], start["decoder"])  # the decoder trained
    model.fit(x, y, epochs=2, initial_epoch=1, batch_size=2, verbose=0, callbacks=[freezer])
    after_two = snapshot()
    assert not np.array_equal(after_two["stem"], start["stem"])  # unfrozen in the second epoch
    assert all(layer.trainable for layer in encoder_layers(model))
    assert _encoder_freezer(model, 0) is None


def test_validation_runs_every_n_epochs_and_after_the_last():
    from skinseg.training.trainer import validation_epochs

    assert validation_epochs(10, 1) == list(range(1, 11))
    assert validation_epochs(10, 3) == [3, 6, 9, 10]
    assert validation_epochs(2, 5) == [2]


def test_flops_count_the_depthwise_convolutions():
    from skinseg.training.model import count_flops

    inputs = keras.Input((32, 48, 8))
    outputs = keras.layers.DepthwiseConv2D(5, padding="same", use_bias=False)(inputs)
    assert count_flops(keras.Model(inputs, outputs)) == 2 * 32 * 48 * 5 * 5 * 8


def test_auto_precision_uses_bfloat16_only_where_it_is_native(monkeypatch):
    import tensorflow as tf

    from skinseg.training.trainer import precision_policy

    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: [])
    avx2 = "processor: 0\nflags\t\t: fpu sse2 avx avx2 fma\n"
    bf16 = "processor: 0\nflags\t\t: fpu sse2 avx avx2 fma avx512f avx512_bf16\n"
    amx = "flags : avx2 amx_bf16 amx_tile\n"
    assert precision_policy("auto", avx2) == "float32"
    assert precision_policy("auto", bf16) == "mixed_bfloat16"
    assert precision_policy("auto", amx) == "mixed_bfloat16"
    assert precision_policy(True, avx2) == "mixed_bfloat16"  # asked for explicitly
    assert precision_policy(False, bf16) == "float32"


def test_mixed_precision_accepts_only_booleans_and_auto():
    from skinseg.data.config import parse_config

    assert parse_config('[train]\nmixed_precision = "auto"\n').train.mixed_precision == "auto"
    with pytest.raises(ConfigError, match="mixed_precision"):
        parse_config('[train]\nmixed_precision = "fast"\n')


def test_a_model_trained_in_bfloat16_exports_as_float32_with_parity():
    """A run with mixed_precision saves bfloat16-compute layers; the ONNX graph must be float32 and load."""
    import onnxruntime as ort

    from skinseg.exporters.keras_to_onnx import as_float32, convert

    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        mixed = build_lite_unet(image_height=64, image_width=64, base_filters=8, weights=WEIGHTS)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert mixed.get_layer("enc_stem_conv").dtype_policy.name == "mixed_bfloat16"
    plain = as_float32(mixed)
    assert {layer.dtype_policy.name for layer in plain.layers} == {"float32"}
    x = np.random.default_rng(3).uniform(0, 255, (2, 64, 64, 3)).astype(np.float32)
    want = plain.predict(x, verbose=0)
    # the same weights: the outputs agree but for bfloat16 rounding (a few 0.01 of probability, up to ~0.1 here)
    got_mixed = mixed.predict(x, verbose=0).astype(np.float32)
    assert np.abs(got_mixed - want).mean() < 0.02 and np.corrcoef(got_mixed.ravel(), want.ravel())[0, 1] > 0.98
    session = ort.InferenceSession(convert(mixed, opset=17, layout="nhwc").SerializeToString())
    (got,) = session.run(None, {session.get_inputs()[0].name: x})
    assert np.abs(got - want).max() < 1e-4
    assert as_float32(plain) is plain  # nothing to do for a float32 model
