"""Evaluate a segmenter on a folder of images against a folder of masks: the core of ``skinseg evaluate``.

:func:`evaluate_folders` pairs the folders (:mod:`skinseg.data.pairing`), lists what could not be paired as rows
with the reason, scores every pair through the segmenter's own path (:func:`skinseg.runtime.evaluation.evaluate`:
the image decoded whole, as ``skinseg infer`` does), and writes ``results.csv``, ``summary.json`` and ``worst.png``
into the output folder, holding its lock (:func:`~skinseg.runtime.outputs.output_lock`) and never over a file of
those names that it did not write. It takes any segmenter with ``segment_file``, ``options()`` and ``provider``
(the runtime's :class:`~skinseg.runtime.segmenter.Segmenter`, whatever its backend), so it needs no TensorFlow.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from skinseg.data.pairing import PairingReport, mask_key, pair_folders, read_stem_list
from skinseg.runtime.errors import DataError, UsageError, param, render
from skinseg.runtime.evaluation import (
    CSV_COLUMNS,
    EvaluationResult,
    ImageResult,
    evaluate,
    unpaired,
    write_results_csv,
    write_summary_json,
    write_worst_png,
)
from skinseg.runtime.imageio import file_sha256
from skinseg.runtime.outputs import is_ours, output_lock, prepare_output, read_head
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
    # Our own worst.png is no image or mask to score: --output is the images or the masks folder, or was last time.
    own = [folder / WORST for folder in (output, images, masks) if _ours(Path(folder), WORST)]
    report = pair_folders(images, masks, exclude=own)
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
    with output_lock(output, command="evaluate"):  # a second evaluation into this folder stops here, at once
        own_worst = _check_reports_are_ours(output, worst)
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
        wrote_worst = write_worst_png(output / WORST, result)
        if not wrote_worst and own_worst:  # an earlier run's picture beside these results would mislead
            (output / WORST).unlink(missing_ok=True)
    files = [RESULTS, SUMMARY] + ([WORST] if wrote_worst else [])
    return FolderEvaluation(result=result, summary=summary, output=output, files=files)


# ------------------------------------------------------------------------------------------ the reports' owner

_RESULTS_HEADER = ",".join(CSV_COLUMNS[:8]).encode() + b","  # stem,image,width,…,tn: evaluate's, not infer's
_SUMMARY_KEYS = frozenset({"n_images", "n_errors", "jaccard", "model", "data", "options"})


def _ours(output: Path, name: str) -> bool:
    """Whether ``output/name`` is a report that ``skinseg evaluate`` wrote: results.csv with evaluate's columns,
    summary.json with evaluate's keys, worst.png carrying its record (or, from a skinseg that wrote none, beside
    an evaluate summary.json)."""
    path = output / name
    if name == RESULTS:
        head = read_head(path, len(_RESULTS_HEADER))
        return head is not None and head.startswith(_RESULTS_HEADER)
    if name == SUMMARY:
        text = read_head(path, None)
        try:
            summary = json.loads(text) if text is not None else None
        except ValueError:
            return False
        return isinstance(summary, dict) and summary.keys() >= _SUMMARY_KEYS
    return is_ours(path) or (read_head(path, 8) == b"\x89PNG\r\n\x1a\n" and _ours(output, SUMMARY))


def _check_reports_are_ours(output: Path, worst: int) -> bool:
    """:class:`UsageError` when this run would replace a results.csv, summary.json or worst.png that skinseg evaluate
    did not write (a user's own, or ``skinseg infer``'s report); whether a worst.png there is ours."""
    for name in (RESULTS, SUMMARY, WORST) if worst > 0 else (RESULTS, SUMMARY):
        if os.path.lexists(output / name) and not _ours(output, name):
            raise UsageError(
                f"{output / name}: this {name} was not written by skinseg evaluate and would be replaced; move it "
                f"away or choose another {param('output')}"
            )
    return os.path.lexists(output / WORST) and _ours(output, WORST)
