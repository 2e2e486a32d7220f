"""Fit a model's quality estimator (:class:`skinseg.runtime.quality.QualityModel`) on images with expert masks.

:func:`collect` segments each pair's image exactly as ``skinseg infer`` does and keeps the quality features of the
result (:func:`skinseg.runtime.quality.quality_features`) with the mask's true Jaccard. :func:`fit` then fits a
ridge regression of ``logit(Jaccard)`` on the standardized features (numpy only: the coefficients travel in the
model's metadata and the runtime needs no fitting library), chooses the ``review_below`` threshold that flags
``target_recall`` of the failures (Jaccard below ``failure_below``) on out-of-fold estimates, and measures it
honestly: every figure in :attr:`QualityFit.cv` comes from images the fitted model did not see, the threshold
included (nested cross-validation: each outer fold's threshold is chosen on its training part only).

Fit on images the segmentation model did not train on: its masks on its own training images are too good.
More failures to learn from can come as ``extra`` samples (for example another model's out-of-fold masks on a
training set): they join every fit, weighted by ``extra_weight``, but are never held out, never scored and never
place a threshold, so the figures stay those of ``samples`` alone.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from skinseg.runtime.errors import DataError
from skinseg.runtime.metrics import ISIC_JACCARD_THRESHOLD, confusion_counts, scores
from skinseg.runtime.quality import FEATURES, QualityModel, spearman

__all__ = [
    "DEFAULT_FEATURES",
    "QualityFit",
    "Sample",
    "collect",
    "cross_validate",
    "fit",
    "fit_quality",
    "spearman",
]

DEFAULT_FEATURES = FEATURES
RIDGE = 3.0  # on standardized features: shrinks the coefficients of a fit on ~100 images towards 0
TARGET_RECALL = 0.8
EPS = 0.02  # Jaccards are clipped to [EPS, 1 - EPS] before the logit
MIN_FAILURES = 3  # fewer failures than this cannot place a threshold


@dataclass
class Sample:
    """One image: where it comes from, its mask's true Jaccard, and its quality features."""

    stem: str
    source: str
    jaccard: float
    features: dict[str, float]
    seconds: float = 0.0

    @property
    def empty(self) -> bool:
        return not math.isfinite(self.features.get("log_area", 0.0))


@dataclass
class QualityFit:
    """The fitted estimator and what cross-validation measured of it."""

    model: QualityModel
    cv: dict[str, Any]
    oof: list[float] = field(default_factory=list)  # out-of-fold estimate per sample (same order)

    def summary(self) -> str:
        c = self.cv
        return (
            f"{c['images']} images, {c['failures']} failures (Jaccard < {c['failure_below']:g}); "
            f"cross-validated ({c['folds']}-fold × {c['repeats']}): Spearman {c['spearman']:.3f}, review flag recall "
            f"{c['recall']:.2f} precision {c['precision']:.2f} ({c['flagged_share']:.0%} flagged); "
            f"review below {self.model.review_below:.3f}"
        )


def collect(
    segmenter: Any,
    pairs: Iterable[Any],
    *,
    source: str = "",
    on_progress: Callable[[int, int], None] | None = None,
) -> list[Sample]:
    """Segment each pair's image with ``segmenter`` (``segment_file``, as ``skinseg infer`` does) and keep its
    quality features and true Jaccard. A pair that cannot be read is left out (its error is not a quality)."""
    from skinseg.runtime.errors import ImageError
    from skinseg.runtime.imageio import read_mask

    pairs = list(pairs)
    out: list[Sample] = []
    for i, pair in enumerate(pairs, 1):
        start = time.perf_counter()
        try:
            result = segmenter.segment_file(Path(pair.image), keep_prob=False)
            truth = read_mask(Path(pair.mask))
        except ImageError:
            continue
        if truth.shape != result.mask.shape:
            continue
        jaccard = scores(confusion_counts(result.mask, truth))["jaccard"]
        features = dict(result.extra["quality_features"])
        out.append(Sample(Path(pair.image).stem, source, jaccard, features, time.perf_counter() - start))
        if on_progress is not None:
            on_progress(i, len(pairs))
    return out


