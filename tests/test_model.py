"""Tests for skinseg.training.model: UNet structure, validation and model files."""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from skinseg.runtime.errors import ConfigError, ModelError  # noqa: E402
from skinseg.training import losses  # noqa: E402
from skinseg.training import model as unet  # noqa: E402
from skinseg.training.model import build_unet, check_input_size, count_flops  # noqa: E402

pytestmark = pytest.mark.train

SMALL = {"image_height": 64, "image_width": 64, "base_filters": 4, "num_layers": 3}


def expected_params(
    *, channels: int = 3, classes: int = 1, base: int = 16, layers: int = 7, kernel: int = 5, bn: bool = False
) -> int:
    """Parameter count of the seed UNet, from its structure (square kernels)."""

    def conv(k: int, cin: int, cout: int) -> int:
        return k * k * cin * cout + cout + (4 * cout if bn else 0)  # BN: gamma, beta, mean, variance

    kernels = [max(3, kernel - 2 * i) for i in range(layers)]
    total, cin = 0, channels
    for i in range(layers):
        f = base * 2**i
        total += conv(kernels[i], cin, f) + conv(kernels[i], f, f)
        cin = f
    for f_level in range(layers - 2, -1, -1):
        f = base * 2**f_level
        total += 2 * 2 * (2 * f) * f + f  # Conv2DTranspose 2×2 from the level below (2f channels)
        total += conv(kernels[f_level], 2 * f, f) + conv(kernels[f_level], f, f)
    return total + base * classes + classes


def images(n: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (n, height, width, 3)).astype("float32")


# --- structure -----------------------------------------------------------------------------------------


def test_seed_config_has_the_seed_parameter_count() -> None:
    model = build_unet(image_height=512, image_width=512)  # seed defaults: 16 filters, 7 levels, (5,5), (2,2)
    assert model.count_params() == 31_127_153 == expected_params()


@pytest.mark.parametrize("bn", [False, True])
def test_small_config_parameter_count_matches_formula(bn: bool) -> None:
    model = build_unet(**SMALL, base_kernels=(7, 7), batch_norm=bn)
    assert model.count_params() == expected_params(base=4, layers=3, kernel=7, bn=bn)


def test_names_and_non_square_output() -> None:
    model = build_unet(image_height=64, image_width=128, base_filters=4, num_layers=4, seed=1)
    assert model.input.name == "image" and model.input.dtype == "float32"
    assert model.get_layer("mask") is model.layers[-1]
    assert model.output_names == ["mask"]
    prediction = model.predict(images(2, 64, 128), verbose=0)
    assert prediction.shape == (2, 64, 128, 1)
    assert np.all((prediction >= 0) & (prediction <= 1))


def test_rescaling_replaces_lambda() -> None:
    model = build_unet(**SMALL)
    assert model.get_layer("rescale").scale == pytest.approx(1 / 255)
    assert not any(isinstance(layer, keras.layers.Lambda) for layer in model.layers)


def test_dropout_rate_grows_with_depth_and_uses_seed() -> None:
    model = build_unet(**SMALL, dropout_rate=0.1, seed=7)
    for level in range(3):
        assert model.get_layer(f"enc{level}_drop").rate == pytest.approx(0.1 * level)
        assert model.get_layer(f"enc{level}_drop").seed is not None
    for level in range(2):
        assert model.get_layer(f"dec{level}_drop").rate == pytest.approx(0.1 * level)
    seeds = [layer.seed for layer in model.layers if isinstance(layer, keras.layers.Dropout)]
    assert len(set(seeds)) == len(seeds) == 5


def test_seeded_models_drop_out_identically() -> None:
    first = build_unet(**SMALL, dropout_rate=0.3, seed=3)
    second = build_unet(**SMALL, dropout_rate=0.3, seed=3)
    second.set_weights(first.get_weights())
    x = images(1, 64, 64)
    np.testing.assert_allclose(first(x, training=True), second(x, training=True), rtol=1e-6)


def test_batch_norm_adds_two_layers_per_block() -> None:
    def count(model: keras.Model) -> int:
        return sum(isinstance(layer, keras.layers.BatchNormalization) for layer in model.layers)

    assert count(build_unet(**SMALL)) == 0
    assert count(build_unet(**SMALL, batch_norm=True)) == 2 * (3 + 2)


