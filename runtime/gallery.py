"""An ``index.html`` gallery of a batch: one row per image, with its overlay, its facts and links to the input, the
mask and the overlay; failed and flagged images first.

The page is self-contained: thumbnails (at most :data:`THUMB_SIDE` px) are embedded as JPEG data, so it opens fast.
The mask and overlay links are relative, inside the output folder (they work wherever the folder is copied); an
input link is relative when the input lies inside the output folder, else an absolute ``file:`` address (it works
however the output folder is moved, as long as the input stays). At most :data:`MAX_ROWS` images are shown
(failed, flagged, then this run's images); ``results.csv`` lists them all. The header says what this run did and what
the folder holds. Names are shown escaped (HTML, undecodable bytes, control characters); links are percent-encoded
from the file name's own bytes.

*Flagged* images are worth a look before the others: no lesion found, a mask that fills most of the photo or
touches its border on three or four sides, or a low mean probability inside the mask (:func:`flags`).
"""

from __future__ import annotations

import base64
import html
import os
import urllib.parse
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from skinseg.runtime.atomic import write_bytes_atomic
from skinseg.runtime.imageheaders import image_size
from skinseg.runtime.names import shown

__all__ = ["GALLERY_NAME", "MAX_ROWS", "flags", "folder_totals", "thumbnail_uri", "write_gallery"]

GALLERY_NAME = "index.html"
THUMB_SIDE = 240
MAX_ROWS = 500
MAX_CARDS = MAX_ROWS  # the former name

