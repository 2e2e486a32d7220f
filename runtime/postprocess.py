"""From probabilities to a clean mask, its statistics and pictures of it.

Masks are ``H×W`` uint8 arrays with values 0 and 255. Probability maps are float (0–1) or uint8 (0–255,
what :class:`~skinseg.runtime.segmenter.Segmenter` returns to save memory); every function here accepts both.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from skinseg.runtime.defaults import (
    DEFAULT_OVERLAY_COLOR,
    DEFAULT_OVERLAY_OPACITY,
    DEFAULT_THRESHOLD,
)

__all__ = [
    "COMPONENT_RULES",
    "contours_json",
    "fill_holes",
    "keep_largest_component",
    "keep_one_component",
    "mask_stats",
    "overlay",
    "threshold",
]

COMPONENT_RULES = ("area", "mass", "central")
"""How :func:`keep_one_component` chooses: the largest component, the most probability, or the most probability
weighted by closeness to the image centre."""


def _as_mask(mask: np.ndarray) -> np.ndarray:
    if mask.ndim != 2:
        raise ValueError(f"expected an H×W mask, got shape {mask.shape}")
    if mask.dtype != np.uint8:
        mask = np.where(mask > 0, np.uint8(255), np.uint8(0))
    return mask


def threshold(prob: np.ndarray, t: float = DEFAULT_THRESHOLD) -> np.ndarray:
    """Mask of the pixels whose probability is strictly above ``t`` (``prob`` float 0–1 or uint8 0–255)."""
    if not 0.0 <= t <= 1.0:
        raise ValueError(f"threshold must be within [0, 1], got {t!r}")
    cut = t * 255.0 if prob.dtype == np.uint8 else t
    return np.where(prob > cut, np.uint8(255), np.uint8(0))


def _keep_component(mask: np.ndarray, choose: Any) -> np.ndarray:
    """Keep the 8-connected foreground component ``choose(labels, stats, centroids, (x, y))`` names (its label).

    Labelled only where it matters: a mask of one component (counted by its outer contours, which costs a tenth of
    labelling) comes back as is, and otherwise only the foreground's bounding box is labelled (a 29 MP mask's
    labels are 116 MB), at ``(x, y)`` in the mask: the same pixels as labelling the whole mask.
    """
    mask = _as_mask(mask)
    x, y, w, h = cv2.boundingRect(mask)
    if w == 0 or h == 0:
        return mask.copy()
    crop = mask[y : y + h, x : x + w]
    _contours, hierarchy = cv2.findContours(crop, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if hierarchy is None or np.count_nonzero(hierarchy[0][:, 3] < 0) <= 1:
        return mask.copy()
    _n, labels, stats, centroids = cv2.connectedComponentsWithStats(crop, connectivity=8, ltype=cv2.CV_32S)
    chosen = choose(labels, stats, centroids, (x, y))
    out = np.zeros_like(mask)
    out[y : y + h, x : x + w] = np.where(labels == chosen, np.uint8(255), np.uint8(0))
    return out


def keep_largest_component(mask: np.ndarray) -> np.ndarray:
    """Keep only the largest 8-connected foreground component (an empty mask stays empty)."""
    return _keep_component(
        mask, lambda labels, stats, centroids, origin: 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    )


def keep_one_component(mask: np.ndarray, prob: np.ndarray | None = None, *, rule: str = "area") -> np.ndarray:
    """Keep one 8-connected foreground component, chosen by ``rule`` (:data:`COMPONENT_RULES`).

    ``area``: the largest (:func:`keep_largest_component`). ``mass``: the one holding the most probability (the sum
    of ``prob`` over its pixels), so a large region the model is unsure of (an ink mark, a dark corner) loses to a
    smaller one it is sure of. ``central``: that mass weighted by ``1 - d``, ``d`` the distance of the component's
    centroid from the image centre over the half-diagonal (dermoscopy photographs centre the lesion).
    """
    if rule not in COMPONENT_RULES:
        raise ValueError(f"rule must be one of {', '.join(COMPONENT_RULES)}, got {rule!r}")
    if rule == "area" or prob is None:
        return keep_largest_component(mask)
    if prob.shape != mask.shape:
        raise ValueError(f"prob has shape {prob.shape}, the mask {mask.shape}")
    scale = 255.0 if prob.dtype == np.uint8 else 1.0
    height, width = mask.shape
    half_diagonal = np.hypot(width / 2, height / 2)

    def most_probable(labels: np.ndarray, stats: np.ndarray, centroids: np.ndarray, origin: tuple[int, int]) -> int:
        x, y = origin
        best, chosen = -1.0, 1
        # Largest first: a component's score is at most its area (probabilities ≤ 1, weights ≤ 1), so the search
        # stops at the first component smaller than the best score, and only candidates are summed (a box each).
        for i in 1 + np.argsort(-stats[1:, cv2.CC_STAT_AREA], kind="stable"):
            if stats[i, cv2.CC_STAT_AREA] <= best:
                break
            bx, by, bw, bh = (int(v) for v in stats[i, :4])
            inside = labels[by : by + bh, bx : bx + bw] == i
            part = prob[y + by : y + by + bh, x + bx : x + bx + bw]
            score = float(np.sum(part, where=inside, dtype=np.float64)) / scale
            if rule == "central":
                cx, cy = centroids[i, 0] + x - (width - 1) / 2, centroids[i, 1] + y - (height - 1) / 2
                score *= max(0.0, 1.0 - float(np.hypot(cx, cy)) / half_diagonal)
            if score > best:
                best, chosen = score, int(i)
        return chosen

    return _keep_component(mask, most_probable)


_FLOOD_FILL_MAX_SIDE = 65535


def fill_holes(mask: np.ndarray, *, inplace: bool = False) -> np.ndarray:
    """Fill background regions that do not touch the image border (holes inside the lesion).

    ``inplace`` fills ``mask`` itself (a uint8 0/255 mask) instead of a copy: one full-size buffer fewer.
    """
    mask = _as_mask(mask)
    out = mask if inplace else mask.copy()
    if max(mask.shape) + 2 > _FLOOD_FILL_MAX_SIDE:
        # OpenCV's flood fill goes wrong past 65,533 px a side: fill each component's outer contour instead (the
        # same pixels, slower on masks with very many holes).
        contours, hierarchy = cv2.findContours(mask, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
        if hierarchy is not None:
            outer = [c for c, h in zip(contours, hierarchy[0], strict=True) if h[3] < 0]
            cv2.drawContours(out, outer, -1, 255, thickness=cv2.FILLED)
        return out
    # Flood the background from outside a one-pixel frame; what the flood cannot reach is a hole.
    framed = cv2.copyMakeBorder(mask, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    cv2.floodFill(framed, None, (0, 0), 255)
    inner = framed[1:-1, 1:-1]
    cv2.bitwise_not(inner, dst=inner)  # the holes are 255 now, everything else 0
    cv2.bitwise_or(out, inner, dst=out)
    return out


def mask_stats(mask: np.ndarray, prob: np.ndarray | None = None) -> dict[str, Any]:
    """Area, fraction of the image, bounding box, component count and mean probability inside the mask.

    ``bbox`` is ``[x, y, w, h]`` in pixels (``None`` for an empty mask); ``mean_prob`` is within 0–1
    (``None`` without ``prob`` or for an empty mask). Components are 8-connected, counted by their outer borders
    (no full-size label image is made: a 300 MP mask needs no 1.2 GB of labels).
    """
    mask = _as_mask(mask)
    height, width = mask.shape
    area = int(cv2.countNonZero(mask))
    n_components = 0
    if area:  # outer borders are the top level of RETR_CCOMP, lesions inside another's hole included
        _contours, hierarchy = cv2.findContours(mask, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
        n_components = int(np.count_nonzero(hierarchy[0][:, 3] < 0))
    bbox = list(cv2.boundingRect(mask)) if area else None
    mean_prob = None
    if prob is not None and area:
        if prob.shape != mask.shape:
            raise ValueError(f"prob has shape {prob.shape}, the mask {mask.shape}")
        mean_prob = float(cv2.mean(prob, mask=mask)[0]) / (255.0 if prob.dtype == np.uint8 else 1.0)
    return {
        "width": width,
        "height": height,
        "area_px": area,
        "fraction": area / float(height * width),
        "bbox": bbox,
        "n_components": int(n_components),
        "mean_prob": mean_prob,
    }


def overlay(
    rgb: np.ndarray,
    mask: np.ndarray,
    color: tuple[int, int, int] = DEFAULT_OVERLAY_COLOR,
    alpha: float = DEFAULT_OVERLAY_OPACITY,
    *,
    thickness: int | None = None,
) -> np.ndarray:
    """The image with the mask tinted by ``color`` (``alpha`` of it) and outlined by a contour line.

    Blending is done in float32 on the masked pixels only, so there is no uint8 wrap-around and memory grows
    with the lesion, not the photo. ``thickness`` defaults to about 1/500 of the longer side (at least 1 px).
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an H×W×3 uint8 RGB image, got {rgb.shape} {rgb.dtype}")
    mask = _as_mask(mask)
    if mask.shape != rgb.shape[:2]:
        raise ValueError(f"mask has shape {mask.shape}, the image {rgb.shape[:2]}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be within [0, 1], got {alpha!r}")
    out = rgb.copy()
    fg = mask > 0
    tint = np.asarray(color, np.float32) * alpha
    blended = out[fg].astype(np.float32) * (1.0 - alpha) + tint
    out[fg] = np.clip(blended + 0.5, 0, 255).astype(np.uint8)
    if thickness is None:
        thickness = max(1, round(max(mask.shape) / 500))
    contours, _ = cv2.findContours(mask, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(out, contours, -1, tuple(int(c) for c in color), thickness, lineType=cv2.LINE_AA)
    return out


def contours_json(mask: np.ndarray, *, epsilon: float = 0.0) -> dict[str, Any]:
    """The mask as polygons: ``{"width", "height", "polygons": [{"exterior", "holes", "area"}]}``.

    Points are ``[x, y]`` pixel coordinates. ``epsilon`` > 0 simplifies each ring with Douglas–Peucker
    (maximum deviation in pixels). Polygons are sorted by area, largest first.
    """
    mask = _as_mask(mask)

    def ring(c: np.ndarray) -> list[list[int]]:
        if epsilon > 0:
            c = cv2.approxPolyDP(c, epsilon, True)
        return c.reshape(-1, 2).tolist()

    contours, hierarchy = cv2.findContours(mask, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    polygons = []
    if hierarchy is not None:
        h = hierarchy[0]  # [next, previous, first_child, parent]
        for i, c in enumerate(contours):
            if h[i][3] != -1:
                continue  # a hole; collected with its parent
            holes, child = [], h[i][2]
            while child != -1:
                holes.append(ring(contours[child]))
                child = h[child][0]
            polygons.append({"exterior": ring(c), "holes": holes, "area": float(cv2.contourArea(c))})
    polygons.sort(key=lambda p: p["area"], reverse=True)
    return {"width": int(mask.shape[1]), "height": int(mask.shape[0]), "polygons": polygons}