def test_kernels_and_dilations_taper_with_depth() -> None:
    model = build_unet(**{**SMALL, "num_layers": 4}, base_kernels=(7, 7), dilation=(3, 3))
    expected = {0: ((7, 7), (3, 3)), 1: ((5, 5), (2, 2)), 2: ((3, 3), (1, 1)), 3: ((3, 3), (1, 1))}
    for level, (kernel, dilation) in expected.items():
        blocks = ["enc"] + (["dec"] if level < 3 else [])  # decoder level f mirrors encoder level f
        for block in blocks:
            for n in (1, 2):
                config = model.get_layer(f"{block}{level}_conv{n}").get_config()
                assert tuple(config["kernel_size"]) == kernel
                assert tuple(config["dilation_rate"]) == dilation


def test_schedules() -> None:
    assert unet.kernel_sizes((5, 3), 3) == [(5, 3), (3, 3), (3, 3)]
    assert unet.kernel_sizes((1, 1), 2) == [(1, 1), (1, 1)]
    assert unet.dilation_rates((2, 1), 3) == [(2, 1), (1, 1), (1, 1)]


@pytest.mark.parametrize("name", ["relu", "elu", "gelu", "Mish"])
def test_activation_is_applied(name: str) -> None:
    model = build_unet(**SMALL, activation=name)
    assert model.get_layer("enc0_conv1").get_config()["activation"] == name.lower()
    assert model.get_layer("mask").get_config()["activation"] == "sigmoid"


def test_mish_fallback_matches_keras(monkeypatch: pytest.MonkeyPatch) -> None:
    x = np.linspace(-5, 5, 11, dtype="float32")
    np.testing.assert_allclose(unet.mish(x), keras.activations.mish(x), rtol=1e-5, atol=1e-6)
    monkeypatch.delattr(keras.activations, "mish")
    model = build_unet(**SMALL, activation="mish")
    assert model.get_layer("enc0_conv1").activation is unet.mish


def test_unknown_activation_suggests_valid_names() -> None:
    with pytest.raises(ConfigError) as info:
        build_unet(**SMALL, activation="rellu")
    assert str(info.value) == "unknown activation 'rellu'; did you mean 'relu'? choose from: elu, gelu, mish, relu"


# --- validation ----------------------------------------------------------------------------------------


def test_size_error_names_size_rule_and_nearest_valid_sizes() -> None:
    with pytest.raises(ConfigError) as info:
        check_input_size(500, 512, 7)
    assert str(info.value) == "image_height 500 is not divisible by 2^(7-1)=64 (num_layers 7); use 448 or 512"


def test_size_error_for_width_below_the_step() -> None:
    with pytest.raises(ConfigError, match=r"^image_width 40 is not divisible by 2\^\(7-1\)=64 .*; use 64$"):
        build_unet(image_height=512, image_width=40)


def test_valid_sizes_pass() -> None:
    check_input_size(64, 192, 7)
    check_input_size(7, 3, 1)  # a single level never pools


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"base_kernels": (4, 4)}, "base_kernels"),
        ({"base_kernels": (3,)}, "base_kernels"),
        ({"dilation": (0, 1)}, "dilation"),
        ({"dropout_rate": 1.0}, r"dropout_rate 1.0 must be in \[0, 1\)"),
        ({"dropout_rate": -0.1}, "dropout_rate"),
        ({"dropout_rate": 0.5}, "deepest level"),
        ({"num_layers": 0}, "num_layers 0 must be an integer >= 1"),
        ({"base_filters": 0}, "base_filters"),
        ({"image_height": 0}, "image_height"),
    ],
)
def test_invalid_parameters_raise_config_error(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build_unet(**{**SMALL, **kwargs})


# --- FLOPs ---------------------------------------------------------------------------------------------


def test_count_flops_by_hand() -> None:
    inputs = keras.Input((8, 6, 3))
    x = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    outputs = keras.layers.Conv2DTranspose(2, 2, strides=2)(x)
    model = keras.Model(inputs, outputs)
    assert count_flops(model) == 2 * (8 * 6 * 3 * 3 * 3 * 4) + 2 * (8 * 6 * 2 * 2 * 4 * 2)


def test_count_flops_of_the_unet_is_positive() -> None:
    assert count_flops(build_unet(**SMALL)) > 0


# --- files ---------------------------------------------------------------------------------------------


def test_save_load_round_trip_keeps_predictions(tmp_path) -> None:
    model = losses.compile_model(
        build_unet(**SMALL, batch_norm=True, activation="gelu", seed=0),
        loss="bce_dice_loss",
        metrics=["binary_accuracy", "dice_coef", "iou_coef", "sensitivity", "specificity"],
        learning_rate=1e-3,
        clipvalue=0.2,
    )
    x = images(2, 64, 64)
    model.fit(x, np.zeros((2, 64, 64, 1), "float32"), epochs=1, verbose=0)  # builds the optimizer state
    path = tmp_path / "models" / "best_model.keras"
    unet.save_model_atomic(model, path)
    assert [p.name for p in path.parent.iterdir()] == ["best_model.keras"]

    loaded = unet.load_model(path)
    assert int(loaded.optimizer.iterations) == 1
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-5, atol=1e-6)
    assert loaded.loss is losses.bce_dice_loss
    results = loaded.evaluate(x, np.zeros((2, 64, 64, 1), "float32"), verbose=0, return_dict=True)
    assert {"loss", "dice_coef", "iou_coef"} <= set(results)


