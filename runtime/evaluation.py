"""Score a segmenter against ground-truth masks: per-image metrics, a summary, and a picture of the worst cases.

:func:`evaluate` is the core of ``skinseg evaluate``. It knows nothing about models: it takes a ``segment_fn``
that maps an image file to a uint8 mask at the image's full size (for ONNX models,
``lambda p: segmenter.segment_file(p).mask``, the exact path ``skinseg infer`` takes), so the figures describe
what users get. Every prediction is scored at the **original resolution of the ground truth**.

A pair that cannot be scored (a mask of another size than its image, an unreadable file) becomes a row with
status ``failed`` and the reason; unpaired files come in as ``skipped`` rows. Nothing is dropped silently.

The writers put ``results.csv``, ``summary.json`` and ``worst.png`` in place atomically.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np

from skinseg.runtime.atomic import write_bytes_atomic
from skinseg.runtime.errors import ImageError
from skinseg.runtime.imageheaders import image_size
from skinseg.runtime.imageio import encode_png, read_image, read_mask
from skinseg.runtime.metrics import METRICS, Counts, confusion_counts, scores
from skinseg.runtime.names import csv_cell, json_text
from skinseg.runtime.outputs import with_record

__all__ = [
    "CSV_COLUMNS",
    "EvaluationResult",
    "ImageResult",
    "PairLike",
    "SegmentFn",
    "evaluate",
    "grid_shape",
    "render_panel",
    "unpaired",
    "worst_grid",
    "write_results_csv",
    "write_summary_json",
    "write_worst_png",
]

SegmentFn = Callable[[Path], Any]
"""Maps an image file to its predicted ``H×W`` uint8 mask (0/255) at the image's full size, or to a segmenter's
:class:`~skinseg.runtime.segmenter.Result` (its ``mask``, and its quality estimate from ``stats``)."""

OK, FAILED, SKIPPED = "ok", "failed", "skipped"
CSV_COLUMNS = (
    "stem",
    "image",
    "width",
    "height",
    "tp",
    "fp",
    "fn",
    "tn",
    *METRICS,
    "quality",  # the estimated Jaccard (skinseg.runtime.quality), beside the true one
    "review",
    "seconds",
    "status",
    "error",
)

# The worst-cases picture: a grid of CELL×CELL thumbnails, each above a caption strip, under a legend strip.
CELL = 256
CAPTION_HEIGHT = 28
LEGEND_HEIGHT = 28
COLUMNS = 4
TRUTH_RGB = (0, 230, 0)  # green
PRED_RGB = (255, 0, 255)  # magenta
BACKGROUND_RGB = (32, 32, 32)
_FONT = cv2.FONT_HERSHEY_SIMPLEX


class PairLike(Protocol):
    """An image and its ground-truth mask (e.g. :class:`skinseg.data.pairing.Pair`)."""

    @property
    def image(self) -> Path: ...

    @property
    def mask(self) -> Path: ...


@dataclass
class ImageResult:
    """One row of ``results.csv``: an image's counts and scores, or why it has none."""

    stem: str
    image: Path | None
    status: str = OK  # ok, failed (could not be scored) or skipped (not paired)
    error: str = ""
    width: int | None = None
    height: int | None = None
    counts: Counts | None = None
    scores: dict[str, float] = field(default_factory=dict)
    seconds: float | None = None
    quality: float | None = None  # the estimated Jaccard, when the segmenter gives one
    review: int | None = None  # 1 when the estimate asked for a person's look

    @property
    def ok(self) -> bool:
        return self.status == OK

    def as_row(self) -> dict[str, Any]:
        """The CSV row: floats with 6 decimals, empty cells where there is no value."""
        c = self.counts
        row: dict[str, Any] = {
            "stem": self.stem,
            "image": "" if self.image is None else str(self.image),
            "width": "" if self.width is None else self.width,
            "height": "" if self.height is None else self.height,
            "tp": "" if c is None else c.tp,
            "fp": "" if c is None else c.fp,
            "fn": "" if c is None else c.fn,
            "tn": "" if c is None else c.tn,
        }
        row.update({name: f"{self.scores[name]:.6f}" if name in self.scores else "" for name in METRICS})
        row["quality"] = "" if self.quality is None else f"{self.quality:.4f}"
        row["review"] = "" if self.review is None else self.review
        row["seconds"] = "" if self.seconds is None else f"{self.seconds:.3f}"
        row["status"] = self.status
        row["error"] = self.error
        return row