# --------------------------------------------------------------------------------------------------- fitting


def _matrix(samples: Sequence[Sample], features: Sequence[str]) -> np.ndarray:
    return np.array([[s.features[f] for f in features] for s in samples], np.float64).reshape(len(samples), -1)


def _logit(j: np.ndarray) -> np.ndarray:
    j = np.clip(j, EPS, 1 - EPS)
    return np.log(j / (1 - j))


def fit_model(
    samples: Sequence[Sample],
    *,
    features: Sequence[str] = DEFAULT_FEATURES,
    ridge: float = RIDGE,
    review_below: float = 0.5,
    fitted: dict[str, Any] | None = None,
    extra: Sequence[Sample] = (),
    extra_weight: float = 1.0,
) -> QualityModel:
    """The ridge regression of ``logit(Jaccard)`` on standardized ``features`` (empty masks left out: their
    quality is 0 whatever the features), each ``extra`` sample counted as ``extra_weight`` of one."""
    if not extra_weight >= 0:
        raise ValueError(f"extra_weight must be 0 or more, got {extra_weight!r}")  # no command line option has it
    rows = [s for s in samples if not s.empty]
    more = [s for s in extra if not s.empty]
    if len(rows) < 2:
        raise DataError(f"cannot fit a quality estimator on {len(rows)} image(s) with a mask; give more images")
    x = _matrix([*rows, *more], features)
    y = _logit(np.array([s.jaccard for s in [*rows, *more]]))
    w = np.concatenate([np.ones(len(rows)), np.full(len(more), float(extra_weight))])
    low, high = x[w > 0].min(axis=0), x[w > 0].max(axis=0)  # the range the fit has seen
    mean = w @ x / w.sum()
    scale = np.sqrt(w @ (x - mean) ** 2 / w.sum())
    scale = np.where(scale > 1e-9, scale, 1.0)
    z = (x - mean) / scale
    k = z.shape[1]
    y_mean = float(w @ y / w.sum())
    coef = np.linalg.solve(z.T @ (w[:, None] * z) + ridge * np.eye(k), z.T @ (w * (y - y_mean)))
    return QualityModel(
        features=tuple(features),
        mean=tuple(float(v) for v in mean),
        scale=tuple(float(v) for v in scale),
        coef=tuple(float(v) for v in coef),
        intercept=y_mean,
        review_below=float(review_below),
        low=tuple(float(v) for v in low),
        high=tuple(float(v) for v in high),
        fitted=dict(fitted or {}),
    )


def _estimates(model: QualityModel, samples: Sequence[Sample]) -> np.ndarray:
    return np.array([model.estimate(s.features) for s in samples], np.float64)


def choose_threshold(quality: Sequence[float], failed: Sequence[bool], target_recall: float = TARGET_RECALL) -> float:
    """The lowest ``review_below`` that flags at least ``target_recall`` of the failures (midway between the last
    failure it must catch and the next estimate above it)."""
    q = np.asarray(quality, np.float64)
    f = np.asarray(failed, bool)
    caught = np.sort(q[f])
    if not len(caught):
        return 0.0
    need = max(1, math.ceil(target_recall * len(caught) - 1e-9))
    last = caught[need - 1]
    above = q[q > last]
    return float((last + above.min()) / 2) if len(above) else float(min(1.0, last + 1e-6))


def _folds(failed: np.ndarray, k: int, rng: np.random.Generator) -> list[np.ndarray]:
    """``k`` folds, the failures spread evenly over them (stratified), shuffled by ``rng``."""
    folds: list[list[int]] = [[] for _ in range(k)]
    start = 0
    for group in (np.flatnonzero(failed), np.flatnonzero(~failed)):
        for i, index in enumerate(rng.permutation(group)):
            folds[(start + i) % k].append(int(index))
        start += len(group)
    return [np.array(sorted(f), int) for f in folds if f]