def test_interrupted_save_keeps_the_previous_file(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = build_unet(**SMALL)
    path = tmp_path / "model.keras"
    unet.save_model_atomic(model, path)
    before = path.read_bytes()

    def crash(self, filepath, *args, **kwargs) -> None:
        with open(filepath, "wb") as file:
            file.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(keras.Model, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        unet.save_model_atomic(model, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.keras"]


def test_save_needs_keras_suffix(tmp_path) -> None:
    with pytest.raises(ModelError, match="must end in .keras"):
        unet.save_model_atomic(build_unet(**SMALL), tmp_path / "model.h5")


def test_load_missing_file(tmp_path) -> None:
    path = tmp_path / "nope.keras"
    with pytest.raises(ModelError, match=f"model file {path} not found; check the path"):
        unet.load_model(path)


def test_load_corrupt_file(tmp_path) -> None:
    path = tmp_path / "broken.keras"
    path.write_bytes(b"not a zip archive")
    with pytest.raises(ModelError) as info:
        unet.load_model(path)
    message = str(info.value)
    assert message.startswith(f"model file {path} cannot be loaded (")
    assert "retrain it" in message and "\n" not in message


def test_load_wrong_suffix(tmp_path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"onnx")
    with pytest.raises(ModelError, match=r"is not a \.keras file"):
        unet.load_model(path)


def test_batch_norm_moving_statistics_adapt_within_an_epoch():
    """With Keras' default momentum (0.99) a few dozen steps leave the moving statistics near their initial
    values and the inference-mode model is useless on small datasets; skinseg's BN layers use 0.9."""
    model = build_unet(**SMALL, batch_norm=True)
    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert bns and all(layer.momentum <= 0.9 for layer in bns)
    assert 0.9**70 < 0.01  # one epoch of 70 steps forgets the initial statistics


def test_separable_block_is_leaner_and_keeps_the_interface() -> None:
    from skinseg.training.model import build_unet, count_flops

    kwargs = dict(image_height=64, image_width=64, base_filters=16, num_layers=4, dropout_rate=0.0)
    standard = build_unet(**kwargs)
    separable = build_unet(block="separable", **kwargs)
    assert separable.count_params() < standard.count_params() / 3
    assert count_flops(separable) < count_flops(standard) / 3
    assert separable.get_layer("enc0_conv1").__class__.__name__ == "Conv2D"  # three colour channels: full conv
    assert separable.get_layer("enc1_conv1").__class__.__name__ == "SeparableConv2D"
    assert separable.output.shape == standard.output.shape
    with pytest.raises(ConfigError, match="unknown block 'dense'"):
        build_unet(block="dense", **kwargs)


def test_copy_weights_fine_tunes_from_a_trained_model_and_refuses_another_architecture() -> None:
    from skinseg.training.model import build_unet, copy_weights

    kwargs = dict(image_height=32, image_width=32, base_filters=4, num_layers=3, dropout_rate=0.0)
    source = build_unet(seed=1, **kwargs)
    target = build_unet(seed=2, **{**kwargs, "image_height": 64, "image_width": 48})  # another size is fine
    copy_weights(source, target, source_name="ref.keras")
    for a, b in zip(source.get_weights(), target.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ConfigError, match=r"ref.keras: layer 'enc0_conv1' has weights .*base_filters|same \[model\]"):
        copy_weights(source, build_unet(**{**kwargs, "base_filters": 8}), source_name="ref.keras")
    with pytest.raises(ConfigError, match="no layer 'enc3_conv1'"):
        copy_weights(source, build_unet(**{**kwargs, "num_layers": 4}), source_name="ref.keras")
