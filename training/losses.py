"""Segmentation losses, metrics and model compilation for binary masks.

The formulas follow the Tensorflow-Image-Segmentation-API project (``src/losses.py``) so its INI configs
(``loss = "bce_dice_loss"``, ``metrics = ["dice_coef"]``) mean the same thing here, with two deliberate
differences: IoU is smoothed like Dice, so an empty mask against an empty prediction scores 1 instead of
NaN, and everything is written with ``keras.ops`` so it runs on any Keras 3 backend.

Every custom function is registered with Keras under the ``skinseg`` package, so a saved ``.keras``
model reloads with its loss and metrics once this module is imported.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable
from typing import Any

import keras
from keras import ops

from skinseg.runtime.errors import ConfigError

__all__ = [
    "LOSS_ALIASES",
    "METRIC_ALIASES",
    "OPTIMIZERS",
    "SMOOTH",
    "bce_dice_loss",
    "bce_iou_loss",
    "bce_jaccard_loss",
    "bce_loss",
    "bce_lovasz_loss",
    "bce_tversky_loss",
    "compile_model",
    "custom_objects",
    "dice_coef",
    "dice_loss",
    "get_loss",
    "get_metrics",
    "iou_coef",
    "iou_loss",
    "jaccard_loss",
    "lovasz_loss",
    "sensitivity",
    "specificity",
    "tversky_loss",
    "unknown_name_message",
]

SMOOTH = 1.0
"""Added to the numerator and denominator of Dice and IoU: empty mask vs empty prediction gives 1."""

LossFn = Callable[[Any, Any], Any]
_register = keras.saving.register_keras_serializable(package="skinseg")


def unknown_name_message(kind: str, name: str, valid: Iterable[str]) -> str:
    """One-line message for an unknown ``name``, with a did-you-mean and the valid choices."""
    choices = sorted(set(valid))
    close = difflib.get_close_matches(name, choices, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ";"
    return f"unknown {kind} '{name}'{hint} choose from: {', '.join(choices)}"


def _flat(y_true: Any, y_pred: Any) -> tuple[Any, Any]:
    """Both tensors as flat float32 vectors (the seed computes Dice/IoU over the whole batch)."""
    y_true = ops.reshape(ops.cast(y_true, "float32"), (-1,))
    y_pred = ops.reshape(ops.cast(y_pred, "float32"), (-1,))
    return y_true, y_pred


# --- metrics -------------------------------------------------------------------------------------------


@_register
def dice_coef(y_true: Any, y_pred: Any) -> Any:
    """Sørensen–Dice coefficient ``(2|A∩B| + s) / (|A| + |B| + s)`` over the batch, in [0, 1]."""
    y_true, y_pred = _flat(y_true, y_pred)
    intersection = ops.sum(y_true * y_pred)
    return (2.0 * intersection + SMOOTH) / (ops.sum(y_true) + ops.sum(y_pred) + SMOOTH)


@_register
def iou_coef(y_true: Any, y_pred: Any) -> Any:
    """Jaccard index ``(|A∩B| + s) / (|A∪B| + s)`` over the batch, in [0, 1]."""
    y_true, y_pred = _flat(y_true, y_pred)
    intersection = ops.sum(y_true * y_pred)
    union = ops.sum(y_true + y_pred - y_true * y_pred)
    return (intersection + SMOOTH) / (union + SMOOTH)


@_register
def sensitivity(y_true: Any, y_pred: Any) -> Any:
    """Recall of the rounded prediction: true positives / actual positives (0 when there are none)."""
    y_true, y_pred = _flat(y_true, y_pred)
    true_positives = ops.sum(ops.round(ops.clip(y_true * y_pred, 0.0, 1.0)))
    positives = ops.sum(ops.round(ops.clip(y_true, 0.0, 1.0)))
    return true_positives / (positives + keras.config.epsilon())


@_register
def specificity(y_true: Any, y_pred: Any) -> Any:
    """True negatives / actual negatives of the rounded prediction (0 when there are none)."""
    y_true, y_pred = _flat(y_true, y_pred)
    true_negatives = ops.sum(ops.round(ops.clip((1.0 - y_true) * (1.0 - y_pred), 0.0, 1.0)))
    negatives = ops.sum(ops.round(ops.clip(1.0 - y_true, 0.0, 1.0)))
    return true_negatives / (negatives + keras.config.epsilon())


# --- losses --------------------------------------------------------------------------------------------


@_register
def bce_loss(y_true: Any, y_pred: Any) -> Any:
    """Mean binary cross-entropy of probabilities (clipped to ``[eps, 1 - eps]`` by Keras).

    ``y_pred`` is not reshaped, so on TensorFlow Keras can still see the sigmoid and use its logits.
    """
    y_pred = ops.cast(y_pred, "float32")
    return ops.mean(ops.binary_crossentropy(ops.cast(y_true, "float32"), y_pred))


@_register
def dice_loss(y_true: Any, y_pred: Any) -> Any:
    """``1 - dice_coef``: 0 for a perfect prediction, close to 1 for a disjoint one."""
    return 1.0 - dice_coef(y_true, y_pred)


@_register
def iou_loss(y_true: Any, y_pred: Any) -> Any:
    """``1 - iou_coef`` (the Jaccard loss)."""
    return 1.0 - iou_coef(y_true, y_pred)


def _per_image(y_true: Any, y_pred: Any) -> tuple[Any, Any]:
    """Both tensors as ``(batch, pixels)`` float32."""
    batch = ops.shape(y_pred)[0]
    return (
        ops.reshape(ops.cast(y_true, "float32"), (batch, -1)),
        ops.reshape(ops.cast(y_pred, "float32"), (batch, -1)),
    )


@_register
def jaccard_loss(y_true: Any, y_pred: Any) -> Any:
    """``1 - mean over images of the soft Jaccard index``: what the ISIC mean-Jaccard score averages, image by
    image, so a small lesion weighs as much as a large one (the batch-wide :func:`iou_loss` lets large ones win).
    The 2017 challenge winner (Yuan, 2017) trained on this Jaccard distance."""
    y_true, y_pred = _per_image(y_true, y_pred)
    intersection = ops.sum(y_true * y_pred, axis=1)
    union = ops.sum(y_true + y_pred - y_true * y_pred, axis=1)
    return 1.0 - ops.mean((intersection + SMOOTH) / (union + SMOOTH))


@_register
def lovasz_loss(y_true: Any, y_pred: Any) -> Any:
    """The Lovász extension of the Jaccard loss on probability errors, per image (Berman et al., CVPR 2018).

    Pixels are sorted by their error ``|y − p|``; each error is weighted by how much it raises the Jaccard loss
    of the mask made of the pixels with larger errors, so the loss is a tight convex surrogate of ``1 − IoU``.
    """
    y_true, y_pred = _per_image(y_true, y_pred)
    errors = ops.abs(y_true - y_pred)
    order = ops.flip(ops.argsort(errors, axis=1), axis=1)  # descending
    errors_sorted = ops.take_along_axis(errors, order, axis=1)
    gt_sorted = ops.take_along_axis(y_true, order, axis=1)
    total = ops.sum(gt_sorted, axis=1, keepdims=True)
    intersection = total - ops.cumsum(gt_sorted, axis=1)
    union = total + ops.cumsum(1.0 - gt_sorted, axis=1)
    jaccard = 1.0 - intersection / union
    grad = ops.concatenate([jaccard[:, :1], jaccard[:, 1:] - jaccard[:, :-1]], axis=1)
    return ops.mean(ops.sum(errors_sorted * ops.stop_gradient(grad), axis=1))


TVERSKY_ALPHA = 0.3  # weight of false positives in the Tversky index
TVERSKY_BETA = 0.7  # weight of false negatives: above alpha, a missed lesion pixel costs more than a spare one


@_register
def tversky_loss(y_true: Any, y_pred: Any) -> Any:
    """``1 - mean over images of the soft Tversky index`` ``TP / (TP + α·FP + β·FN)`` (Salehi et al., 2017), with
    ``β > α``: false negatives cost more than false positives, against a model's bias to under-segment (the
    Jaccard index is ``α = β = 1``)."""
    y_true, y_pred = _per_image(y_true, y_pred)
    tp = ops.sum(y_true * y_pred, axis=1)
    fp = ops.sum((1.0 - y_true) * y_pred, axis=1)
    fn = ops.sum(y_true * (1.0 - y_pred), axis=1)
    return 1.0 - ops.mean((tp + SMOOTH) / (tp + TVERSKY_ALPHA * fp + TVERSKY_BETA * fn + SMOOTH))


@_register
def bce_tversky_loss(y_true: Any, y_pred: Any) -> Any:
    """``(bce + tversky_loss) / 2``."""
    return (bce_loss(y_true, y_pred) + tversky_loss(y_true, y_pred)) / 2.0


@_register
def bce_jaccard_loss(y_true: Any, y_pred: Any) -> Any:
    """``(bce + jaccard_loss) / 2``: pixel-wise calibration plus the per-image Jaccard the score measures."""
    return (bce_loss(y_true, y_pred) + jaccard_loss(y_true, y_pred)) / 2.0


@_register
def bce_lovasz_loss(y_true: Any, y_pred: Any) -> Any:
    """``(bce + lovasz_loss) / 2``."""
    return (bce_loss(y_true, y_pred) + lovasz_loss(y_true, y_pred)) / 2.0


@_register
def bce_dice_loss(y_true: Any, y_pred: Any) -> Any:
    """``(bce + dice_loss) / 2``, the seed's default hybrid loss."""
    return (bce_loss(y_true, y_pred) + dice_loss(y_true, y_pred)) / 2.0


