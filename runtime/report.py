"""A batch's report: ``results.csv`` (one row per image), ``summary.json`` and the HTML gallery.

Both files are written atomically; a rerun reads the previous ``results.csv`` (:func:`read_results`) and merges
its rows into it (:func:`merge_rows`): a skipped image's row is what its mask's record says, so the report follows
the disk even after a run killed before writing it; rows of inputs deleted since are dropped first
(:func:`drop_deleted_inputs`). :func:`write_reports` writes all three
at the end of a run.
"""

from __future__ import annotations

import csv
import io
import os
import typing
from collections.abc import Collection, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import cv2
import numpy as np

from skinseg.runtime.atomic import write_bytes_atomic
from skinseg.runtime.errors import ImageError, SkinsegError
from skinseg.runtime.gallery import folder_totals, write_gallery
from skinseg.runtime.names import csv_cell, from_csv_cell, json_text
from skinseg.runtime.outputs import RESULTS_NAME, SUMMARY_NAME, OutputOptions, OutputPaths, output_paths
from skinseg.runtime.records import ImageRow

__all__ = [
    "CSV_FIELDS",
    "RESULTS_NAME",
    "SUMMARY_NAME",
    "BatchSummary",
    "Row",
    "drop_deleted_inputs",
    "empty_row",
    "merge_rows",
    "read_results",
    "stats_row",
    "versions",
    "write_reports",
    "write_results",
]

CSV_FIELDS = ImageRow.columns()  # the columns of results.csv, in order; each documented on ImageRow

Row = dict[str, Any]


def empty_row(rel: PurePosixPath | str, image_path: str | os.PathLike[str]) -> Row:
    """The row of an input before any work: its ``path`` (relative, the report's key) and ``input`` (absolute: a
    later run started in another folder, as cron runs from $HOME, still finds it); every other column empty."""
    row: Row = dict.fromkeys(CSV_FIELDS)
    row.update(path=str(rel), input=os.path.abspath(image_path), status="", error="")
    return row


# --------------------------------------------------------------------------------------------------- rows


def stats_row(stats: dict[str, Any]) -> Row:
    """The report columns of :func:`skinseg.runtime.postprocess.mask_stats` (or a segmenter result's ``stats``)."""
    bbox = stats.get("bbox") or [None] * 4
    return {
        "width": stats["width"],
        "height": stats["height"],
        "area_px": stats["area_px"],
        "area_fraction": stats["fraction"],
        "bbox_x": bbox[0],
        "bbox_y": bbox[1],
        "bbox_w": bbox[2],
        "bbox_h": bbox[3],
        "n_components": stats["n_components"],
        "mean_prob": stats["mean_prob"],
        "quality": stats.get("quality"),
        "review": stats.get("review"),
    }


_TEXT_FIELDS = frozenset({"path", "input", "error"})


