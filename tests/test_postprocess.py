"""Post-processing on small masks whose answers are known by construction."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from skinseg.runtime import postprocess as pp
from skinseg.runtime.postprocess import (
    contours_json,
    fill_holes,
    keep_largest_component,
    mask_stats,
    overlay,
    threshold,
)


def two_blobs() -> np.ndarray:
    m = np.zeros((20, 30), np.uint8)
    m[2:12, 2:12] = 255  # 100 px
    m[15:18, 20:23] = 255  # 9 px
    return m


def test_threshold_float_and_uint8_agree():
    prob = np.array([[0.0, 0.5, 0.51, 1.0]], np.float32)
    np.testing.assert_array_equal(threshold(prob, 0.5), [[0, 0, 255, 255]])
    np.testing.assert_array_equal(threshold(np.array([[0, 127, 128, 255]], np.uint8), 0.5), [[0, 0, 255, 255]])
    assert threshold(prob, 0.5).dtype == np.uint8
    with pytest.raises(ValueError, match="threshold must be within"):
        threshold(prob, 1.5)


def test_keep_largest_component():
    out = keep_largest_component(two_blobs())
    assert out.sum() // 255 == 100 and out[16, 21] == 0
    empty = np.zeros((5, 5), np.uint8)
    np.testing.assert_array_equal(keep_largest_component(empty), empty)


def test_keep_largest_labels_only_the_foreground_box_and_keeps_the_same_pixels():
    """Against labelling the whole mask: random masks, one component, nested components, ties, empty."""
    import cv2

    def reference(m: np.ndarray) -> np.ndarray:
        n, labels, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8, ltype=cv2.CV_32S)
        if n <= 2:
            return m.copy()
        return np.where(labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA])), np.uint8(255), np.uint8(0))

    rng = np.random.default_rng(1)
    masks = [((rng.random((h, w)) < p) * 255).astype(np.uint8) for h, w, p in [(40, 60, 0.3), (33, 21, 0.55)] * 5]
    ring = np.zeros((30, 30), np.uint8)
    ring[5:25, 5:25] = 255
    ring[8:22, 8:22] = 0
    ring[12:18, 12:18] = 255  # a component inside the ring's hole
    masks += [ring, two_blobs(), np.zeros((9, 9), np.uint8), np.full((4, 4), 255, np.uint8)]
    for m in masks:
        np.testing.assert_array_equal(keep_largest_component(m), reference(m))


def test_fill_holes_keeps_border_background():
    m = np.zeros((20, 20), np.uint8)
    m[3:15, 3:15] = 255
    m[6:9, 6:9] = 0  # hole
    m[0:5, 17:20] = 255  # touches the border: the background around it is not a hole
    out = fill_holes(m)
    assert out[7, 7] == 255 and out[0, 0] == 0 and out[19, 19] == 0
    assert (out > 0).sum() == (m > 0).sum() + 9


def test_fill_holes_past_opencvs_flood_fill_limit_fills_the_same_pixels(monkeypatch):
    """Past 65,533 px a side OpenCV's flood fill floods everything; the contour path fills what the flood would."""
    import skinseg.runtime.postprocess as post

    rng = np.random.default_rng(0)
    masks = [((rng.random((h, w)) < p) * 255).astype(np.uint8) for h, w, p in [(40, 60, 0.5), (31, 17, 0.7)]]
    masks.append(fill_holes_keeps_border_background_mask())
    flooded = [fill_holes(m) for m in masks]
    monkeypatch.setattr(post, "_FLOOD_FILL_MAX_SIDE", 8)  # the contour path on small masks
    for m, expected in zip(masks, flooded, strict=True):
        np.testing.assert_array_equal(fill_holes(m), expected)
    monkeypatch.undo()
    wide = np.zeros((12, 66000), np.uint8)
    wide[:, 1000:2000] = 255
    wide[5, 1500] = 0  # a hole
    out = fill_holes(wide)
    assert (out > 0).sum() == 1000 * 12 and out[5, 1500] == 255


def fill_holes_keeps_border_background_mask() -> np.ndarray:
    m = np.zeros((20, 20), np.uint8)
    m[3:15, 3:15] = 255
    m[6:9, 6:9] = 0
    m[0:5, 17:20] = 255
    return m