@_register
def bce_iou_loss(y_true: Any, y_pred: Any) -> Any:
    """``(bce + iou_loss) / 2``."""
    return (bce_loss(y_true, y_pred) + iou_loss(y_true, y_pred)) / 2.0


# --- registries ----------------------------------------------------------------------------------------

_LOSSES: dict[str, LossFn] = {
    "bce": bce_loss,
    "dice": dice_loss,
    "iou": iou_loss,
    "bce_dice": bce_dice_loss,
    "bce_iou": bce_iou_loss,
    "jaccard": jaccard_loss,
    "lovasz": lovasz_loss,
    "bce_jaccard": bce_jaccard_loss,
    "bce_lovasz": bce_lovasz_loss,
    "tversky": tversky_loss,
    "bce_tversky": bce_tversky_loss,
}

LOSS_ALIASES: dict[str, str] = {
    "binary_crossentropy": "bce",
    "bce_loss": "bce",
    "dice_loss": "dice",
    "iou_loss": "iou",
    "jacard_loss": "iou",
    "jaccard_loss": "jaccard",
    "jaccard_image": "jaccard",
    "lovasz_loss": "lovasz",
    "bce_jaccard_loss": "bce_jaccard",
    "bce_lovasz_loss": "bce_lovasz",
    "bce_dice_loss": "bce_dice",
    "bce_iou_loss": "bce_iou",
    "tversky_loss": "tversky",
    "bce_tversky_loss": "bce_tversky",
}
"""Other spellings accepted by :func:`get_loss` (the seed project's config names) → canonical name."""

