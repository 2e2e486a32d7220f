"""Sliding-window inference: plan tiles, cut them out, blend the predictions back together.

The pieces are separate so each can be tested and reused (as MONAI splits its splitter and merger):

- :func:`plan_tiles` lays out tile positions;
- :func:`extract_tiles` cuts a batch of tiles (reflect-padded where the image is smaller than a tile);
- :class:`GaussianWeights` is the importance map that down-weights tile borders;
- :class:`Stitcher` accumulates weighted predictions into one map;
- :func:`tiled_predict` ties them together for a ``predict_fn``.

Memory at the working scale is the image, one float32 sum map and one float32 weight map, plus one batch.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from skinseg.runtime.defaults import DEFAULT_BATCH_SIZE, DEFAULT_OVERLAP, MAX_TILE
from skinseg.runtime.errors import ParameterError, param

__all__ = [
    "GaussianWeights",
    "PredictFn",
    "Stitcher",
    "TileSpec",
    "extract_tiles",
    "flip_tta",
    "parse_tile",
    "plan_tiles",
    "tiled_predict",
]

PredictFn = Callable[[np.ndarray], np.ndarray]
"""Maps an ``N×th×tw×C`` float32 batch (values 0–255) to ``N×th×tw`` probabilities."""


@dataclass(frozen=True)
class TileSpec:
    """One tile: its top-left corner ``(y, x)`` in the image, the part ``h×w`` that lies inside the image, and
    the full tile size ``th×tw`` (larger than ``h×w`` only where the image is smaller than the tile)."""

    y: int
    x: int
    h: int
    w: int
    th: int
    tw: int

    @property
    def padded(self) -> bool:
        return self.h < self.th or self.w < self.tw


def _whole(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and float(value).is_integer()


def parse_tile(tile: int | Sequence[int], name: str = "tile") -> tuple[int, int]:
    """A tile size as ``(height, width)``: from one whole number (a square tile) or two, each from 1 to
    :data:`~skinseg.runtime.defaults.MAX_TILE`. The one tile parser: the segmenter, the batch and the tiling
    functions all read a tile through it. :class:`~skinseg.runtime.errors.ParameterError` (a ``ValueError``)
    naming the parameter ``name`` otherwise (a text, a fraction, one or three numbers, zero, a typo of 40000)."""
    if _whole(tile):
        values: tuple = (tile, tile)
    elif isinstance(tile, Sequence) and not isinstance(tile, (str, bytes)) or isinstance(tile, np.ndarray):
        values = tuple(tile)
    else:
        values = ()
    if len(values) != 2 or not all(_whole(v) and 1 <= v <= MAX_TILE for v in values):
        raise ParameterError(
            f"{param(name)} must be one or two integers from 1 to {MAX_TILE} (height, width), got {tile!r}"
        )
    return int(values[0]), int(values[1])


def _check_overlap(overlap: float) -> float:
    if not 0.0 <= overlap < 1.0:
        raise ValueError(
            f"overlap must be a fraction of the tile within [0, 1), got {overlap!r}; {DEFAULT_OVERLAP:g} is a good "
            "default"
        )
    return float(overlap)


def _starts(size: int, tile: int, stride: int) -> list[int]:
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile, stride))
    starts.append(size - tile)  # the last tile is flush with the border
    return starts


def plan_tiles(height: int, width: int, tile: int | Sequence[int], overlap: float = DEFAULT_OVERLAP) -> list[TileSpec]:
    """Tile positions covering an ``height×width`` image, row by row.

    Neighbouring tiles overlap by ``overlap`` of the tile (stride = ``tile·(1−overlap)``, at least one pixel);
    the last row and column are moved flush with the border instead of running past it. Along a side shorter
    than the tile there is one tile, reflect-padded by :func:`extract_tiles`.
    """
    th, tw = parse_tile(tile)
    overlap = _check_overlap(overlap)
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got {height}×{width}")
    sy = max(1, int(th * (1.0 - overlap)))
    sx = max(1, int(tw * (1.0 - overlap)))
    return [
        TileSpec(y, x, min(th, height - y), min(tw, width - x), th, tw)
        for y in _starts(height, th, sy)
        for x in _starts(width, tw, sx)
    ]


def extract_tiles(image: np.ndarray, specs: Sequence[TileSpec], *, dtype: np.dtype | type = np.float32) -> np.ndarray:
    """Cut ``specs`` out of an ``H×W×C`` (or ``H×W``) image into an ``N×th×tw×C`` (or ``N×th×tw``) batch.

    Tiles that stick out of the image are filled by mirror reflection of its border.
    """
    if not specs:
        raise ValueError("extract_tiles needs at least one TileSpec")
    th, tw = specs[0].th, specs[0].tw
    if any((s.th, s.tw) != (th, tw) for s in specs):
        raise ValueError("all tiles of a batch must have the same size")
    batch = np.empty((len(specs), th, tw, *image.shape[2:]), dtype=dtype)
    for i, s in enumerate(specs):
        crop = image[s.y : s.y + s.h, s.x : s.x + s.w]
        if s.padded:
            pad = ((0, th - s.h), (0, tw - s.w)) + ((0, 0),) * (image.ndim - 2)
            crop = np.pad(crop, pad, mode="reflect")
        batch[i] = crop
    return batch


@dataclass(frozen=True)
class GaussianWeights:
    """Importance map for blending tiles: a 2-D Gaussian with ``sigma = tile · sigma_fraction`` peaking at 1.

    Weights are clamped to ``min_weight`` so that pixels only near tile borders (image corners) still count.
    """

    tile: tuple[int, int]
    sigma_fraction: float = 1.0 / 8.0
    min_weight: float = 1e-3

    def __post_init__(self) -> None:
        object.__setattr__(self, "tile", parse_tile(self.tile))
        if not self.sigma_fraction > 0:
            raise ValueError(f"sigma_fraction must be positive, got {self.sigma_fraction!r}")
        if not 0 < self.min_weight <= 1:
            raise ValueError(f"min_weight must be within (0, 1], got {self.min_weight!r}")

    @cached_property
    def array(self) -> np.ndarray:
        """The ``th×tw`` float32 weight map (read-only)."""
        axes = []
        for n in self.tile:
            centre, sigma = (n - 1) / 2.0, n * self.sigma_fraction
            axes.append(np.exp(-0.5 * ((np.arange(n) - centre) / sigma) ** 2))
        w = np.outer(axes[0], axes[1])
        w = np.maximum(w / w.max(), self.min_weight).astype(np.float32)
        w.flags.writeable = False
        return w


class Stitcher:
    """Accumulates weighted tile predictions into one ``height×width`` map.

    ``add`` sums ``prob·w`` and ``w`` in float32; ``finalize`` divides them (in place) and returns the map.
    ``weights`` is the ``th×tw`` importance map (uniform when ``None``).
    """

    def __init__(self, height: int, width: int, weights: np.ndarray | None = None) -> None:
        self.height, self.width = int(height), int(width)
        self._weights = None if weights is None else np.asarray(weights, np.float32)
        self._sum: np.ndarray | None = np.zeros((self.height, self.width), np.float32)
        self._wsum: np.ndarray | None = np.zeros((self.height, self.width), np.float32)
        self._result: np.ndarray | None = None

    def add(self, batch_probs: np.ndarray, specs: Sequence[TileSpec]) -> None:
        """Add an ``N×th×tw`` batch of predictions for ``specs`` (``N = len(specs)``)."""
        if self._result is not None:
            raise RuntimeError("Stitcher.add() after finalize(); create a new Stitcher per image")
        if batch_probs.ndim != 3 or len(batch_probs) != len(specs):
            raise ValueError(f"expected an N×th×tw batch with N={len(specs)}, got shape {batch_probs.shape}")
        assert self._sum is not None and self._wsum is not None
        for prob, s in zip(batch_probs, specs, strict=True):
            if prob.shape != (s.th, s.tw):
                raise ValueError(f"tile prediction has shape {prob.shape}, expected {(s.th, s.tw)}")
            region = (slice(s.y, s.y + s.h), slice(s.x, s.x + s.w))
            p = prob[: s.h, : s.w]
            if self._weights is None:
                self._sum[region] += p
                self._wsum[region] += 1.0
            else:
                w = self._weights[: s.h, : s.w]
                self._sum[region] += p * w
                self._wsum[region] += w

    def finalize(self) -> np.ndarray:
        """The blended ``height×width`` float32 map; pixels no tile covered are 0. Safe to call again."""
        if self._result is None:
            assert self._sum is not None and self._wsum is not None
            np.divide(self._sum, self._wsum, out=self._sum, where=self._wsum > 0)
            self._result, self._sum, self._wsum = self._sum, None, None
        return self._result


def tiled_predict(
    image: np.ndarray,
    predict_fn: PredictFn,
    *,
    tile: int | Sequence[int],
    overlap: float = DEFAULT_OVERLAP,
    batch_size: int = DEFAULT_BATCH_SIZE,
    weights: np.ndarray | None = None,
    on_tile: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Predict an ``H×W`` float32 probability map for an ``H×W×C`` image, tile by tile.

    ``predict_fn`` gets ``N×th×tw×C`` float32 batches (values as in ``image``, e.g. 0–255) with
    ``N ≤ batch_size`` and returns ``N×th×tw`` (or ``N×th×tw×1``) probabilities. Overlapping predictions
    are blended with ``weights`` (default :class:`GaussianWeights` of the tile). ``on_tile(done, total)`` is
    called after each batch.
    """
    if image.ndim not in (2, 3) or image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"expected an H×W or H×W×C image, got shape {image.shape}")
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    th, tw = parse_tile(tile)
    height, width = image.shape[:2]
    specs = plan_tiles(height, width, (th, tw), overlap)
    if weights is None:
        weights = GaussianWeights((th, tw)).array
    elif weights.shape != (th, tw):
        raise ValueError(f"weights have shape {weights.shape}, expected the tile size {(th, tw)}")
    stitcher = Stitcher(height, width, weights)
    for start in range(0, len(specs), batch_size):
        chunk = specs[start : start + batch_size]
        probs = np.asarray(predict_fn(extract_tiles(image, chunk)))
        if probs.ndim == 4 and probs.shape[-1] == 1:
            probs = probs[..., 0]
        if probs.shape != (len(chunk), th, tw):
            raise ValueError(
                f"predict_fn returned shape {probs.shape} for {len(chunk)} tiles of {th}×{tw}; "
                f"expected {(len(chunk), th, tw)}"
            )
        stitcher.add(probs.astype(np.float32, copy=False), chunk)
        if on_tile is not None:
            on_tile(start + len(chunk), len(specs))
    return stitcher.finalize()


def flip_tta(predict_fn: PredictFn) -> PredictFn:
    """Test-time augmentation by flips: ``predict_fn`` applied to each tile as it is, mirrored left-right,
    mirrored top-bottom and both, each prediction mirrored back, and the four averaged.

    The four variants go to ``predict_fn`` as one batch of ``4·N`` tiles (one call, as the model sees them).
    """

    def predict(batch: np.ndarray) -> np.ndarray:
        n = len(batch)
        flipped = np.concatenate([batch, batch[:, :, ::-1], batch[:, ::-1], batch[:, ::-1, ::-1]])
        probs = np.asarray(predict_fn(flipped), np.float32)
        if probs.ndim == 4 and probs.shape[-1] == 1:
            probs = probs[..., 0]
        if probs.shape[0] != 4 * n:
            raise ValueError(f"predict_fn returned {probs.shape[0]} predictions for {4 * n} tiles")
        out = probs[:n] + probs[n : 2 * n, :, ::-1]
        out += probs[2 * n : 3 * n, ::-1]
        out += probs[3 * n :, ::-1, ::-1]
        return out * np.float32(0.25)

    return predict
