"""Tests for skinseg.training.losses: formulas, registries and compilation."""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from skinseg.runtime.errors import ConfigError  # noqa: E402
from skinseg.training import losses  # noqa: E402
from skinseg.training.model import build_unet  # noqa: E402

pytestmark = pytest.mark.train

EPS = 1e-7  # keras.config.epsilon(): the clip Keras applies to probabilities in binary cross-entropy


def value(tensor) -> float:
    return float(keras.ops.convert_to_numpy(tensor))


def masks(shape=(2, 8, 8, 1)) -> tuple[np.ndarray, np.ndarray]:
    """A mask covering the left half and its complement."""
    y = np.zeros(shape, dtype="float32")
    y[:, :, : shape[2] // 2] = 1.0
    return y, 1.0 - y


# --- formulas ------------------------------------------------------------------------------------------


def test_perfect_prediction_gives_zero_overlap_losses() -> None:
    y, _ = masks()
    assert value(losses.dice_loss(y, y)) == pytest.approx(0.0, abs=1e-6)
    assert value(losses.iou_loss(y, y)) == pytest.approx(0.0, abs=1e-6)
    assert value(losses.dice_coef(y, y)) == pytest.approx(1.0)
    assert value(losses.iou_coef(y, y)) == pytest.approx(1.0)


def test_disjoint_prediction_gives_overlap_losses_near_one() -> None:
    y, other = masks()
    n = y.sum()  # pixels in each mask
    assert value(losses.dice_loss(y, other)) == pytest.approx(1 - 1 / (2 * n + 1))
    assert value(losses.iou_loss(y, other)) == pytest.approx(1 - 1 / (2 * n + 1))
    assert value(losses.dice_loss(y, other)) > 0.99


def test_empty_mask_and_empty_prediction_are_finite() -> None:
    empty = np.zeros((1, 8, 8, 1), dtype="float32")
    for name in ("bce", "dice", "iou", "bce_dice", "bce_iou"):
        assert np.isfinite(value(losses.get_loss(name)(empty, empty))), name
    assert value(losses.dice_coef(empty, empty)) == pytest.approx(1.0)
    assert value(losses.iou_coef(empty, empty)) == pytest.approx(1.0)
    assert value(losses.sensitivity(empty, empty)) == 0.0
    assert value(losses.specificity(empty, empty)) == pytest.approx(1.0)


def test_bce_matches_numpy() -> None:
    y_true = np.array([[0.0, 1.0, 1.0, 0.0, 1.0, 0.0]], dtype="float32").reshape(1, 2, 3, 1)
    y_pred = np.array([[0.1, 0.9, 0.4, 0.7, 1.0, 0.0]], dtype="float32").reshape(1, 2, 3, 1)
    p = np.clip(y_pred.astype("float64"), EPS, 1 - EPS)
    expected = -np.mean(y_true * np.log(p) + (1 - y_true) * np.log(1 - p))
    assert value(losses.bce_loss(y_true, y_pred)) == pytest.approx(expected, rel=1e-5)


def test_hybrid_losses_average_their_parts() -> None:
    rng = np.random.default_rng(0)
    y_true = (rng.random((2, 8, 8, 1)) > 0.5).astype("float32")
    y_pred = rng.random((2, 8, 8, 1)).astype("float32")
    bce = value(losses.bce_loss(y_true, y_pred))
    dice = value(losses.dice_loss(y_true, y_pred))
    iou = value(losses.iou_loss(y_true, y_pred))
    assert value(losses.bce_dice_loss(y_true, y_pred)) == pytest.approx((bce + dice) / 2, rel=1e-5)
    assert value(losses.bce_iou_loss(y_true, y_pred)) == pytest.approx((bce + iou) / 2, rel=1e-5)


def test_dice_and_iou_on_partial_overlap() -> None:
    y_true = np.array([1, 1, 1, 0], dtype="float32")
    y_pred = np.array([1, 1, 0, 1], dtype="float32")  # intersection 2, |A| = |B| = 3, union 4
    assert value(losses.dice_coef(y_true, y_pred)) == pytest.approx((2 * 2 + 1) / (3 + 3 + 1))
    assert value(losses.iou_coef(y_true, y_pred)) == pytest.approx((2 + 1) / (4 + 1))


def test_sensitivity_and_specificity_round_predictions() -> None:
    y_true = np.array([1, 1, 1, 1, 0, 0], dtype="uint8")  # integer masks are accepted
    y_pred = np.array([0.9, 0.6, 0.2, 0.4, 0.3, 0.8], dtype="float32")
    assert value(losses.sensitivity(y_true, y_pred)) == pytest.approx(2 / 4)
    assert value(losses.specificity(y_true, y_pred)) == pytest.approx(1 / 2)


# --- registries ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("bce", losses.bce_loss),
        ("binary_crossentropy", losses.bce_loss),
        ("dice", losses.dice_loss),
        ("dice_loss", losses.dice_loss),
        ("iou", losses.iou_loss),
        ("iou_loss", losses.iou_loss),
        ("bce_dice", losses.bce_dice_loss),
        ("bce_dice_loss", losses.bce_dice_loss),
        ("BCE_IOU_LOSS", losses.bce_iou_loss),
        (" bce_iou ", losses.bce_iou_loss),
    ],
)
def test_get_loss_accepts_canonical_and_seed_spellings(name: str, expected) -> None:
    assert losses.get_loss(name) is expected