def unpaired(stem: str, reason: str, image: Path | None = None) -> ImageResult:
    """A row for a file that could not be paired (an image without a mask, a mask without an image)."""
    return ImageResult(stem=stem, image=image, status=SKIPPED, error=reason)


@dataclass
class EvaluationResult:
    """All rows (sorted by stem), the rendered worst-case panels (worst first) and the wall time."""

    rows: list[ImageResult]
    worst: list[tuple[ImageResult, np.ndarray]] = field(default_factory=list)
    seconds: float = 0.0
    review_below: float | None = None  # the review threshold the rows' ``review`` used

    @property
    def scored(self) -> list[ImageResult]:
        return [r for r in self.rows if r.ok]

    @property
    def errors(self) -> list[ImageResult]:
        return [r for r in self.rows if not r.ok]

    def summary(self) -> dict[str, Any]:
        """Mean and median of every metric over the scored images, the error count, and the time per image.

        Metrics over no image are ``None``. ``pooled`` holds the scores of all pixels counted together
        (micro average), which weighs large images more.
        """
        scored = self.scored
        out: dict[str, Any] = {name: _stats([r.scores[name] for r in scored]) for name in METRICS}
        out["n_images"] = len(scored)
        out["n_errors"] = len(self.errors)
        if scored:
            pooled = sum((r.counts for r in scored if r.counts is not None), Counts(0, 0, 0, 0))
            out["pooled"] = {k: round(v, 6) for k, v in scores(pooled).items()}
        else:
            out["pooled"] = None
        out["quality"] = None
        rated = [r for r in scored if r.quality is not None]
        if rated and self.review_below is not None:
            from skinseg.runtime.quality import review_figures

            figures = review_figures(
                [r.quality for r in rated], [r.scores["jaccard"] for r in rated], self.review_below
            )
            out["quality"] = {k: round(v, 4) if isinstance(v, float) else v for k, v in figures.items()}
        out["seconds_per_image"] = _stats([r.seconds for r in scored if r.seconds is not None], digits=3)
        out["seconds_total"] = round(self.seconds, 3)
        out["errors"] = [{"stem": r.stem, "status": r.status, "error": r.error} for r in self.errors]
        return out