_METRICS: dict[str, Callable[[], Any]] = {
    "binary_accuracy": lambda: keras.metrics.BinaryAccuracy(name="binary_accuracy"),
    "dice_coef": lambda: dice_coef,
    "iou_coef": lambda: iou_coef,
    "sensitivity": lambda: sensitivity,
    "specificity": lambda: specificity,
}

METRIC_ALIASES: dict[str, str] = {
    "dice": "dice_coef",
    "iou": "iou_coef",
    "jacard_similarity": "iou_coef",
    "jaccard_similarity": "iou_coef",
}
"""Other spellings accepted by :func:`get_metrics` → canonical name (which is also the Keras log name)."""

OPTIMIZERS: dict[str, type[keras.optimizers.Optimizer]] = {
    "Adam": keras.optimizers.Adam,
    "AdamW": keras.optimizers.AdamW,
}


def _canonical(name: str, table: dict[str, Any], aliases: dict[str, str], kind: str) -> str:
    """The key of ``table`` that ``name`` (any case, or an alias) means; ConfigError if none."""
    lookup = {key.lower(): key for key in table} | {alias.lower(): key for alias, key in aliases.items()}
    key = lookup.get(str(name).strip().lower())
    if key is None:
        raise ConfigError(unknown_name_message(kind, str(name), [*table, *aliases]))
    return key


def get_loss(name: str) -> LossFn:
    """The loss function called ``name`` (canonical or seed spelling); unknown names raise ConfigError."""
    return _LOSSES[_canonical(name, _LOSSES, LOSS_ALIASES, "loss")]


def get_metrics(names: Iterable[str]) -> list[Any]:
    """Metric objects/functions for ``names``, in order, duplicates dropped; unknown raise ConfigError.

    Each metric shows up in Keras logs under its canonical name (``dice_coef``, ``val_iou_coef``...).
    """
    keys = dict.fromkeys(_canonical(n, _METRICS, METRIC_ALIASES, "metric") for n in names)
    return [_METRICS[key]() for key in keys]


def custom_objects() -> dict[str, Any]:
    """Every custom loss and metric by its function name, for ``keras.saving.load_model``."""
    functions = [*_LOSSES.values(), dice_coef, iou_coef, sensitivity, specificity]
    return {fn.__name__: fn for fn in functions}


def compile_model(
    model: keras.Model,
    *,
    loss: str,
    metrics: list[str],
    learning_rate: float | Any,
    clipvalue: float | None,
    optimizer: str = "Adam",
) -> keras.Model:
    """Compile ``model`` in place with an Adam/AdamW optimizer and the named loss and metrics; return it.

    ``learning_rate`` is a number or a ``keras.optimizers.schedules.LearningRateSchedule``."""
    if isinstance(learning_rate, (int, float)) and not learning_rate > 0:
        raise ConfigError(f"learning_rate {learning_rate} must be > 0 (e.g. 0.0001)")
    if clipvalue is not None and not clipvalue > 0:
        raise ConfigError(f"clipvalue {clipvalue} must be > 0, or left out for no gradient clipping")
    optimizer_cls = OPTIMIZERS[_canonical(optimizer, OPTIMIZERS, {}, "optimizer")]
    model.compile(
        optimizer=optimizer_cls(learning_rate=learning_rate, clipvalue=clipvalue),
        loss=get_loss(loss),
        metrics=get_metrics(metrics),
    )
    return model