# Flags: thresholds for "look at this one first", not errors (a large lesion can fill a close-up).
FILLS_PHOTO = 0.85  # the mask covers this fraction of the photo or more
LOW_CONFIDENCE = 0.7  # mean probability inside the mask below this
BORDER_SIDES = 3  # the mask touches this many of the photo's four sides or more

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>skinseg results</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5rem; background: #fafafa; color: #222; }}
h1 {{ font-size: 1.3rem; margin-bottom: .3rem; }} .meta {{ color: #555; font-size: .9rem; margin: .2rem 0; }}
table {{ border-collapse: collapse; width: 100%; background: #fff; }}
td {{ border-top: 1px solid #ddd; padding: .5rem .6rem; vertical-align: top; }}
td.pic {{ width: {thumb}px; }} td.pic img {{ max-width: {thumb}px; height: auto; display: block; background: #eee; }}
.name {{ font-weight: 600; word-break: break-all; }} .links a {{ margin-right: .8rem; }}
.failed {{ color: #b00020; word-break: break-word; }} .flag {{ color: #8a5a00; }}
tr.failed-row {{ background: #fff5f5; }} tr.flagged-row {{ background: #fffbea; }}
</style></head><body>
<h1>skinseg results</h1>
<p class="meta">{summary}</p>
<p class="meta">{folder}</p>
<table>
{rows}
</table>{more}</body></html>
"""


def _href(target: Path, page_dir: Path) -> str:
    """A link to ``target``: relative inside ``page_dir``, else an absolute ``file:`` address; percent-encoded from
    the name's bytes (any file name works)."""
    target, page_dir = Path(os.path.abspath(target)), Path(os.path.abspath(page_dir))
    if page_dir in target.parents:
        return urllib.parse.quote(os.fsencode(target.relative_to(page_dir).as_posix()), safe="/")
    return target.as_uri()


def thumbnail_uri(path: Path) -> str | None:
    """A ``data:`` URI of a small JPEG of the image at ``path`` (libjpeg's reduced decode: a few ms), or None."""
    try:
        data = np.fromfile(path, np.uint8)
    except OSError:
        return None
    try:  # the largest reduction that still gives THUMB_SIDE px: every thumbnail the same size, whatever the photo's
        long_side = max(image_size(path))
    except Exception:  # not an image we can size: decode it whole (or fail below)
        long_side = 0
    factor = next((f for f in (8, 4, 2) if long_side // f >= THUMB_SIDE), 1)
    flags = {8: cv2.IMREAD_REDUCED_COLOR_8, 4: cv2.IMREAD_REDUCED_COLOR_4, 2: cv2.IMREAD_REDUCED_COLOR_2}
    image = cv2.imdecode(data, flags.get(factor, cv2.IMREAD_COLOR))
    if image is None:
        return None
    scale = THUMB_SIDE / max(image.shape[:2])
    if scale < 1:
        size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 80])
    return "data:image/jpeg;base64," + base64.b64encode(buf.tobytes()).decode("ascii") if ok else None


def _number(value: Any) -> float | None:
    try:
        return None if value in (None, "") else float(value)
    except (TypeError, ValueError):
        return None


def flags(row: dict[str, Any]) -> list[str]:
    """Why a segmented image deserves a look first (empty when none): no lesion, a mask filling the photo or on
    three or four of its borders, a low mean probability; and any ``flag`` or ``review`` the batch recorded."""
    found = [str(row["flag"])] if row.get("flag") else []
    if row.get("status") not in ("ok", "skipped"):
        return found
    if str(row.get("review", "")).lower() in ("true", "1", "yes"):  # the model's own quality estimate
        quality = _number(row.get("quality"))
        found.append("the quality estimate asks for a review" + (f" ({quality:.2f})" if quality is not None else ""))
    area, fraction = _number(row.get("area_px")), _number(row.get("area_fraction"))
    if area == 0:
        return [*found, "no lesion found"]
    if fraction is not None and fraction >= FILLS_PHOTO:
        found.append(f"the mask fills {fraction * 100:.0f}% of the photo")
    box = [_number(row.get(k)) for k in ("bbox_x", "bbox_y", "bbox_w", "bbox_h")]
    width, height = _number(row.get("width")), _number(row.get("height"))
    if None not in box and width and height:
        x, y, w, h = box  # type: ignore[misc]
        sides = (x <= 0) + (y <= 0) + (x + w >= width) + (y + h >= height)
        if sides >= BORDER_SIDES:
            found.append(f"the mask touches {sides} sides of the photo")
    prob = _number(row.get("mean_prob"))
    if prob is not None and prob < LOW_CONFIDENCE:
        found.append(f"low confidence (mean probability {prob:.2f})")
    return found


def _worst_first(row: dict[str, Any], row_flags: list[str]) -> float:
    """Flagged images by their quality estimate, the lowest first (those without one last); others unordered."""
    quality = _number(row.get("quality")) if row_flags else None
    return 2.0 if quality is None else quality


def folder_totals(rows: Iterable[dict[str, Any]]) -> dict[str, int]:
    """What an output folder holds, over every run into it: images, segmented (ok or skipped), failed, flagged."""
    totals = {"images": 0, "segmented": 0, "failed": 0, "flagged": 0}
    for row in rows:
        totals["images"] += 1
        if row.get("status") == "failed":
            totals["failed"] += 1
        elif row.get("status") in ("ok", "skipped"):
            totals["segmented"] += 1
            totals["flagged"] += bool(flags(row))
    return totals


def _paths(outputs: Any) -> tuple[Path | None, Path | None]:
    """(overlay, mask) from an OutputPaths, or an overlay path alone."""
    if outputs is None:
        return None, None
    if hasattr(outputs, "overlay"):
        return outputs.overlay, getattr(outputs, "mask", None)
    return Path(outputs), None


def _is_file(path: Path | None) -> bool:
    """``path.is_file()``, False for a name the file system refuses (ENAMETOOLONG raises on Python 3.11)."""
    try:
        return path is not None and path.is_file()
    except OSError:
        return False


def _row(row: dict[str, Any], output: Path, outputs: Any, row_flags: list[str]) -> str:
    name = html.escape(shown(row.get("path", "")))
    overlay, mask = _paths(outputs)
    links = []
    source = row.get("input")
    if source and os.path.lexists(os.fsdecode(source) if isinstance(source, bytes) else source):
        links.append(f'<a href="{_href(Path(source), output)}">input</a>')
    failed = row.get("status") == "failed"  # outputs under its name, if any, are another input's or an old photo's
    for label, target in (("mask", mask), ("overlay", overlay)):
        if not failed and _is_file(target):
            links.append(f'<a href="{_href(target, output)}">{label}</a>')
    link_cell = f'<div class="links">{"".join(links)}</div>' if links else ""
    if row.get("status") == "failed":
        error = html.escape(shown(row.get("error", "")))
        return (
            f'<tr class="failed-row"><td class="pic"></td><td><div class="name">{name}</div>'
            f'<div class="failed">failed: {error}</div>{link_cell}</td></tr>'
        )
    picture = ""
    uri = thumbnail_uri(overlay) if _is_file(overlay) else None
    if uri is not None and overlay is not None:
        picture = f'<a href="{_href(overlay, output)}"><img src="{uri}" alt="overlay of {name}"></a>'
    fraction = _number(row.get("area_fraction"))
    area = f"{fraction * 100:.1f}% of the image" if fraction is not None else "n/a"
    size = f"{row.get('width')}×{row.get('height')} px · " if row.get("width") else ""
    flagged = "".join(f'<div class="flag">⚑ {html.escape(f)}</div>' for f in row_flags)
    quality = _number(row.get("quality"))
    estimate = "" if quality is None else f" · estimated Jaccard {quality:.2f}"
    cls = ' class="flagged-row"' if row_flags else ""
    return (
        f'<tr{cls}><td class="pic">{picture}</td><td><div class="name">{name}</div>'
        f'<div class="meta">{size}lesion area {area}{estimate}</div>{flagged}{link_cell}</td></tr>'
    )


def write_gallery(
    output: Path,
    entries: Iterable[tuple[dict[str, Any], Any]],
    *,
    summary: str = "",
    fresh: set[str] = frozenset(),
) -> Path:
    """Write ``output/index.html`` from ``(row, outputs)`` entries (``outputs``: the image's
    :class:`~skinseg.runtime.outputs.OutputPaths`, or its overlay path); return the page's path.

    ``summary``: what this run did (the header's first line; the folder's totals are counted from ``entries``);
    ``fresh``: the paths this run processed, shown before older ones of the same kind.
    """
    entries = [(row, outputs, flags(row)) for row, outputs in entries]
    chosen = sorted(
        entries,
        key=lambda e: (
            e[0].get("status") != "failed",
            not e[2],
            _worst_first(e[0], e[2]),
            str(e[0].get("path")) not in fresh,
        ),
    )
    rows = "\n".join(_row(row, output, outputs, row_flags) for row, outputs, row_flags in chosen[:MAX_ROWS])
    more = ""
    if len(chosen) > MAX_ROWS:
        more = f'<p class="meta">{len(chosen) - MAX_ROWS} more image(s): see results.csv</p>'
    totals = folder_totals(row for row, _, _ in entries)
    folder = (
        f"This folder holds {totals['images']} image(s) over all runs: {totals['segmented']} segmented"
        f" ({totals['flagged']} flagged), {totals['failed']} failed. Failed and flagged images come first."
    )
    page = _PAGE.format(summary=html.escape(shown(summary)), folder=folder, rows=rows, more=more, thumb=THUMB_SIDE)
    path = output / GALLERY_NAME
    write_bytes_atomic(path, page.encode("utf-8"))
    return path