def _stats(values: Sequence[float], digits: int = 6) -> dict[str, float | None]:
    if not values:
        return {"mean": None, "median": None, "min": None, "max": None}
    return {
        "mean": round(statistics.fmean(values), digits),
        "median": round(statistics.median(values), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
    }


# --------------------------------------------------------------------------------------------------- evaluate


def evaluate(
    segment_fn: SegmentFn,
    pairs: Iterable[PairLike],
    *,
    skipped: Iterable[ImageResult] = (),
    worst: int = 0,
    on_event: Callable[[dict[str, Any]], None] | None = None,
    review_below: float | None = None,
) -> EvaluationResult:
    """Segment every pair's image with ``segment_fn`` and score it against its mask at the mask's resolution.

    ``skipped`` rows (unpaired files) are merged into the result. ``worst`` > 0 keeps thumbnails of the
    ``worst`` lowest-Jaccard images for :func:`write_worst_png` (only those are re-read, at reduced size).
    ``on_event`` receives ``{"event": "image", "done": i, "total": n, "result": ImageResult}`` after each pair.
    An :class:`ImageError` makes that pair ``failed``; any other error (e.g. a broken model) propagates.
    ``review_below``: the threshold of each row's ``review`` (its quality estimate below it); None keeps the
    segmenter's flag and reports no review figures.
    """
    start = time.perf_counter()
    pairs = list(pairs)
    rows: list[ImageResult] = list(skipped)
    kept: list[tuple[ImageResult, np.ndarray]] = []
    for i, pair in enumerate(pairs, 1):
        row, pred, truth = _score_pair(segment_fn, Path(pair.image), Path(pair.mask))
        if review_below is not None and row.quality is not None:
            row.review = int(row.quality < review_below)
        rows.append(row)
        if worst > 0 and row.ok and _is_among_worst(row, kept, worst):
            kept = _keep_worst(kept, row, _panel_for(row, truth, pred), worst)
        del pred, truth
        if on_event is not None:
            on_event({"event": "image", "done": i, "total": len(pairs), "result": row})
    rows.sort(key=lambda r: (r.stem, str(r.image or "")))
    return EvaluationResult(rows=rows, worst=kept, seconds=time.perf_counter() - start, review_below=review_below)


def _score_pair(
    segment_fn: SegmentFn, image: Path, mask: Path
) -> tuple[ImageResult, np.ndarray | None, np.ndarray | None]:
    row = ImageResult(stem=image.stem, image=image)
    try:
        row.width, row.height = iw, ih = image_size(image)
        mw, mh = image_size(mask)
        if (mw, mh) != (iw, ih):
            raise ImageError(
                f"{mask}: mask is {mw}×{mh} but its image is {iw}×{ih}; masks must have their image's size "
                "(re-export the mask at full resolution)"
            )
        t0 = time.perf_counter()
        pred = segment_fn(image)
        row.seconds = time.perf_counter() - t0
        if not isinstance(pred, np.ndarray):  # a segmenter's Result
            row.quality, row.review = pred.stats.get("quality"), pred.stats.get("review")
            pred = pred.mask
        truth = read_mask(mask)
        if pred.shape[:2] != truth.shape:
            raise ImageError(
                f"{image}: the prediction is {pred.shape[1]}×{pred.shape[0]} but the mask {mask.name} is "
                f"{truth.shape[1]}×{truth.shape[0]} once decoded; check the files' EXIF orientation"
            )
    except ImageError as e:
        row.status, row.error = FAILED, str(e)
        return row, None, None
    row.counts = confusion_counts(pred, truth)
    row.scores = scores(row.counts)
    return row, pred, truth


def _is_among_worst(row: ImageResult, kept: list[tuple[ImageResult, np.ndarray]], n: int) -> bool:
    return len(kept) < n or _worst_key(row) < _worst_key(kept[-1][0])


def _worst_key(row: ImageResult) -> tuple[float, str]:
    return row.scores["jaccard"], row.stem


def _keep_worst(
    kept: list[tuple[ImageResult, np.ndarray]], row: ImageResult, panel: np.ndarray, n: int
) -> list[tuple[ImageResult, np.ndarray]]:
    return sorted([*kept, (row, panel)], key=lambda item: _worst_key(item[0]))[:n]


def _panel_for(row: ImageResult, truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    assert row.image is not None and row.width is not None and row.height is not None
    reduce = max(r for r in (1, 2, 4, 8) if max(row.width, row.height) / r >= CELL or r == 1)
    try:
        image = read_image(row.image, reduce=reduce)
    except ImageError:  # it was readable a moment ago; draw the outlines on grey rather than fail the run
        image = np.full((row.height, row.width, 3), 128, np.uint8)
    estimate = "" if row.quality is None else f" est {row.quality:.2f}"
    return render_panel(image, truth, pred, f"{row.stem}  J={row.scores['jaccard']:.3f}{estimate}")


# --------------------------------------------------------------------------------------------------- picture


def _fit(width: int, height: int, cell: int) -> tuple[int, int]:
    f = cell / max(width, height)
    return max(1, round(width * f)), max(1, round(height * f))


def _outline(canvas: np.ndarray, mask: np.ndarray, size: tuple[int, int], color: tuple[int, int, int]) -> None:
    small = cv2.resize(mask, size, interpolation=cv2.INTER_AREA) >= 128
    contours, _ = cv2.findContours(small.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(canvas, contours, -1, color, 2, lineType=cv2.LINE_AA)


def _text(canvas: np.ndarray, text: str, y: int, x: int = 6, scale: float = 0.45) -> None:
    text = text.encode("ascii", "replace").decode()  # Hershey fonts draw ASCII only
    room = canvas.shape[1] - 2 * x
    if cv2.getTextSize(text, _FONT, scale, 1)[0][0] > room:
        while len(text) > 1 and cv2.getTextSize(text + "..", _FONT, scale, 1)[0][0] > room:
            text = text[:-1]
        text += ".."
    cv2.putText(canvas, text, (x, y), _FONT, scale, (255, 255, 255), 1, cv2.LINE_AA)


def render_panel(
    image: np.ndarray, truth: np.ndarray, pred: np.ndarray, caption: str, *, cell: int = CELL
) -> np.ndarray:
    """A ``(cell + CAPTION_HEIGHT) × cell`` RGB thumbnail: ``image`` (any size, aspect kept) with the outlines of
    ``truth`` (green) and ``pred`` (magenta) drawn over it, and ``caption`` below."""
    w, h = _fit(truth.shape[1], truth.shape[0], cell)
    thumb = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)
    _outline(thumb, truth, (w, h), TRUTH_RGB)
    _outline(thumb, pred, (w, h), PRED_RGB)
    panel = np.empty((cell + CAPTION_HEIGHT, cell, 3), np.uint8)
    panel[:] = BACKGROUND_RGB
    y, x = (cell - h) // 2, (cell - w) // 2
    panel[y : y + h, x : x + w] = thumb
    panel[cell:] = 0
    _text(panel[cell:], caption, y=CAPTION_HEIGHT - 9)
    return panel


def grid_shape(n: int, *, columns: int = COLUMNS, cell: int = CELL) -> tuple[int, int]:
    """``(height, width)`` of the worst-cases picture for ``n`` ≥ 1 panels."""
    cols = min(n, columns)
    rows = math.ceil(n / cols)
    return LEGEND_HEIGHT + rows * (cell + CAPTION_HEIGHT), cols * cell


def worst_grid(panels: Sequence[np.ndarray], *, columns: int = COLUMNS) -> np.ndarray:
    """Lay panels from :func:`render_panel` out row by row under a legend naming the two outline colours."""
    if not panels:
        raise ValueError("worst_grid needs at least one panel")
    ph, pw = panels[0].shape[:2]
    cell = pw
    height, width = grid_shape(len(panels), columns=columns, cell=cell)
    grid = np.empty((height, width, 3), np.uint8)
    grid[:] = BACKGROUND_RGB
    legend = grid[:LEGEND_HEIGHT]
    legend[:] = 0
    cv2.rectangle(legend, (6, 9), (18, 19), TRUTH_RGB, -1)
    _text(legend[:, 20:], "ground truth", y=19)
    cv2.rectangle(legend, (130, 9), (142, 19), PRED_RGB, -1)
    _text(legend[:, 144:], "prediction (worst Jaccard first)", y=19)
    cols = min(len(panels), columns)
    for i, panel in enumerate(panels):
        r, c = divmod(i, cols)
        y = LEGEND_HEIGHT + r * ph
        grid[y : y + ph, c * pw : (c + 1) * pw] = panel
    return grid


# --------------------------------------------------------------------------------------------------- writers


def write_results_csv(path: str | Path, rows: Iterable[ImageResult]) -> None:
    """``results.csv``: one row per image with :data:`CSV_COLUMNS`, written atomically (names as in
    :func:`skinseg.runtime.report.write_results`: their own bytes, formula-like cells quoted)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        cells = row.as_row()
        for key in ("stem", "image", "error"):
            cells[key] = csv_cell(str(cells[key]))
        writer.writerow(cells)
    write_bytes_atomic(path, buf.getvalue().encode("utf-8", "surrogateescape"))


def write_summary_json(path: str | Path, summary: Mapping[str, Any]) -> None:
    """``summary.json`` (indented, UTF-8), written atomically; ``Path`` values become strings."""
    write_bytes_atomic(path, (json_text(dict(summary), indent=2) + "\n").encode("utf-8"))


WORST_RECORD = {"made_by": "skinseg evaluate"}  # worst.png's record: a rerun knows the file is its own (is_ours)


def write_worst_png(path: str | Path, result: EvaluationResult, *, columns: int = COLUMNS) -> bool:
    """``worst.png``: the kept worst cases as a grid, carrying a skinseg record (:data:`WORST_RECORD`); returns False
    (and writes nothing) when there are none."""
    if not result.worst:
        return False
    grid = worst_grid([panel for _, panel in result.worst], columns=columns)
    write_bytes_atomic(path, with_record(encode_png(grid), WORST_RECORD))
    return True
