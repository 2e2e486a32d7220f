"""Segmentation metrics from confusion counts, as segmentation_models.pytorch does it (``get_stats`` + ``iou_score``).

:func:`confusion_counts` compares a predicted mask with the ground truth pixel by pixel and returns the four
counts; every score is then a small function of a :class:`Counts`. Scores are per image (averaging is the
caller's business), so an image's figures do not depend on the others.

Empty denominators are defined, not NaN: a score whose denominator is 0 is **1.0**, because the prediction made
no mistake of that kind. Both masks empty gives Jaccard = Dice = 1; no lesion in the truth gives sensitivity 1
(nothing to miss), a truth that is all lesion gives specificity 1.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = [
    "ISIC_JACCARD_THRESHOLD",
    "METRICS",
    "Counts",
    "accuracy",
    "confusion_counts",
    "dice",
    "jaccard",
    "mask_iou",
    "scores",
    "sensitivity",
    "specificity",
    "thresholded_jaccard",
]

ISIC_JACCARD_THRESHOLD = 0.65
"""ISIC 2018 task 1: an image's Jaccard below this counts as 0 (a segmentation too poor to be of use)."""


@dataclass(frozen=True)
class Counts:
    """Pixel counts of one prediction against its ground truth (lesion = positive)."""

    tp: int
    fp: int
    fn: int
    tn: int

    def __post_init__(self) -> None:
        if min(self.tp, self.fp, self.fn, self.tn) < 0:
            raise ValueError(f"counts must be non-negative, got {self}")

    @property
    def total(self) -> int:
        """Number of pixels compared."""
        return self.tp + self.fp + self.fn + self.tn

    def __add__(self, other: Counts) -> Counts:
        """Pooled counts (for micro-averaged scores over several images)."""
        return Counts(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn, self.tn + other.tn)


def _foreground(mask: np.ndarray, name: str) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim == 3 and mask.shape[2] == 1:
        mask = mask[..., 0]
    if mask.ndim != 2:
        raise ValueError(f"{name} must be a 2-D H×W mask, got shape {mask.shape}")
    return mask.astype(bool, copy=False)


def confusion_counts(pred_mask: np.ndarray, true_mask: np.ndarray) -> Counts:
    """Count true/false positives/negatives of ``pred_mask`` against ``true_mask``.

    Both are ``H×W`` (or ``H×W×1``) arrays of the same size where any non-zero value is lesion (uint8 0/255 or
    bool). Raises :class:`ValueError` naming both shapes when they differ: resize the prediction to the ground
    truth's resolution first, never the reverse.
    """
    pred = _foreground(pred_mask, "pred_mask")
    true = _foreground(true_mask, "true_mask")
    if pred.shape != true.shape:
        raise ValueError(
            f"prediction is {pred.shape[1]}×{pred.shape[0]} but the ground truth is {true.shape[1]}×{true.shape[0]}; "
            "bring the prediction to the ground truth's size before scoring"
        )
    total = pred.size
    n_pred = int(np.count_nonzero(pred))
    n_true = int(np.count_nonzero(true))
    tp = int(np.count_nonzero(pred & true))
    fp, fn = n_pred - tp, n_true - tp
    return Counts(tp=tp, fp=fp, fn=fn, tn=total - tp - fp - fn)


def _ratio(numerator: int, denominator: int) -> float:
    return 1.0 if denominator == 0 else numerator / denominator


def jaccard(c: Counts) -> float:
    """Intersection over union, ``tp / (tp + fp + fn)``; 1.0 when both masks are empty."""
    return _ratio(c.tp, c.tp + c.fp + c.fn)


def dice(c: Counts) -> float:
    """F1 / Dice coefficient, ``2·tp / (2·tp + fp + fn)``; 1.0 when both masks are empty."""
    return _ratio(2 * c.tp, 2 * c.tp + c.fp + c.fn)


def thresholded_jaccard(c: Counts, threshold: float = ISIC_JACCARD_THRESHOLD) -> float:
    """ISIC 2018's score: the Jaccard, or 0 when it is below ``threshold`` (0.65)."""
    j = jaccard(c)
    return j if j >= threshold else 0.0


def accuracy(c: Counts) -> float:
    """Fraction of pixels classified correctly, ``(tp + tn) / total``."""
    return _ratio(c.tp + c.tn, c.total)


def sensitivity(c: Counts) -> float:
    """Recall of the lesion, ``tp / (tp + fn)``; 1.0 when the truth has no lesion."""
    return _ratio(c.tp, c.tp + c.fn)


def specificity(c: Counts) -> float:
    """Recall of the background, ``tn / (tn + fp)``; 1.0 when the truth is all lesion."""
    return _ratio(c.tn, c.tn + c.fp)


METRICS: dict[str, Callable[[Counts], float]] = {
    "jaccard": jaccard,
    "dice": dice,
    "thresholded_jaccard": thresholded_jaccard,
    "accuracy": accuracy,
    "sensitivity": sensitivity,
    "specificity": specificity,
}
"""Every per-image score by name, in the order reports show them."""


def scores(c: Counts) -> dict[str, float]:
    """All :data:`METRICS` of one image."""
    return {name: fn(c) for name, fn in METRICS.items()}


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Jaccard of two masks of the same shape (any non-zero value is foreground); 1.0 when both are empty.

    The one IoU of the project: reports, the exporter's agreement of a quantized model with fp32, and the
    benchmarks all use it (``a`` and ``b`` may be flat, e.g. masks restricted to a region).
    """
    a, b = np.asarray(a) != 0, np.asarray(b) != 0
    if a.shape != b.shape:
        raise ValueError(f"masks have different shapes: {a.shape} and {b.shape}")
    tp = int(np.count_nonzero(a & b))
    return jaccard(Counts(tp=tp, fp=int(np.count_nonzero(a)) - tp, fn=int(np.count_nonzero(b)) - tp, tn=0))
