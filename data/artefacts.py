"""Dermoscopy artefacts, drawn on an image: hair, ink markings, rulers, vignettes and colour casts.

One drawer for both users: the training augmentation (:mod:`skinseg.training.augment`, the ops ``hair``, ``ink``,
``ruler``, ``vignette`` and ``white_balance``) and the synthetic images of :mod:`skinseg.data.synth`.

Real photographs carry things the lesion masks ignore: hairs crossing the lesion, purple marker ink and ruler
scales drawn around it, the dark circular field of view of a dermatoscope, and the colour cast of each camera.
A model that rarely saw them segments them as lesion. Each function here draws one kind of artefact on an
``H×W×3`` uint8 RGB image; the mask never changes (the lesion under a hair is still lesion), but the mask is
passed in so that ink and rulers can be placed on the skin around the lesion, where clinicians draw them.

Sizes are fractions of the image's shorter side, so the artefacts look the same at any training scale.
All randomness comes from the ``np.random.Generator`` passed in: a seed reproduces a sample exactly.
Everything is computed in float32 and saturated, so nothing wraps around.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

__all__ = ["hair", "ink", "ruler", "vignette", "white_balance"]

_SHIFT = 4  # sub-pixel bits for cv2 drawing: coordinates are multiplied by 2**_SHIFT


_ROWS = 256  # rows blended at a time: a large image needs no float copy of itself


def _blend(image: np.ndarray, colour_layer: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """``image·(1−α) + colour·α`` per pixel, α an H×W float32 map in [0, 1]; saturated uint8."""
    out = np.empty_like(image)
    for y in range(0, image.shape[0], _ROWS):
        rows = slice(y, y + _ROWS)
        out[rows] = _blend_band(image[rows], colour_layer[rows], alpha[rows])
    return out


def _blend_band(image: np.ndarray, colour_layer: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha[..., None]
    blended = image.astype(np.float32) * (1.0 - a) + colour_layer * a
    return np.clip(blended + 0.5, 0, 255).astype(np.uint8)


def _fixed(points: np.ndarray) -> np.ndarray:
    return np.round(points * (1 << _SHIFT)).astype(np.int32)


def _bezier(p0: np.ndarray, p1: np.ndarray, p2: np.ndarray, n: int = 24) -> np.ndarray:
    """``n`` points of the quadratic Bézier curve p0 → p2 pulled towards p1."""
    t = np.linspace(0.0, 1.0, n, dtype=np.float32)[:, None]
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2


def hair(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, *, max_hairs: int = 30) -> np.ndarray:
    """hair: dark, thin, curved hairs across the image (1 to ``max_hairs``; thick or fine, black or brown)."""
    height, width = image.shape[:2]
    side = min(height, width)
    count = min(max_hairs, 1 + int(rng.exponential(max_hairs / 3)))  # mostly a few, sometimes many
    base = rng.uniform(10, 70)  # one person's hair colour: near black to dark brown
    tint = np.array([base * 1.25, base, base * 0.8], np.float32)
    alpha = np.zeros((height, width), np.float32)
    for _ in range(count):
        length = rng.uniform(0.25, 1.2) * side
        start = rng.uniform((0, 0), (width, height)).astype(np.float32)
        angle = rng.uniform(0, 2 * math.pi)
        end = start + length * np.array([math.cos(angle), math.sin(angle)], np.float32)
        bend = (start + end) / 2 + rng.normal(0, 0.25 * length, 2).astype(np.float32)
        curve = _fixed(_bezier(start, bend, end))
        thickness = max(1, round(rng.uniform(0.002, 0.009) * side))
        strength = float(rng.uniform(0.55, 0.95))
        # drawn in the hair's own box (the same pixels as on the whole image, without a full-size layer per hair)
        pad = thickness + 2
        (x0, y0), (x1, y1) = (curve.min(axis=0) >> _SHIFT) - pad, (curve.max(axis=0) >> _SHIFT) + pad + 1
        x0, y0, x1, y1 = max(0, x0), max(0, y0), min(width, x1), min(height, y1)
        if x1 <= x0 or y1 <= y0:
            continue
        layer = np.zeros((y1 - y0, x1 - x0), np.uint8)
        shifted = curve - np.array([x0 << _SHIFT, y0 << _SHIFT], np.int32)
        cv2.polylines(layer, [shifted], False, 255, thickness, lineType=cv2.LINE_AA, shift=_SHIFT)
        box = alpha[y0:y1, x0:x1]
        np.maximum(box, layer.astype(np.float32) * (strength / 255.0), out=box)
    colour = np.broadcast_to(tint, image.shape)
    return _blend(image, colour, alpha)


def _skin_points(mask: np.ndarray, rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` random (x, y) points on the skin (mask 0), or anywhere when the lesion fills the image."""
    ys, xs = np.nonzero(mask == 0)
    if len(xs) == 0:
        height, width = mask.shape
        return rng.uniform((0, 0), (width, height), (n, 2)).astype(np.float32)
    picks = rng.integers(0, len(xs), n)
    return np.stack([xs[picks], ys[picks]], axis=-1).astype(np.float32)