def _csv_value(key: str, value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        digits = {"area_fraction": 6, "mean_prob": 4, "quality": 4, "seconds": 3}.get(key, 6)
        return f"{value:.{digits}f}"
    return csv_cell(str(value)) if key in _TEXT_FIELDS else str(value)


_COLUMN_TYPES = typing.get_type_hints(ImageRow)
_INT_FIELDS = frozenset(name for name in CSV_FIELDS if _COLUMN_TYPES[name] == int | None)
_FLOAT_FIELDS = frozenset(name for name in CSV_FIELDS if _COLUMN_TYPES[name] == float | None)


def _parse_csv_row(raw: dict[str, str]) -> Row:
    row: Row = {k: raw.get(k) or "" for k in CSV_FIELDS}
    for key in _TEXT_FIELDS:
        row[key] = from_csv_cell(row[key])
    for key in ("fingerprint", "settings"):
        row[key] = row[key] or None
    for key in _INT_FIELDS | _FLOAT_FIELDS:
        try:
            row[key] = (int if key in _INT_FIELDS else float)(row[key]) if row[key] != "" else None
        except ValueError:
            row[key] = None
    return row


def read_results(path: str | os.PathLike[str]) -> dict[str, Row]:
    """Rows of a previous ``results.csv`` keyed by ``path`` (numbers parsed); empty if missing or unreadable.

    Names are read back byte for byte (``surrogateescape``), as :func:`write_results` wrote them."""
    try:
        with open(path, newline="", encoding="utf-8", errors="surrogateescape") as f:
            rows = [_parse_csv_row(r) for r in csv.DictReader(f) if r.get("path")]
        return {row["path"]: row for row in rows}
    except (OSError, UnicodeDecodeError, csv.Error, KeyError):
        return {}


def write_results(path: str | os.PathLike[str], rows: Iterable[Row]) -> None:
    """Write ``results.csv`` atomically, rows sorted by ``path``.

    A file name that is not UTF-8 is written as its own bytes (``surrogateescape``: it reads back unchanged); text
    cells that a spreadsheet would run as a formula (``=``, ``+``, ``-``, ``@``) start with ``'``."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in sorted(rows, key=lambda r: str(r["path"])):
        writer.writerow({k: _csv_value(k, row.get(k)) for k in CSV_FIELDS})
    write_bytes_atomic(path, buf.getvalue().encode("utf-8", "surrogateescape"))


def drop_deleted_inputs(previous: dict[str, Row], current_paths: Collection[str]) -> dict[str, Row]:
    """``previous`` without the rows of inputs that no longer exist.

    A row is dropped when its ``path`` is not among ``current_paths`` (this run's inputs) and its ``input`` file
    is gone. ``input`` is an absolute path (whatever folder the run that wrote it started in); a relative one, as
    older versions wrote, cannot be checked from another folder, so its row is kept. Rows of inputs that exist but
    were not part of this run (other sources) are kept, and so are rows without an ``input``.
    """
    kept: dict[str, Row] = {}
    for key, row in previous.items():
        source = str(row.get("input") or "")
        if key in current_paths or not os.path.isabs(source) or os.path.lexists(source):
            kept[key] = row
    return kept


def _same_outputs(old: Row | None, row: Row) -> bool:
    """Whether ``old`` describes the outputs ``row`` found up to date: the same input content and settings."""
    return (
        old is not None
        and old.get("width") is not None
        and old.get("fingerprint") == row.get("fingerprint")
        and old.get("settings") == row.get("settings")
    )


def merge_rows(previous: dict[str, dict[str, Any]], current: Iterable[Row]) -> dict[str, Row]:
    """This run's rows over the previous ones.

    A skipped image's row is what its mask's record says (the report is rebuilt from the disk whenever the two
    disagree: a run killed before its report leaves rows of the run before it). The previous row is only used
    where it describes the same outputs (same input content and settings): for the time it took, or for all its
    data when the mask's record holds none.
    """
    merged: dict[str, Row] = dict(previous)
    for row in current:
        old = previous.get(row["path"])
        if row["status"] == "skipped" and _same_outputs(old, row):
            data = {k: v for k, v in row.items() if v is not None and k != "seconds"}
            merged[row["path"]] = {**old, **data, "status": "skipped", "error": ""}
        else:
            merged[row["path"]] = row
    return merged


def versions(*, loaded: tuple[str, ...] = ()) -> dict[str, str]:
    """The versions of skinseg and the libraries that shaped its outputs, for ``summary.json``.

    ``loaded`` names more modules to report when this process has imported them (e.g. ``("tensorflow",
    "keras")`` for a ``.keras`` model evaluated through Keras); they are never imported here.
    """
    import sys

    import onnxruntime

    from skinseg import __version__

    found = {
        "skinseg": __version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
        "opencv": cv2.__version__,
    }
    for name in loaded:
        module = sys.modules.get(name)
        if module is not None:
            found[name] = str(getattr(module, "__version__", "unknown"))
    return found


@dataclass
class BatchSummary:
    """What a batch did; ``exit_code`` is 1 when any image failed or the run stopped early, else 0."""

    ok: int
    failed: int
    skipped: int
    seconds: float
    megapixels: float
    provider: str
    model: str
    model_sha256: str
    output: str
    versions: dict[str, str] = field(default_factory=dict)
    failed_before: int = 0  # images that failed in an earlier run, unchanged since: not retried, still failed
    stopped: str = ""  # why the run ended early ("interrupted", "disk full"), "" when it did not
    not_done: int = 0  # inputs not reached because the run stopped early
    review: int = 0  # this run's segmented images (ok or skipped) whose quality estimate asks for a person's look
    folder: dict[str, int] = field(default_factory=dict)  # the output folder's totals over every run (write_reports)

    @property
    def total(self) -> int:
        return self.ok + self.failed + self.skipped + self.failed_before + self.not_done

    @property
    def megapixels_per_second(self) -> float:
        return self.megapixels / self.seconds if self.seconds > 0 else 0.0

    @property
    def exit_code(self) -> int:
        """1 when an image failed or the run stopped early for a reason other than an interrupt (a full disk, a lost
        Dask scheduler: images are left to do), else 0."""
        return 1 if self.failed or (self.stopped and self.stopped != "interrupted") else 0

    @property
    def interrupted(self) -> bool:
        """Whether an interrupt (or an error that ended the batch) stopped the run."""
        return self.stopped == "interrupted"

    def count(self, row: Row) -> None:
        """Count an image's row: its status (a failure of an earlier run, unchanged and not retried, apart), the
        megapixels segmented and the masks flagged for review."""
        status = row["status"]
        if status == "ok":
            self.ok += 1
            self.megapixels += row["width"] * row["height"] / 1e6
        elif status == "skipped":
            self.skipped += 1
        elif row.get("retried") is False:
            self.failed_before += 1
        else:
            self.failed += 1
        if status in ("ok", "skipped") and row.get("review") == 1:
            self.review += 1

    def to_dict(self) -> dict[str, Any]:
        """The summary as ``summary.json`` and the JSON log's ``summary`` line hold it (keys in this order)."""
        d = {}
        for key, value in asdict(self).items():
            d[key] = value
            if key == "versions":
                d["interrupted"] = self.interrupted
        d.update(total=self.total, megapixels_per_second=round(self.megapixels_per_second, 3))
        d["seconds"] = round(self.seconds, 3)
        d["megapixels"] = round(self.megapixels, 3)
        return d


# --------------------------------------------------------------------------------------------------- writing


def write_reports(
    output: Path, rows: Iterable[Row], summary: BatchSummary, options: OutputOptions, fresh: Iterable[Row] = ()
) -> None:
    """Write ``results.csv``, ``summary.json`` (with ``options``, an :class:`~skinseg.runtime.options.InferOptions`) and
    the gallery into ``output``; :class:`SkinsegError` if they cannot be written. ``fresh``: this run's rows (the
    gallery shows them first)."""
    rows = list(rows)
    try:
        write_results(output / RESULTS_NAME, rows)
        summary.folder = folder_totals(rows)  # this run's counts, and the folder's over every run into it
        text = json_text({**summary.to_dict(), "options": asdict(options)}, indent=2)
        write_bytes_atomic(output / SUMMARY_NAME, text.encode("utf-8"))
        write_gallery(
            output,
            _gallery_entries(output, rows, options),
            summary=_gallery_summary(summary),
            fresh={str(r["path"]) for r in fresh},
        )
    except OSError as e:
        raise SkinsegError(
            f"{output}: cannot write {RESULTS_NAME} or {SUMMARY_NAME} ({e.strerror or e}); the masks are written, "
            "free some space or fix the permissions and run again to rebuild the report"
        ) from None


def _gallery_entries(output: Path, rows: list[Row], options: OutputOptions) -> list[tuple[Row, OutputPaths | None]]:
    entries = []
    for row in sorted(rows, key=lambda r: str(r["path"])):
        try:
            paths: OutputPaths | None = output_paths(output, row["path"], options)
        except ImageError:
            paths = None
        entries.append((row, paths))
    return entries


def _gallery_summary(summary: BatchSummary) -> str:
    before = f", {summary.failed_before} failed before" if summary.failed_before else ""
    return (
        f"This run: {summary.ok} ok, {summary.failed} failed{before}, {summary.skipped} skipped in "
        f"{summary.seconds:.1f} s "
        f"on {summary.provider}; model {Path(summary.model).name} (sha256 {summary.model_sha256[:12]})"
    )