def test_unknown_loss_suggests_the_closest_name() -> None:
    with pytest.raises(ConfigError) as info:
        losses.get_loss("bce_dise_loss")
    message = str(info.value)
    assert "unknown loss 'bce_dise_loss'" in message
    assert "did you mean 'bce_dice_loss'?" in message
    assert "bce_iou" in message and "binary_crossentropy" in message
    assert "\n" not in message


def test_unknown_name_without_close_match_lists_choices() -> None:
    with pytest.raises(ConfigError, match=r"unknown loss 'zzz'; choose from: bce, "):
        losses.get_loss("zzz")


def test_get_metrics_resolves_seed_spellings_to_log_names() -> None:
    names = ["binary_accuracy", "dice_coef", "iou_coef", "sensitivity", "specificity", "dice"]
    metrics = losses.get_metrics(names)
    assert [getattr(m, "name", getattr(m, "__name__", None)) for m in metrics] == names[:-1]
    assert isinstance(metrics[0], keras.metrics.BinaryAccuracy)


def test_unknown_metric_suggests_the_closest_name() -> None:
    with pytest.raises(ConfigError, match=r"unknown metric 'dice_coeff'; did you mean 'dice_coef'\?"):
        losses.get_metrics(["binary_accuracy", "dice_coeff"])


def test_custom_objects_are_registered_for_saving() -> None:
    for name, fn in losses.custom_objects().items():
        assert keras.saving.get_registered_name(fn) == f"skinseg>{name}"
        assert keras.saving.get_registered_object(f"skinseg>{name}") is fn


# --- compile_model -------------------------------------------------------------------------------------


def tiny_model() -> keras.Model:
    return build_unet(image_height=16, image_width=16, base_filters=2, num_layers=2, seed=0)


@pytest.mark.parametrize(("name", "cls"), [("Adam", "Adam"), ("adamw", "AdamW")])
def test_compile_model_sets_optimizer(name: str, cls: str) -> None:
    model = losses.compile_model(
        tiny_model(),
        loss="bce_dice_loss",
        metrics=["dice_coef"],
        learning_rate=1e-3,
        clipvalue=0.5,
        optimizer=name,
    )
    assert type(model.optimizer).__name__ == cls
    assert model.optimizer.clipvalue == 0.5
    assert model.loss is losses.bce_dice_loss


def test_compile_model_rejects_bad_settings() -> None:
    model = tiny_model()
    with pytest.raises(ConfigError, match=r"unknown optimizer 'Adamx'; did you mean 'Adam'"):
        losses.compile_model(model, loss="bce", metrics=[], learning_rate=1e-3, clipvalue=None, optimizer="Adamx")
    with pytest.raises(ConfigError, match="learning_rate 0 must be > 0"):
        losses.compile_model(model, loss="bce", metrics=[], learning_rate=0, clipvalue=None)
    with pytest.raises(ConfigError, match="unknown loss"):
        losses.compile_model(model, loss="focal", metrics=[], learning_rate=1e-3, clipvalue=None)


def test_training_logs_use_metric_names() -> None:
    model = losses.compile_model(
        tiny_model(),
        loss="bce_iou_loss",
        metrics=["binary_accuracy", "dice_coef", "iou_coef", "sensitivity", "specificity"],
        learning_rate=1e-3,
        clipvalue=None,
    )
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (4, 16, 16, 3)).astype("float32")
    y = (rng.random((4, 16, 16, 1)) > 0.5).astype("float32")
    history = model.fit(x, y, validation_data=(x, y), batch_size=2, epochs=1, verbose=0)
    for name in ("loss", "binary_accuracy", "dice_coef", "iou_coef", "sensitivity", "specificity"):
        assert name in history.history and f"val_{name}" in history.history, name
        assert np.isfinite(history.history[name][0])


def test_jaccard_loss_averages_images_so_small_lesions_count() -> None:
    """Per image, not over the batch: missing a small lesion entirely costs as much as missing a large one."""
    y = np.zeros((2, 16, 16, 1), "float32")
    y[0, :8] = 1.0  # a large lesion, predicted perfectly
    y[1, :2, :2] = 1.0  # a small one, missed
    p = y.copy()
    p[1] = 0.0
    per_image = value(losses.jaccard_loss(y, p))
    assert per_image == pytest.approx(1 - (1.0 + 1 / 5) / 2, abs=1e-6)  # image 2: (0 + 1) / (4 + 1)
    assert value(losses.iou_loss(y, p)) < 0.05  # batch-wide: the large lesion hides the miss
    assert value(losses.jaccard_loss(y, y)) == pytest.approx(0.0, abs=1e-6)