def ink(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """ink: purple or blue marker ink on the skin around the lesion: strokes, dots or an arc."""
    height, width = image.shape[:2]
    side = min(height, width)
    hue = rng.uniform(0, 1)  # violet to blue to dark purple
    colour = np.array([110 - 40 * hue, 40 + 30 * hue, 150 + 40 * hue], np.float32) * rng.uniform(0.6, 1.1)
    layer = np.zeros((height, width), np.uint8)
    kind = int(rng.integers(3))
    thickness = max(1, round(rng.uniform(0.01, 0.03) * side))
    if kind == 0:  # a few short strokes (arrows, crosses, letters)
        for start in _skin_points(mask, rng, int(rng.integers(1, 5))):
            end = start + rng.uniform(-0.15, 0.15, 2).astype(np.float32) * side
            cv2.line(layer, tuple(_fixed(start)), tuple(_fixed(end)), 255, thickness, cv2.LINE_AA, _SHIFT)
    elif kind == 1:  # dots
        for centre in _skin_points(mask, rng, int(rng.integers(1, 8))):
            radius = max(1, round(rng.uniform(0.008, 0.03) * side))
            cv2.circle(layer, tuple(_fixed(centre)), radius << _SHIFT, 255, -1, cv2.LINE_AA, _SHIFT)
    else:  # part of a circle drawn around the lesion
        ys, xs = np.nonzero(mask)
        if len(xs):
            centre = np.array([xs.mean(), ys.mean()], np.float32)
            reach = math.sqrt(len(xs) / math.pi)
        else:
            centre = np.array([width / 2, height / 2], np.float32)
            reach = 0.2 * side
        axes = np.full(2, reach * rng.uniform(1.2, 1.8), np.float32)
        start = rng.uniform(0, 360)
        cv2.ellipse(
            layer,
            tuple(_fixed(centre)),
            tuple(_fixed(axes)),
            0,
            start,
            start + rng.uniform(60, 300),
            255,
            thickness,
            cv2.LINE_AA,
            _SHIFT,
        )
    alpha = layer.astype(np.float32) * (float(rng.uniform(0.5, 0.9)) / 255.0)
    return _blend(image, np.broadcast_to(colour, image.shape), alpha)


def ruler(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """ruler: a millimetre scale along one border: a pale or dark band with tick marks and a long-tick rhythm."""
    height, width = image.shape[:2]
    side = min(height, width)
    band = max(4, round(rng.uniform(0.04, 0.1) * side))
    length = max(height, width) * 2
    pale = rng.random() < 0.6
    band_colour = rng.uniform(200, 250) if pale else rng.uniform(20, 60)
    tick_colour = rng.uniform(0, 50) if pale else rng.uniform(200, 250)
    spacing = rng.uniform(0.015, 0.035) * side
    # Draw a horizontal ruler on a canvas, then rotate it onto one border with a small tilt.
    canvas = np.full((band, length, 3), band_colour, np.float32)
    alpha = np.ones((band, length), np.float32)
    for i, x in enumerate(np.arange(rng.uniform(0, spacing), length, spacing)):
        tick = band if i % 10 == 0 else band * (0.7 if i % 5 == 0 else 0.45)
        cv2.line(canvas, (int(x), 0), (int(x), int(tick) - 1), (tick_colour,) * 3, 1)
    tilt = rng.uniform(-8, 8)
    border = int(rng.integers(4))  # top, right, bottom, left
    offset = rng.uniform(0.0, 0.06) * side
    angle = math.radians(tilt + 90 * border)
    # Place the band's centre line near the chosen border, running along it.
    cx, cy = width / 2, height / 2
    reach = (height / 2 if border % 2 == 0 else width / 2) - band / 2 - offset
    centre = (cx + reach * math.sin(angle), cy - reach * math.cos(angle))
    matrix = cv2.getRotationMatrix2D((length / 2, band / 2), -math.degrees(angle), 1.0)
    matrix[:, 2] += np.array(centre) - np.array([length / 2, band / 2])
    size = (width, height)
    warped = cv2.warpAffine(canvas, matrix, size, flags=cv2.INTER_LINEAR, borderValue=0)
    weight = cv2.warpAffine(alpha, matrix, size, flags=cv2.INTER_LINEAR, borderValue=0)
    return _blend(image, warped, weight * float(rng.uniform(0.7, 0.95)))


def vignette(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """vignette: the dark corners of a dermatoscope's circular field of view, with a soft edge."""
    height, width = image.shape[:2]
    half_diagonal = 0.5 * math.hypot(width, height)
    # Radius between just inside the corners and close to the shorter side's half: corners go dark.
    radius = rng.uniform(0.5 * min(width, height) / half_diagonal, 0.95) * half_diagonal
    centre = np.array([width, height], np.float32) / 2 + rng.normal(0, 0.04, 2).astype(np.float32) * (width, height)
    softness = rng.uniform(0.02, 0.12) * half_diagonal
    strength = float(rng.uniform(0.85, 1.0))
    dark = np.full(3, rng.uniform(0, 25), np.float32)
    xs = np.arange(width, dtype=np.float32)[None, :]
    out = np.empty_like(image)
    for y in range(0, height, _ROWS):  # a band of rows at a time: no full-size coordinate grids or alpha map
        ys = np.arange(y, min(y + _ROWS, height), dtype=np.float32)[:, None]
        distance = np.sqrt((xs - centre[0]) ** 2 + (ys - centre[1]) ** 2)  # float64, as the centre
        alpha = np.clip((distance - radius) / softness, 0.0, 1.0) * strength
        band = image[y : y + _ROWS]
        out[y : y + _ROWS] = _blend_band(band, np.broadcast_to(dark, band.shape), alpha)
    return out


def white_balance(
    image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, *, strength: float = 0.15
) -> np.ndarray:
    """white_balance: a camera's colour cast: the three channels scaled by gains within ``1 ± strength``."""
    gains = rng.uniform(1.0 - strength, 1.0 + strength, 3).astype(np.float32)
    levels = np.arange(256, dtype=np.float32)
    lut = np.clip(levels[:, None] * gains[None, :] + 0.5, 0, 255).astype(np.uint8)  # (256, 3)
    return cv2.LUT(image, lut[None])
