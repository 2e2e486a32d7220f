"""An ``index.html`` gallery of a batch: each image's overlay thumbnail, name, size and lesion area, in one page.

The page is self-contained: thumbnails (at most :data:`THUMB_SIDE` px) are embedded as JPEG data, so it opens
fast, and it still works when the output folder is moved or copied elsewhere. Each thumbnail links to the full
overlay, relatively, inside the output folder. At most :data:`MAX_CARDS` images are shown (failures first, then
this run's images); ``results.csv`` lists them all. Names are shown escaped (HTML, undecodable bytes, control
characters); link targets are percent-encoded from the file name's own bytes.
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

from skinseg.runtime.imageio import write_bytes_atomic
from skinseg.runtime.names import shown

GALLERY_NAME = "index.html"
THUMB_SIDE = 320
MAX_CARDS = 500

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>skinseg results</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5rem; background: #fafafa; color: #222; }}
h1 {{ font-size: 1.3rem; }} .meta {{ color: #555; font-size: .9rem; }}
.grid {{ display: grid; grid-template-columns: repeat(auto-fill, minmax(260px, 1fr)); gap: 1rem; }}
.card {{ background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: .6rem; }}
.card img {{ width: 100%; height: auto; display: block; background: #eee; }}
.name {{ font-weight: 600; word-break: break-all; }} .failed {{ color: #b00020; word-break: break-word; }}
</style></head><body>
<h1>skinseg results</h1>
<p class="meta">{summary}</p>
<div class="grid">
{cards}
</div>{more}</body></html>
"""


def _href(target: Path, page_dir: Path) -> str:
    """A relative link to ``target``, percent-encoded from the name's bytes (any file name works)."""
    rel = os.path.relpath(target, page_dir)
    return urllib.parse.quote(os.fsencode(Path(rel).as_posix()), safe="/")


def thumbnail_uri(path: Path) -> str | None:
    """A ``data:`` URI of a small JPEG of the image at ``path`` (libjpeg's reduced decode: a few ms), or None."""
    try:
        data = np.fromfile(path, np.uint8)
    except OSError:
        return None
    flags = cv2.IMREAD_REDUCED_COLOR_8 if data.size > 200_000 else cv2.IMREAD_COLOR
    image = cv2.imdecode(data, flags)
    if image is None:
        return None
    scale = THUMB_SIDE / max(image.shape[:2])
    if scale < 1:
        size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 80])
    return "data:image/jpeg;base64," + base64.b64encode(buf.tobytes()).decode("ascii") if ok else None


def _card(row: dict[str, Any], output: Path, overlay: Path | None) -> str:
    name = html.escape(shown(row.get("path", "")))
    if row.get("status") == "failed":
        error = html.escape(shown(row.get("error", "")))
        return f'<div class="card"><div class="name">{name}</div><div class="failed">failed: {error}</div></div>'
    picture = ""
    uri = thumbnail_uri(overlay) if overlay is not None and overlay.is_file() else None
    if uri is not None and overlay is not None:
        picture = f'<a href="{_href(overlay, output)}"><img src="{uri}" alt="overlay of {name}"></a>'
    fraction = row.get("area_fraction")
    area = f"{float(fraction) * 100:.1f}% of the image" if fraction not in (None, "") else "n/a"
    size = f"{row.get('width')}×{row.get('height')} · " if row.get("width") else ""
    return (
        f'<div class="card">{picture}<div class="name">{name}</div>'
        f'<div class="meta">{size}lesion area {area}</div></div>'
    )


def write_gallery(
    output: Path,
    entries: Iterable[tuple[dict[str, Any], Path | None]],
    *,
    summary: str = "",
    fresh: set[str] = frozenset(),
) -> Path:
    """Write ``output/index.html`` from ``(row, overlay path)`` entries; return its path.

    ``fresh``: the paths this run processed, shown before older ones when there are more than :data:`MAX_CARDS`.
    """
    chosen = sorted(entries, key=lambda e: (e[0].get("status") != "failed", str(e[0].get("path")) not in fresh))
    cards = "\n".join(_card(row, output, overlay) for row, overlay in chosen[:MAX_CARDS])
    more = ""
    if len(chosen) > MAX_CARDS:
        more = f'<p class="meta">{len(chosen) - MAX_CARDS} more image(s): see results.csv</p>'
    page = _PAGE.format(summary=html.escape(shown(summary)), cards=cards, more=more)
    path = output / GALLERY_NAME
    write_bytes_atomic(path, page.encode("utf-8"))
    return path
