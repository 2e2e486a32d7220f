"""How good is a mask, without its ground truth: a per-image quality estimate and a review flag.

The model's probability map already says much about whether its mask can be trusted: a lesion it is sure of has
probabilities near 1 inside, near 0 outside and a sharp step between them; a mask it guessed has a wide band of
uncertain pixels, a soft border, stray blobs, or runs into the frame. :func:`quality_features` measures such
things on the probability map at the working scale (what the model produced, before the resize to the photo's
size: a few hundred pixels a side, so it costs well under a millisecond), and a small linear model
(:class:`QualityModel`) turns them into an **estimated Jaccard** of the mask against what an expert would draw
(0–1). An image whose estimate is below the model's ``review_below`` is flagged for a person to look at.

The coefficients are fitted per segmentation model (``skinseg export`` fits them on the run's validation images,
:mod:`skinseg.data.quality_fit`) and stored in its metadata (``ModelMetadata.quality``); a model that carries none
is estimated with :data:`GENERIC`, fitted on the bundled model. The estimate is a statistical guess from the
model's own output, not a diagnosis and not a measurement: docs/quality.md gives its measured accuracy.

Pure functions on arrays; numpy and OpenCV only, imported when features are computed (the metadata reads this
module).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from skinseg.runtime.defaults import DEFAULT_FILL_HOLES, DEFAULT_KEEP_LARGEST, DEFAULT_THRESHOLD

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "FEATURES",
    "GENERIC",
    "MAX_FEATURE_SIDE",
    "QualityModel",
    "needs_review",
    "parse_quality",
    "quality_features",
    "review_figures",
    "spearman",
]

FEATURES = (
    "mean_prob",  # mean probability inside the mask
    "soft_jaccard",  # sum(p·m) / sum(p + m − p·m): the mask's Jaccard against the probabilities taken as truth
    "uncertain",  # log10 of the pixels with 0.2 < p < 0.8 per mask pixel (+0.001)
    "stability",  # area(p > 0.7) / area(p > 0.3): how much the mask moves with the threshold
    "edge",  # mean probability step across the mask's border (Sobel magnitude per working pixel)
    "frame",  # share of the image's border pixels inside the mask
    "components",  # log2 of the connected components above the threshold (before keep-largest)
    "outside",  # share of the probability mass (p > 0.5) outside the mask
    "log_area",  # log10 of the mask's share of the image
    "compactness",  # 4π·area / perimeter² of the mask (1 for a disc)
    "off_centre",  # distance of the mask's centroid from the image centre, over the half-diagonal
)
"""The features :func:`quality_features` computes, by name; a :class:`QualityModel` uses any of them."""

MAX_FEATURE_SIDE = 512
"""Features are computed on the working-scale probability map, brought down to this long side when larger (a model
run at ``--scale native`` on a 29 MP photo): their cost stays the same whatever the photo's size."""

UNCERTAIN = (0.2, 0.8)
FAILURE_BELOW = 0.65
"""A mask whose Jaccard is below this is a failure (the ISIC challenge's rule, ``metrics.ISIC_JACCARD_THRESHOLD``)."""


