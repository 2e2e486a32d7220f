"""Per-image segmentation metrics: counts from masks, scores from counts, the defined empty-mask cases."""

from __future__ import annotations

import numpy as np
import pytest

from skinseg.runtime.metrics import (
    METRICS,
    Counts,
    accuracy,
    confusion_counts,
    dice,
    jaccard,
    scores,
    sensitivity,
    specificity,
    thresholded_jaccard,
)


def _mask(shape: tuple[int, int], *boxes: tuple[int, int, int, int]) -> np.ndarray:
    m = np.zeros(shape, np.uint8)
    for y0, y1, x0, x1 in boxes:
        m[y0:y1, x0:x1] = 255
    return m


def test_counts_of_overlapping_boxes():
    pred = _mask((10, 10), (0, 4, 0, 5))  # 20 px
    true = _mask((10, 10), (2, 6, 0, 5))  # 20 px, rows 2–3 shared: 10 px
    c = confusion_counts(pred, true)
    assert c == Counts(tp=10, fp=10, fn=10, tn=70)
    assert c.total == 100
    assert jaccard(c) == pytest.approx(10 / 30)
    assert dice(c) == pytest.approx(20 / 40)
    assert accuracy(c) == pytest.approx(80 / 100)
    assert sensitivity(c) == pytest.approx(10 / 20)
    assert specificity(c) == pytest.approx(70 / 80)
    assert thresholded_jaccard(c) == 0.0  # 1/3 < 0.65


def test_scores_from_hand_counts():
    c = Counts(tp=80, fp=10, fn=10, tn=900)
    s = scores(c)
    assert list(s) == list(METRICS)
    assert s["jaccard"] == pytest.approx(0.8)
    assert s["thresholded_jaccard"] == pytest.approx(0.8)
    assert s["dice"] == pytest.approx(160 / 180)
    assert s["accuracy"] == pytest.approx(0.98)
    assert s["sensitivity"] == pytest.approx(80 / 90)
    assert s["specificity"] == pytest.approx(900 / 910)


@pytest.mark.parametrize(
    ("tp", "fp", "fn", "expected"),
    [(65, 35, 0, 0.65), (64, 36, 0, 0.0), (100, 0, 0, 1.0), (0, 0, 0, 1.0)],
)
def test_thresholded_jaccard_counts_below_065_as_zero(tp, fp, fn, expected):
    assert thresholded_jaccard(Counts(tp, fp, fn, 10)) == pytest.approx(expected)


def test_both_empty_is_perfect():
    empty = np.zeros((4, 6), np.uint8)
    c = confusion_counts(empty, empty)
    assert c == Counts(0, 0, 0, 24)
    assert scores(c) == {name: 1.0 for name in METRICS}


def test_all_wrong_scores_zero():
    true = _mask((4, 4), (0, 2, 0, 4))
    c = confusion_counts(255 - true, true)
    assert c == Counts(tp=0, fp=8, fn=8, tn=0)
    assert scores(c) == {name: 0.0 for name in METRICS}


def test_empty_truth_with_false_positives():
    c = confusion_counts(_mask((4, 4), (0, 1, 0, 2)), np.zeros((4, 4), np.uint8))
    assert c == Counts(tp=0, fp=2, fn=0, tn=14)
    assert jaccard(c) == 0.0 and dice(c) == 0.0
    assert sensitivity(c) == 1.0  # no lesion to miss
    assert specificity(c) == pytest.approx(14 / 16)


def test_bool_and_single_channel_masks():
    pred = np.zeros((3, 3, 1), bool)
    pred[0, 0, 0] = True
    true = np.zeros((3, 3), np.uint8)
    true[0, 0] = 1
    assert confusion_counts(pred, true) == Counts(1, 0, 0, 8)


def test_shape_mismatch_names_both_sizes():
    with pytest.raises(ValueError, match=r"prediction is 4×3 but the ground truth is 8×6"):
        confusion_counts(np.zeros((3, 4), np.uint8), np.zeros((6, 8), np.uint8))


def test_not_a_2d_mask():
    with pytest.raises(ValueError, match="2-D"):
        confusion_counts(np.zeros((2, 2, 3), np.uint8), np.zeros((2, 2, 3), np.uint8))


def test_counts_add_and_refuse_negatives():
    assert Counts(1, 2, 3, 4) + Counts(1, 1, 1, 1) == Counts(2, 3, 4, 5)
    with pytest.raises(ValueError):
        Counts(-1, 0, 0, 0)


def test_mask_iou_is_the_jaccard_of_the_counts():
    from skinseg.runtime.metrics import mask_iou

    rng = np.random.default_rng(0)
    a, b = rng.random((20, 30)) > 0.5, rng.random((20, 30)) > 0.6
    assert mask_iou(a, b) == pytest.approx(jaccard(confusion_counts(a, b)))
    assert mask_iou(a.ravel(), b.ravel()) == mask_iou(a, b)  # flat masks (a region) work too
    assert mask_iou(np.zeros(5), np.zeros(5)) == 1.0
    with pytest.raises(ValueError, match="different shapes"):
        mask_iou(a, b[:-1])
