"""Evaluate a segmenter on a folder of images against a folder of masks: the core of ``skinseg evaluate``.

:func:`evaluate_folders` pairs the folders (:mod:`skinseg.data.pairing`), lists what could not be paired as rows
with the reason, scores every pair through the segmenter's own path (:func:`skinseg.runtime.evaluation.evaluate`:
the image decoded whole, as ``skinseg infer`` does), and writes ``results.csv``, ``summary.json`` and ``worst.png``
into the output folder. It takes any segmenter with ``segment_file``, ``options()`` and ``provider`` (the runtime's
:class:`~skinseg.runtime.segmenter.Segmenter`, whatever its backend), so it needs no TensorFlow.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from skinseg.data.pairing import PairingReport, mask_key, pair_folders, read_stem_list
from skinseg.runtime.errors import DataError, param, render
from skinseg.runtime.evaluation import (
    EvaluationResult,
    ImageResult,
    evaluate,
    unpaired,
    write_results_csv,
    write_summary_json,
    write_worst_png,
)
from skinseg.runtime.imageio import file_sha256
from skinseg.runtime.outputs import prepare_output
from skinseg.runtime.report import versions

__all__ = ["RESULTS", "SUMMARY", "WORST", "FolderEvaluation", "evaluate_folders", "unpaired_rows"]

RESULTS, SUMMARY, WORST = "results.csv", "summary.json", "worst.png"


@dataclass
class FolderEvaluation:
    """What :func:`evaluate_folders` scored and wrote."""

    result: EvaluationResult
    summary: dict[str, Any]
    output: Path
    files: list[str] = field(default_factory=list)  # the report files written, by name

    @property
    def errors(self) -> list[ImageResult]:
        return self.result.errors


def unpaired_rows(report: PairingReport, wanted: set[str] | None) -> list[ImageResult]:
    """``skipped`` rows for unpaired or ambiguous files and for listed stems with neither image nor mask."""
    rows = [
        unpaired(p.stem, f"{p}: no mask found in the masks folder (expected <stem>.png or <stem>_segmentation.png)", p)
        for p in report.images_without_mask
    ]
    rows += [
        unpaired(mask_key(m), f"{m}: mask without an image (no image named {mask_key(m)}.* in the images folder)")
        for m in report.masks_without_image
    ]
    rows += [unpaired(a.image.stem, str(a), a.image) for a in report.ambiguous]
    rows += [unpaired(s.image.stem, str(s), s.image) for s in report.shared_stems]
    if wanted is None:
        return rows
    rows = [r for r in rows if r.stem in wanted]
    found = {p.stem for p in report.pairs} | {r.stem for r in rows}
    rows += [
        unpaired(s, render(f"{s}: listed in {param('stems')} but no image or mask has this stem"))
        for s in sorted(wanted - found)
    ]
    return rows


def _without_own_reports(report: PairingReport, output: Path) -> PairingReport:
    """``report`` without this command's own ``worst.png``, met when ``--output`` is the images folder."""
    own = os.path.realpath(output / WORST)

    def ours(path: Path) -> bool:
        return os.path.realpath(path) == own

    return PairingReport(
        pairs=[p for p in report.pairs if not ours(p.image)],
        images_without_mask=[p for p in report.images_without_mask if not ours(p)],
        masks_without_image=report.masks_without_image,
        ambiguous=report.ambiguous,
        shared_stems=report.shared_stems,
    )


def evaluate_folders(
    segmenter: Any,
    *,
    images: Path,
    masks: Path,
    output: Path,
    model_path: Path,
    stems: Path | None = None,
    worst: int = 8,
    on_progress: Callable[[int, int], None] | None = None,
    review_below: float | None = None,
) -> FolderEvaluation:
    """Score ``segmenter`` on the paired folders and write the reports into ``output`` (created if needed).

    ``stems``: a file listing the stems to evaluate (one a line). ``on_progress(done, total)`` after each image.
    Each row carries the segmenter's quality estimate beside the true scores; ``review_below`` (default: the
    model's) is the review threshold whose recall and precision the summary's ``quality`` reports.
    Raises :class:`DataError` when nothing at all can be evaluated; unpaired files are rows, not errors.
    """
    for folder, what in ((images, "images"), (masks, "masks")):
        if not Path(folder).is_dir():  # before pairing, whose message speaks of a config's data paths
            raise DataError(f"{folder}: the {what} folder does not exist; check the path")
    wanted = read_stem_list(stems, what=param("stems")) if stems is not None else None
    report = _without_own_reports(pair_folders(images, masks), output)
    pairs = [p for p in report.pairs if wanted is None or p.stem in wanted]
    skipped = unpaired_rows(report, wanted)
    if not pairs and not skipped:
        raise DataError(
            f"{images}: no images to evaluate (none paired with {masks}); check {param('images')} and {param('masks')}"
        )
    output = prepare_output(output)
    quality = getattr(segmenter, "quality", None)
    if review_below is None and quality is not None:
        review_below = quality.review_below
    result = evaluate(
        lambda path: segmenter.segment_file(path, keep_prob=False),
        pairs,
        skipped=skipped,
        worst=worst,
        on_event=None if on_progress is None else lambda e: on_progress(e["done"], e["total"]),
        review_below=review_below,
    )
    summary = {
        **result.summary(),
        "model": {"path": str(model_path), "sha256": file_sha256(model_path), "provider": segmenter.provider},
        "data": {"images": str(images), "masks": str(masks), "stems": None if stems is None else str(stems)},
        "options": {**segmenter.settings(), "worst": worst, "review_below": review_below},
        "versions": versions(loaded=("tensorflow", "keras")),
    }
    write_results_csv(output / RESULTS, result.rows)
    write_summary_json(output / SUMMARY, summary)
    files = [RESULTS, SUMMARY] + ([WORST] if write_worst_png(output / WORST, result) else [])
    return FolderEvaluation(result=result, summary=summary, output=output, files=files)
