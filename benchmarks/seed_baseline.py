"""The seed toolkit's tiled inference, re-created for measurement only.

The seed project (``Tensorflow-Image-Segmentation-API``, ``TensorflowUNetTiledInferencer.infer_tiles``) segments a
large image like this, and so does :func:`seed_tiled_segment`:

1. open the image with PIL, at its native resolution;
2. lay a grid of ``split_size`` (512) px cells over it, ``ceil(W/512) × ceil(H/512)`` cells, no overlap;
3. for each cell, crop the cell plus a ``margin`` (``overlapping``, 64 px) on every side that stays inside the
   image (PIL pads a crop that runs past the right/bottom border with black), and resize the crop to the
   model's input size (512×512);
4. call the Keras model with ``model.predict`` on that one tile (batch 1);
5. turn the probabilities into an 8-bit image (``p·255`` truncated), resize it back to the crop size, cut the
   margins off and paste the cell into a full-size grey mask;
6. binarize the mask at the threshold (strictly above ``threshold·255``, as skinseg does).

The seed also predicts the whole image squashed to 512×512 and ANDs that mask with the tiled one
(``bitwise_blending``); that pass is optional here (``whole_image=True``) because it is not part of the tiled
work being compared. Colour order is kept RGB (the seed swaps to BGR because its models were trained on
OpenCV-read images; skinseg models are trained on RGB). This module is benchmark code: it is written from the
description above, it does not import the seed's code and it is not used by skinseg itself.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image


@dataclass
class SeedResult:
    """A segmented image: ``mask`` (H×W uint8, 0/255), the tile count and seconds per phase."""

    mask: np.ndarray
    tiles: int
    phases: dict[str, float] = field(default_factory=dict)


def seed_grid(width: int, height: int, split_size: int = 512) -> list[tuple[int, int]]:
    """Top-left corners ``(left, upper)`` of the seed's non-overlapping ``split_size`` cells, row by row."""
    rows = math.ceil(height / split_size)
    cols = math.ceil(width / split_size)
    return [(split_size * i, split_size * j) for j in range(rows) for i in range(cols)]


def crop_box(left: int, upper: int, width: int, height: int, split_size: int, margin: int) -> tuple[int, ...]:
    """The seed's crop box for a cell: the cell grown by ``margin`` on each side where that stays in the image.

    A margin is dropped (not clipped) on a side where it would leave the image; the cell itself may still run
    past the right/bottom border, and PIL fills that part with black.
    """
    right, lower = left + split_size, upper + split_size
    lm = margin if left - margin >= 0 else 0
    um = margin if upper - margin >= 0 else 0
    rm = margin if right + margin <= width else 0
    bm = margin if lower + margin <= height else 0
    return (left - lm, upper - um, right + rm, lower + bm)


def keras_predict_one(model: Any, tile: np.ndarray) -> np.ndarray:
    """The seed's per-tile call: ``model.predict`` on a batch of one ``H×W×3`` tile; returns ``H×W`` floats."""
    batch = np.expand_dims(tile.astype(np.float32), 0)
    out = model.predict(batch, batch_size=1, verbose=0)
    return np.asarray(out)[0, :, :, 0]


def seed_tiled_segment(
    model: Any,
    image: Image.Image,
    *,
    model_size: tuple[int, int] = (512, 512),
    split_size: int = 512,
    margin: int = 64,
    threshold: float = 0.5,
    whole_image: bool = False,
    predict: Any = keras_predict_one,
) -> SeedResult:
    """Segment a PIL RGB ``image`` the seed's way (see the module docstring); ``model_size`` is (width, height).

    ``predict(model, tile)`` maps one ``h×w×3`` uint8 RGB tile to ``h×w`` probabilities (default: Keras
    ``model.predict``, batch 1). Phases timed: ``tiling`` (crop + resize in), ``model``, ``blend`` (mask
    resize out, crop, paste) and ``post`` (binarize, whole-image AND).
    """
    phases: dict[str, float] = defaultdict(float)
    width, height = image.size
    background = Image.new("L", (width, height), 0)
    cells = seed_grid(width, height, split_size)
    for left, upper in cells:
        t0 = time.perf_counter()
        box = crop_box(left, upper, width, height, split_size, margin)
        cropped = image.crop(box)
        cw, ch = cropped.size
        tile = np.asarray(cropped.resize(model_size))
        t1 = time.perf_counter()
        prob = predict(model, tile)
        t2 = time.perf_counter()
        tile_mask = Image.fromarray((prob * 255.0).astype(np.uint8)).resize((cw, ch))
        lm, um = left - box[0], upper - box[1]
        tile_mask = tile_mask.crop((lm, um, min(lm + split_size, cw), min(um + split_size, ch)))
        background.paste(tile_mask, (left, upper))
        t3 = time.perf_counter()
        phases["tiling"] += t1 - t0
        phases["model"] += t2 - t1
        phases["blend"] += t3 - t2

    t0 = time.perf_counter()
    cut = threshold * 255.0  # strictly above, as skinseg's skinseg.runtime.postprocess.threshold
    mask = np.where(np.asarray(background) > cut, 255, 0).astype(np.uint8)
    phases["post"] += time.perf_counter() - t0
    tiles = len(cells)
    if whole_image:
        t0 = time.perf_counter()
        squashed = np.asarray(image.resize(model_size))
        t1 = time.perf_counter()
        whole = predict(model, squashed)
        t2 = time.perf_counter()
        whole_mask = Image.fromarray((whole * 255.0).astype(np.uint8)).resize((width, height), Image.NEAREST)
        mask = np.where((np.asarray(whole_mask) > cut) & (mask > 0), 255, 0).astype(np.uint8)
        phases["tiling"] += t1 - t0
        phases["model"] += t2 - t1
        phases["post"] += time.perf_counter() - t2
        tiles += 1
    return SeedResult(mask=mask, tiles=tiles, phases=dict(phases))


def seed_segment_file(model: Any, path: str, **kwargs: Any) -> SeedResult:
    """Open ``path`` with PIL (the seed's reader) and :func:`seed_tiled_segment` it; adds a ``decode`` phase."""
    t0 = time.perf_counter()
    with Image.open(path) as im:
        image = im.convert("RGB")
        image.load()
    decode = time.perf_counter() - t0
    result = seed_tiled_segment(model, image, **kwargs)
    result.phases["decode"] = decode
    return result