def test_mask_stats():
    m = two_blobs()
    prob = np.where(m > 0, np.uint8(204), np.uint8(10))
    s = mask_stats(m, prob)
    assert s["area_px"] == 109 and s["fraction"] == pytest.approx(109 / 600)
    assert s["bbox"] == [2, 2, 21, 16] and s["n_components"] == 2
    assert s["mean_prob"] == pytest.approx(0.8)
    assert mask_stats(m, prob.astype(np.float32) / 255)["mean_prob"] == pytest.approx(0.8)
    empty = mask_stats(np.zeros((4, 4), np.uint8), np.zeros((4, 4), np.float32))
    assert empty["area_px"] == 0 and empty["bbox"] is None and empty["mean_prob"] is None
    assert empty["n_components"] == 0


@pytest.mark.parametrize("value", [0, 255])
def test_overlay_does_not_wrap(value):
    rgb = np.full((50, 60, 3), value, np.uint8)
    m = np.zeros((50, 60), np.uint8)
    m[10:40, 10:50] = 255
    out = overlay(rgb, m, color=(0, 255, 0), alpha=0.4)
    inside = out[25, 30].astype(int)
    expected = np.round(np.array([value, value, value]) * 0.6 + np.array([0, 255, 0]) * 0.4)
    np.testing.assert_array_equal(inside, expected)
    np.testing.assert_array_equal(out[0, 0], rgb[0, 0])  # outside untouched
    assert out.dtype == np.uint8 and (out[10, 10:50] != rgb[10, 10:50]).any()  # contour drawn
    np.testing.assert_array_equal(rgb, value)  # input not modified


def test_contours_json_with_hole():
    m = np.zeros((30, 30), np.uint8)
    m[5:25, 5:25] = 255
    m[12:16, 12:16] = 0
    m[0:2, 28:30] = 255
    doc = contours_json(m)
    assert (doc["width"], doc["height"]) == (30, 30) and len(doc["polygons"]) == 2
    big = doc["polygons"][0]
    assert len(big["holes"]) == 1 and big["area"] > doc["polygons"][1]["area"]
    xs = [p[0] for p in big["exterior"]]
    assert (min(xs), max(xs)) == (5, 24)
    assert contours_json(np.zeros((3, 3), np.uint8))["polygons"] == []


def _ink_beside_a_lesion() -> tuple[np.ndarray, np.ndarray]:
    """A large component the model is unsure of near the corner (an ink mark) and a smaller, certain, central one."""
    mask = np.zeros((200, 300), np.uint8)
    prob = np.zeros((200, 300), np.uint8)
    mask[5:55, 5:85], prob[5:55, 5:85] = 255, 140  # 4000 px, p 0.55 (mass 2196), at the corner
    mask[80:130, 120:180], prob[80:130, 120:180] = 255, 250  # 3000 px, p 0.98 (mass 2941), central
    return mask, prob


@pytest.mark.parametrize(("rule", "kept"), [("area", (40, 50)), ("mass", (100, 150)), ("central", (100, 150))])
def test_keep_one_component_by_rule(rule, kept):
    mask, prob = _ink_beside_a_lesion()
    out = pp.keep_one_component(mask, prob, rule=rule)
    assert out[kept] == 255
    assert cv2.connectedComponents(out)[0] == 2  # background and one component
    assert np.array_equal(out[out > 0], mask[out > 0])  # a subset of the mask, whole


def test_mass_rule_weighs_probability_not_area_and_works_on_float_maps():
    mask, prob = _ink_beside_a_lesion()
    # certainty equal: the larger one holds more mass
    same = np.where(mask > 0, np.float32(0.9), np.float32(0))
    assert pp.keep_one_component(mask, same, rule="mass")[40, 50] == 255
    assert pp.keep_one_component(mask, prob.astype(np.float32) / 255, rule="mass")[100, 150] == 255


def test_central_rule_prefers_the_centred_component_of_equal_mass():
    mask = np.zeros((200, 200), np.uint8)
    mask[0:30, 0:30] = 255  # corner
    mask[85:115, 85:115] = 255  # centre, same size
    prob = np.where(mask > 0, np.uint8(230), np.uint8(0))
    assert pp.keep_one_component(mask, prob, rule="central")[100, 100] == 255
    assert pp.keep_one_component(mask, prob, rule="central")[10, 10] == 0


def test_keep_one_component_edge_cases():
    empty = np.zeros((20, 20), np.uint8)
    assert not pp.keep_one_component(empty, empty, rule="mass").any()
    mask, prob = _ink_beside_a_lesion()
    assert np.array_equal(pp.keep_one_component(mask, None, rule="mass"), pp.keep_largest_component(mask))
    with pytest.raises(ValueError, match="rule must be one of"):
        pp.keep_one_component(mask, prob, rule="biggest")
    with pytest.raises(ValueError, match="shape"):
        pp.keep_one_component(mask, prob[:10], rule="mass")