def _figures(oof: np.ndarray, jaccard: np.ndarray, failed: np.ndarray, flagged: np.ndarray) -> dict[str, float]:
    return {
        "spearman": spearman(oof, jaccard) if len(oof) > 1 else float("nan"),
        "mae": float(np.mean(np.abs(oof - jaccard))) if len(oof) else float("nan"),
        **_review_stats(oof, failed, flagged),
    }


def _mean_figures(figures: list[dict[str, float]]) -> dict[str, float]:
    """Each figure's mean over the repeats (nan where no repeat has it: no failure, nothing flagged)."""
    out = {}
    for key in figures[0]:
        values = [f[key] for f in figures if not math.isnan(f[key])]
        out[key] = float(np.mean(values)) if values else float("nan")
    return out


def _review_stats(quality: np.ndarray, failed: np.ndarray, flagged: np.ndarray) -> dict[str, float]:
    hits = int(np.count_nonzero(flagged & failed))
    return {
        "recall": hits / int(np.count_nonzero(failed)) if np.any(failed) else float("nan"),
        "precision": hits / int(np.count_nonzero(flagged)) if np.any(flagged) else float("nan"),
        "flagged_share": float(np.mean(flagged)) if len(flagged) else 0.0,
    }


def cross_validate(
    samples: Sequence[Sample],
    *,
    features: Sequence[str] = DEFAULT_FEATURES,
    ridge: float = RIDGE,
    failure_below: float = ISIC_JACCARD_THRESHOLD,
    target_recall: float = TARGET_RECALL,
    folds: int = 10,
    repeats: int = 5,
    seed: int = 0,
    extra: Sequence[Sample] = (),
    extra_weight: float = 1.0,
) -> dict[str, Any]:
    """Honest figures of the estimator on ``samples``: ``folds``-fold cross-validation repeated ``repeats`` times
    (means over the repeats). Each outer fold fits on the rest and chooses its threshold there, by an inner
    cross-validation on the rest alone; the held-out images are estimated and flagged with it. ``extra`` samples
    join every fit (:func:`fit_model`) and nothing else.

    Returns ``spearman`` (estimate against true Jaccard), ``recall`` and ``precision`` of the flag for failures
    (Jaccard < ``failure_below``), ``flagged_share``, ``mae`` (mean absolute error of the estimate), and
    ``oof``: the out-of-fold estimates of the first repeat.
    """
    samples = list(samples)
    jaccard = np.array([s.jaccard for s in samples])
    failed = jaccard < failure_below
    n_fail = int(np.count_nonzero(failed))
    if n_fail < MIN_FAILURES or len(samples) - n_fail < MIN_FAILURES:
        raise DataError(
            f"{len(samples)} images with {n_fail} failures (Jaccard < {failure_below:g}): a review threshold needs "
            f"at least {MIN_FAILURES} of each; fit on more images"
        )
    k = max(2, min(folds, n_fail, len(samples) - n_fail))
    how = {"features": features, "ridge": ridge, "extra": extra, "extra_weight": extra_weight}
    figures: list[dict[str, float]] = []
    sources = sorted({s.source for s in samples})
    by_source: dict[str, list[dict[str, float]]] = {source: [] for source in sources}
    first_oof: np.ndarray | None = None
    for r in range(repeats):
        rng = np.random.default_rng(seed + r)
        oof = np.zeros(len(samples))
        flagged = np.zeros(len(samples), bool)
        for test in _folds(failed, k, rng):
            train = np.setdiff1d(np.arange(len(samples)), test)
            part = [samples[i] for i in train]
            inner = _oof(part, failed[train], how, folds=k, rng=rng)
            threshold = choose_threshold(inner, failed[train], target_recall)
            model = fit_model(part, review_below=threshold, **how)
            oof[test] = _estimates(model, [samples[i] for i in test])
            flagged[test] = oof[test] < threshold
        figures.append(_figures(oof, jaccard, failed, flagged))
        for source in sources:
            part = np.array([s.source == source for s in samples])
            by_source[source].append(_figures(oof[part], jaccard[part], failed[part], flagged[part]))
        if first_oof is None:
            first_oof = oof
    out: dict[str, Any] = _mean_figures(figures)
    out.update(images=len(samples), failures=n_fail, failure_below=failure_below, folds=k, repeats=repeats)
    if len(sources) > 1:
        out["by_source"] = {
            source: {
                **_mean_figures(by_source[source]),
                "images": sum(s.source == source for s in samples),
                "failures": int(sum(s.source == source and s.jaccard < failure_below for s in samples)),
            }
            for source in sources
        }
    out["target_recall"] = target_recall
    out["oof"] = [float(v) for v in first_oof] if first_oof is not None else []
    return out