def quality_features(
    prob: np.ndarray,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    keep_largest: bool = DEFAULT_KEEP_LARGEST,
    fill_holes: bool = DEFAULT_FILL_HOLES,
    mask: np.ndarray | None = None,
) -> dict[str, float]:
    """The :data:`FEATURES` of one probability map (``H×W``, float 0–1 or uint8 0–255) and its mask.

    ``mask`` (``H×W`` uint8 0/255) is the final mask at the map's size; without it, it is made from ``prob`` with
    ``threshold``, ``keep_largest`` and ``fill_holes`` as :class:`~skinseg.runtime.segmenter.Segmenter` makes it.
    An empty mask has ``log_area`` −inf (:meth:`QualityModel.estimate` gives it quality 0).
    """
    import cv2
    import numpy as np

    from skinseg.runtime import postprocess as pp

    if prob.ndim != 2:
        raise ValueError(f"expected an H×W probability map, got shape {prob.shape}")
    p = prob.astype(np.float32) / 255.0 if prob.dtype == np.uint8 else prob.astype(np.float32, copy=False)
    scale = MAX_FEATURE_SIDE / max(p.shape)
    if scale < 1.0:
        size = (max(1, round(p.shape[1] * scale)), max(1, round(p.shape[0] * scale)))
        p = cv2.resize(p, size, interpolation=cv2.INTER_AREA)
        if mask is not None:
            mask = cv2.resize(mask, size, interpolation=cv2.INTER_AREA)
            mask = np.where(mask >= 128, np.uint8(255), np.uint8(0))
    raw = pp.threshold(p, threshold)
    if mask is None:
        mask = pp.keep_largest_component(raw) if keep_largest else raw
        if fill_holes:
            mask = pp.fill_holes(mask, inplace=mask is not raw)
    elif mask.shape != p.shape:
        raise ValueError(f"mask has shape {mask.shape}, the probability map {p.shape}")
    m = mask > 0
    height, width = p.shape
    n = float(height * width)
    area = float(np.count_nonzero(m))
    lo, hi = UNCERTAIN
    uncertain = float(np.count_nonzero((p > lo) & (p < hi)))
    inside = float(p[m].sum()) if area else 0.0
    total = float(p.sum())
    strong = p > 0.5
    strong_mass = float(p[strong].sum())
    outside = float(p[strong & ~m].sum()) / strong_mass if strong_mass > 0 else 0.0
    high, low = float(np.count_nonzero(p > 0.7)), float(np.count_nonzero(p > 0.3))
    n_raw = 0
    if high or low:  # blobs above the threshold, counted by their outer borders (no labelling: a tenth the cost)
        _contours, hierarchy = cv2.findContours(raw, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
        n_raw = 0 if hierarchy is None else int(np.count_nonzero(hierarchy[0][:, 3] < 0))
    features = {
        "mean_prob": inside / area if area else 0.0,
        "soft_jaccard": inside / (total + area - inside) if total + area > 0 else 0.0,
        "uncertain": math.log10(uncertain / max(area, 1.0) + 1e-3),
        "stability": high / low if low else 0.0,
        "edge": 0.0,
        "frame": 0.0,
        "components": math.log2(max(n_raw, 1)),
        "outside": outside,
        "log_area": math.log10(area / n) if area else -math.inf,
        "compactness": 0.0,
        "off_centre": 1.0,
    }
    if not area:
        return features
    u8 = m.astype(np.uint8)
    border = u8 - cv2.erode(u8, np.ones((3, 3), np.uint8), borderType=cv2.BORDER_REPLICATE)
    gx = cv2.Sobel(p, cv2.CV_32F, 1, 0, ksize=3) / 8.0
    gy = cv2.Sobel(p, cv2.CV_32F, 0, 1, ksize=3) / 8.0
    on_border = border > 0
    if np.any(on_border):
        features["edge"] = float(np.sqrt(gx[on_border] ** 2 + gy[on_border] ** 2).mean())
    frame = np.concatenate([m[0], m[-1], m[1:-1, 0], m[1:-1, -1]])
    features["frame"] = float(np.count_nonzero(frame)) / frame.size
    contours, _ = cv2.findContours(u8, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    perimeter = sum(cv2.arcLength(c, True) for c in contours)
    features["compactness"] = min(1.0, 4 * math.pi * area / perimeter**2) if perimeter > 0 else 1.0
    moments = cv2.moments(u8, binaryImage=True)
    cx = moments["m10"] / moments["m00"] - (width - 1) / 2
    cy = moments["m01"] / moments["m00"] - (height - 1) / 2
    features["off_centre"] = float(math.hypot(cx, cy) / math.hypot(width / 2, height / 2))
    return features


@dataclass(frozen=True)
class QualityModel:
    """A linear model of the mask's Jaccard: ``quality = sigmoid(intercept + Σ coef·(x − mean)/scale)``.

    ``features`` name entries of :data:`FEATURES` (each clipped to ``[low, high]``, the range seen in fitting,
    before use); ``review_below``: an image whose quality is below it is flagged for review. ``fitted``
    describes the fit (data, images, failures, cross-validated figures) for people; the runtime does not read it.
    """

    features: tuple[str, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    coef: tuple[float, ...]
    intercept: float
    review_below: float
    low: tuple[float, ...] = ()
    high: tuple[float, ...] = ()
    fitted: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        k = len(self.features)
        if not k:
            raise ValueError("quality needs at least one feature")
        for name in ("mean", "scale", "coef", "low", "high"):
            values = getattr(self, name)
            if name in ("low", "high") and not values:
                continue
            if len(values) != k or not all(_finite(v) for v in values):
                raise ValueError(f"quality {name} must be {k} finite numbers (one per feature), got {values!r}")
        if not all(s > 0 for s in self.scale):
            raise ValueError(f"quality scale must be positive, got {self.scale!r}")
        if not _finite(self.intercept):
            raise ValueError(f"quality intercept must be a finite number, got {self.intercept!r}")
        if not _finite(self.review_below) or not 0.0 <= self.review_below <= 1.0:
            raise ValueError(f"quality review_below must be within [0, 1], got {self.review_below!r}")

    @property
    def usable(self) -> bool:
        """Whether this skinseg computes every feature the model names (a newer export may name more)."""
        return all(f in FEATURES for f in self.features)

    def estimate(self, features: Mapping[str, float]) -> float | None:
        """The estimated Jaccard (0–1) from :func:`quality_features`; 0 for an empty mask; None if not usable."""
        if not self.usable:
            return None
        if not math.isfinite(features.get("log_area", 0.0)):
            return 0.0
        x = [float(features[f]) for f in self.features]
        if self.low:
            x = [min(max(v, lo), hi) for v, lo, hi in zip(x, self.low, self.high, strict=True)]
        z = self.intercept + sum(
            c * (v - m) / s for c, v, m, s in zip(self.coef, x, self.mean, self.scale, strict=True)
        )
        return 1.0 / (1.0 + math.exp(-max(-50.0, min(50.0, z))))

    def to_dict(self) -> dict[str, Any]:
        return {
            "features": list(self.features),
            "mean": list(self.mean),
            "scale": list(self.scale),
            "coef": list(self.coef),
            "intercept": self.intercept,
            "review_below": self.review_below,
            "low": list(self.low),
            "high": list(self.high),
            "fitted": dict(self.fitted),
        }


def parse_quality(value: Any) -> QualityModel | None:
    """The ``quality`` entry of a model's metadata (None stays None); ValueError naming what is wrong."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValueError(f"quality must be an object, got {type(value).__name__}")
    try:
        features = value["features"]
        if not isinstance(features, list) or not all(isinstance(f, str) for f in features):
            raise ValueError(f"quality features must be a list of names, got {features!r}")
        fitted = value.get("fitted") or {}
        if not isinstance(fitted, dict):
            raise ValueError("quality fitted must be an object")
        return QualityModel(
            features=tuple(features),
            mean=_numbers(value["mean"], "mean"),
            scale=_numbers(value["scale"], "scale"),
            coef=_numbers(value["coef"], "coef"),
            intercept=_number(value["intercept"], "intercept"),
            review_below=_number(value["review_below"], "review_below"),
            low=_numbers(value.get("low") or [], "low"),
            high=_numbers(value.get("high") or [], "high"),
            fitted=fitted,
        )
    except KeyError as e:
        raise ValueError(f"quality is missing {e}") from None


def needs_review(quality: float | None, review_below: float) -> int | None:
    """1 when ``quality`` is below ``review_below``, else 0; None without a quality."""
    if quality is None or (isinstance(quality, float) and math.isnan(quality)):
        return None
    return int(quality < review_below)


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rank correlation of two equally long sequences (ties share their average rank); nan when
    either is constant or shorter than 2."""
    import numpy as np

    x, y = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(x) != len(y):
        raise ValueError(f"spearman needs sequences of one length, got {len(x)} and {len(y)}")
    if len(x) < 2:
        return float("nan")
    rx, ry = _ranks(x), _ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def _ranks(x: np.ndarray) -> np.ndarray:
    import numpy as np

    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x), np.float64)
    ranks[order] = np.arange(len(x), dtype=np.float64)
    _values, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    if np.any(counts > 1):  # ties share their average rank
        ranks = (np.bincount(inverse, weights=ranks) / counts)[inverse]
    return ranks


def review_figures(
    quality: Sequence[float], jaccard: Sequence[float], review_below: float, *, failure_below: float = FAILURE_BELOW
) -> dict[str, Any]:
    """How an estimate did against the truth: ``spearman`` of quality against Jaccard, and ``recall`` and
    ``precision`` of the review flag (quality < ``review_below``) for failures (Jaccard < ``failure_below``),
    with the counts; a figure without anything to count (no failure, nothing flagged) is None."""
    pairs = [(q, j) for q, j in zip(quality, jaccard, strict=True) if q is not None and not math.isnan(q)]
    flagged = [q < review_below for q, _ in pairs]
    failed = [j < failure_below for _, j in pairs]
    hits = sum(f and g for f, g in zip(flagged, failed, strict=True))
    rho = spearman([q for q, _ in pairs], [j for _, j in pairs]) if pairs else float("nan")
    return {
        "images": len(pairs),
        "failures": sum(failed),
        "flagged": sum(flagged),
        "caught": hits,
        "spearman": None if math.isnan(rho) else rho,
        "recall": hits / sum(failed) if any(failed) else None,
        "precision": hits / sum(flagged) if any(flagged) else None,
        "review_below": review_below,
        "failure_below": failure_below,
    }


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _number(v: Any, name: str) -> float:
    if not _finite(v):
        raise ValueError(f"quality {name} must be a finite number, got {v!r}")
    return float(v)


def _numbers(values: Any, name: str) -> tuple[float, ...]:
    if not isinstance(values, Sequence) or isinstance(values, str):
        raise ValueError(f"quality {name} must be a list of numbers, got {values!r}")
    return tuple(_number(v, name) for v in values)


GENERIC: QualityModel | None = parse_quality(
    {
        "features": [
            "mean_prob",
            "soft_jaccard",
            "uncertain",
            "stability",
            "edge",
            "frame",
            "components",
            "outside",
            "log_area",
            "compactness",
            "off_centre",
        ],
        "mean": [
            0.954976,
            0.889135,
            -0.849883,
            0.896617,
            0.291517,
            0.0109763,
            0.346635,
            0.00978242,
            -1.03819,
            0.737686,
            0.106593,
        ],
        "scale": [
            0.0425522,
            0.103859,
            0.346827,
            0.0922882,
            0.0908426,
            0.0402902,
            0.727547,
            0.0499342,
            0.472315,
            0.150999,
            0.0835917,
        ],
        "coef": [
            0.481264,
            -0.00448767,
            -0.669428,
            -0.558312,
            0.108064,
            -0.0760457,
            0.199071,
            -0.246204,
            0.426373,
            0.313897,
            -0.127656,
        ],
        "intercept": 1.52842,
        "review_below": 0.741603,
        "low": [0.729569, 0.391293, -1.40922, 0.428213, 0.0912973, 0.0, 0.0, 0.0, -2.14623, 0.273119, 0.00289853],
        "high": [
            0.991811,
            0.977538,
            0.31063,
            0.979167,
            0.402941,
            0.311024,
            3.0,
            0.454519,
            -0.090601,
            0.972437,
            0.415457,
        ],
        "fitted": {
            "model": "skinseg_default.onnx, sha256 f049371eadbe (bundled until the EfficientNet-Lite0 model)",
            "images": 158,
            "failures": 26,
            "failure_below": 0.65,
            "data": ["isic-raw", "isic-256 (stems in neither isic2017-train nor isic-raw)"],
            "cross_validated": {"spearman": 0.662, "recall": 0.80, "precision": 0.58, "flagged_share": 0.23},
        },
    }
)
"""The estimator of a model whose metadata carries none: fitted on the bundled model by ``benchmarks/fit_quality.py
--generic`` (its figures are that model's; another model's probabilities may be calibrated otherwise)."""
