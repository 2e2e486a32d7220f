"""Colour pre-processing that a model was trained with, applied identically at inference.

Dermatoscopes and cameras differ in their light source and white balance: the same lesion is pinker under one
and yellower under another. Colour constancy estimates the colour of the illuminant from the image itself and
divides it out. Shades of Gray (Finlayson & Trezzi, 2004) takes the Minkowski ``p``-norm of each channel as the
illuminant (``p = 1`` is Gray World, ``p = ∞`` is max-RGB); ``p = 6`` is what Barata et al. (2015) found best for
dermoscopy and what ISIC 2017–2018 entrants used.

Training applies :func:`apply_color_constancy` to each example at the model's scale before augmentation; the
exporter records the method in the model's metadata (``color_constancy``); the runtime applies the same function
to the working-scale image before tiling. The statistics come from a 256-bin histogram per channel, so the result
is exact and costs one pass over the pixels.
"""

from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np

from skinseg.runtime.defaults import COLOR_CONSTANCY_METHODS

__all__ = ["COLOR_CONSTANCY_METHODS", "apply_color_constancy", "check_color_constancy", "shades_of_gray_gains"]

MAX_GAIN = 4.0  # a channel is never amplified more than this (an image with a near-empty channel)


def check_color_constancy(method: str, p: float) -> tuple[str, float]:
    """``(method, p)`` normalised; ValueError naming the valid choices otherwise."""
    name = str(method).strip().lower()
    if name not in COLOR_CONSTANCY_METHODS:
        raise ValueError(f"color_constancy must be one of {', '.join(COLOR_CONSTANCY_METHODS)}, got {method!r}")
    try:
        power = float(p)
    except (TypeError, ValueError):
        power = math.nan
    if not 1.0 <= power <= 64.0:
        raise ValueError(f"color_constancy_p must be a number from 1 to 64 (6 is the usual choice), got {p!r}")
    return name, power


def shades_of_gray_gains(image: np.ndarray, p: float = 6.0) -> np.ndarray:
    """Per-channel gains (float32, 3) that map the estimated illuminant of an ``H×W×3`` uint8 image to gray.

    The illuminant ``e_c = (mean(I_c^p))^(1/p)`` is normalised to unit length; the gain of channel ``c`` is
    ``1 / (sqrt(3) · ê_c)``, so a gray illuminant leaves the image unchanged.
    """
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an H×W×3 uint8 image, got {image.shape} {image.dtype}")
    levels = (np.arange(256, dtype=np.float64) / 255.0) ** p
    norms = np.empty(3, np.float64)
    for c in range(3):
        hist = cv2.calcHist([image], [c], None, [256], [0, 256]).ravel().astype(np.float64)
        norms[c] = (hist @ levels / max(hist.sum(), 1.0)) ** (1.0 / p)
    length = float(np.linalg.norm(norms))
    if length <= 0.0:  # an all-black image: nothing to correct
        return np.ones(3, np.float32)
    gains = 1.0 / (math.sqrt(3.0) * np.maximum(norms / length, 1e-6))
    return np.minimum(gains, MAX_GAIN).astype(np.float32)


def apply_color_constancy(image: np.ndarray, method: str = "shades_of_gray", p: float = 6.0) -> np.ndarray:
    """``image`` (``H×W×3`` uint8 RGB) with its illuminant divided out; a new array (``method`` "none": the input)."""
    name, power = check_color_constancy(method, p)
    if name == "none":
        return image
    gains = shades_of_gray_gains(image, power)
    levels = np.arange(256, dtype=np.float32)
    lut = np.clip(levels[:, None] * gains[None, :] + 0.5, 0, 255).astype(np.uint8)  # (256, 3): one curve a channel
    return cv2.LUT(image, lut[None])


def describe(method: str, p: float) -> dict[str, Any]:
    """The metadata record of a colour-constancy setting."""
    name, power = check_color_constancy(method, p)
    return {"method": name} if name == "none" else {"method": name, "p": power}