def _oof(
    samples: Sequence[Sample],
    failed: np.ndarray,
    how: dict[str, Any],
    *,
    folds: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Out-of-fold estimates of ``samples`` (``folds``-fold, stratified by ``failed``), each fold's model fitted by
    :func:`fit_model` with the keywords ``how``."""
    k = max(2, min(folds, int(np.count_nonzero(failed)), int(np.count_nonzero(~failed))))
    oof = np.zeros(len(samples))
    for test in _folds(failed, k, rng):
        train = np.setdiff1d(np.arange(len(samples)), test)
        model = fit_model([samples[i] for i in train], **how)
        oof[test] = _estimates(model, [samples[i] for i in test])
    return oof


def fit(
    samples: Sequence[Sample],
    *,
    features: Sequence[str] = DEFAULT_FEATURES,
    ridge: float = RIDGE,
    failure_below: float = ISIC_JACCARD_THRESHOLD,
    target_recall: float = TARGET_RECALL,
    folds: int = 10,
    repeats: int = 5,
    seed: int = 0,
    data: Sequence[str] = (),
    extra: Sequence[Sample] = (),
    extra_weight: float = 1.0,
) -> QualityFit:
    """Fit the estimator on all ``samples``, its ``review_below`` chosen on their out-of-fold estimates for
    ``target_recall``, and measure it by nested cross-validation (:func:`cross_validate`). ``data`` names the
    folders the samples came from (recorded in the model's ``fitted``); ``extra`` samples join every fit, with
    ``extra_weight`` each (:func:`cross_validate`)."""
    from skinseg import __version__

    samples = list(samples)
    how = {"features": features, "ridge": ridge, "extra": list(extra), "extra_weight": extra_weight}
    cv = cross_validate(
        samples,
        failure_below=failure_below,
        target_recall=target_recall,
        folds=folds,
        repeats=repeats,
        seed=seed,
        **how,
    )
    failed = np.array([s.jaccard < failure_below for s in samples])
    oof = _oof(samples, failed, how, folds=folds, rng=np.random.default_rng(seed))
    threshold = choose_threshold(oof, failed, target_recall)
    figures = _rounded({k: v for k, v in cv.items() if k not in ("oof", "failure_below", "images", "failures")})
    fitted = {
        "images": len(samples),
        "failures": int(np.count_nonzero(failed)),
        "failure_below": failure_below,
        "data": list(data),
        "ridge": ridge,
        **({"extra_images": len(how["extra"]), "extra_weight": extra_weight} if how["extra"] else {}),
        "target": "logit(jaccard)",
        "cross_validated": figures,
        "skinseg_version": __version__,
    }
    model = fit_model(samples, review_below=threshold, fitted=fitted, **how)
    return QualityFit(model=model, cv={k: v for k, v in cv.items() if k != "oof"}, oof=cv["oof"])


def _rounded(value: Any) -> Any:
    """``value`` with its floats rounded to 4 digits and NaN as None (the metadata is strict JSON)."""
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, float):
        return None if math.isnan(value) else round(value, 4)
    return value


def fit_quality(
    segmenter: Any,
    pairs: Iterable[Any],
    *,
    data: Sequence[str] = (),
    on_progress: Callable[[int, int], None] | None = None,
    **options: Any,
) -> QualityFit:
    """:func:`collect` then :func:`fit`: the estimator of ``segmenter``'s model, fitted on ``pairs``."""
    return fit(collect(segmenter, pairs, on_progress=on_progress), data=data, **options)