def test_lovasz_loss_is_the_jaccard_loss_on_binary_predictions() -> None:
    """On 0/1 predictions the Lovász extension equals 1 − IoU per image (Berman et al., 2018), and it is 0 when
    the prediction is right, growing with the error in between."""
    rng = np.random.default_rng(0)
    y = (rng.random((3, 12, 12, 1)) > 0.6).astype("float32")
    p = (rng.random((3, 12, 12, 1)) > 0.5).astype("float32")
    inter = (y * p).sum(axis=(1, 2, 3))
    union = np.maximum(y, p).sum(axis=(1, 2, 3))
    assert value(losses.lovasz_loss(y, p)) == pytest.approx(float(np.mean(1 - inter / union)), abs=1e-5)
    assert value(losses.lovasz_loss(y, y)) == pytest.approx(0.0, abs=1e-6)
    soft = [value(losses.lovasz_loss(y, np.clip(y + e * (1 - 2 * y), 0, 1))) for e in (0.1, 0.3, 0.6)]
    assert soft[0] < soft[1] < soft[2]


def test_tversky_loss_costs_a_missed_lesion_pixel_more_than_a_spare_one() -> None:
    """β > α: the same number of pixels wrong costs more as false negatives than as false positives (what pushes
    an under-segmenting model outwards); a right prediction costs nothing; α = β = 1 would be the Jaccard loss."""
    y = np.zeros((1, 16, 16, 1), "float32")
    y[0, 4:12, 4:12] = 1.0  # 64 lesion pixels
    under = y.copy()
    under[0, 4:6, 4:12] = 0.0  # 16 lesion pixels missed
    over = y.copy()
    over[0, 12:14, 4:12] = 1.0  # 16 skin pixels added
    assert value(losses.tversky_loss(y, y)) == pytest.approx(0.0, abs=1e-6)
    assert value(losses.tversky_loss(y, under)) > value(losses.tversky_loss(y, over)) > 0.0
    assert value(losses.jaccard_loss(y, under)) > value(losses.jaccard_loss(y, over))  # Jaccard: the union differs
    expected_under = 1 - (48 + losses.SMOOTH) / (48 + losses.TVERSKY_BETA * 16 + losses.SMOOTH)
    assert value(losses.tversky_loss(y, under)) == pytest.approx(expected_under, abs=1e-5)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("tversky", losses.tversky_loss),
        ("bce_tversky_loss", losses.bce_tversky_loss),
        ("jaccard", losses.jaccard_loss),
        ("jaccard_loss", losses.jaccard_loss),
        ("lovasz", losses.lovasz_loss),
        ("bce_jaccard_loss", losses.bce_jaccard_loss),
        ("bce_lovasz", losses.bce_lovasz_loss),
        ("jacard_loss", losses.iou_loss),  # the seed's spelling keeps its batch-wide meaning
    ],
)
def test_jaccard_family_names(name: str, expected) -> None:
    assert losses.get_loss(name) is expected


def test_new_losses_train_a_model() -> None:
    """Each loss gives finite gradients through a small UNet (a NaN here would end training at step one)."""
    import tensorflow as tf

    model = build_unet(image_height=32, image_width=32, base_filters=4, num_layers=3, dropout_rate=0.0)
    y = np.zeros((2, 32, 32, 1), "float32")
    y[:, 8:24, 8:24] = 1.0
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    for fn in (
        losses.jaccard_loss,
        losses.lovasz_loss,
        losses.bce_jaccard_loss,
        losses.bce_lovasz_loss,
        losses.bce_tversky_loss,
    ):
        with tf.GradientTape() as tape:
            loss = fn(y, model(x, training=True))
        grads = tape.gradient(loss, model.trainable_weights)
        assert all(np.isfinite(g.numpy()).all() for g in grads if g is not None), fn.__name__


def test_the_config_check_at_load_knows_exactly_the_names_training_accepts() -> None:
    """`skinseg config` checks names without TensorFlow; its lists must be the training registries' names."""
    from skinseg.data import config as schema
    from skinseg.training import model

    assert set(schema.LOSS_NAMES) == set(losses._LOSSES) | set(losses.LOSS_ALIASES)
    assert set(schema.METRIC_NAMES) == set(losses._METRICS) | set(losses.METRIC_ALIASES)
    assert set(schema.OPTIMIZER_NAMES) == set(losses.OPTIMIZERS)
    assert {n.lower() for n in schema.ACTIVATION_NAMES} == {n.lower() for n in model.ACTIVATIONS}
    for name in schema.LOSS_NAMES:
        assert callable(losses.get_loss(name))
