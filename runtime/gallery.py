"""An ``index.html`` gallery of a batch: each image's input, overlay and lesion area, in one static page.

The page links the files the batch wrote (relative links, so the output folder can be moved or served as is)
and never embeds pixel data. Everything taken from file names is HTML-escaped.
"""

from __future__ import annotations

import html
import os
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import Any

from skinseg.runtime.imageio import write_bytes_atomic

GALLERY_NAME = "index.html"

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>skinseg results</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5rem; background: #fafafa; color: #222; }}
h1 {{ font-size: 1.3rem; }} .meta {{ color: #555; font-size: .9rem; }}
.grid {{ display: grid; grid-template-columns: repeat(auto-fill, minmax(520px, 1fr)); gap: 1rem; }}
.card {{ background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: .6rem; }}
.pair {{ display: grid; grid-template-columns: 1fr 1fr; gap: .4rem; }}
.pair img {{ width: 100%; height: auto; display: block; background: #eee; }}
.name {{ font-weight: 600; word-break: break-all; }} .failed {{ color: #b00020; }}
</style></head><body>
<h1>skinseg results</h1>
<p class="meta">{summary}</p>
<div class="grid">
{cards}
</div></body></html>
"""


def _link(target: Path, page_dir: Path) -> str:
    rel = os.path.relpath(target, page_dir)
    return html.escape(PurePosixPath(*Path(rel).parts).as_posix(), quote=True)


def _card(row: dict[str, Any], output: Path, overlay: Path | None, source: Path | None) -> str:
    name = html.escape(str(row.get("path", "")))
    if row.get("status") == "failed":
        error = html.escape(str(row.get("error", "")))
        return f'<div class="card"><div class="name">{name}</div><div class="failed">failed: {error}</div></div>'
    images = []
    for label, path in (("input", source), ("overlay", overlay)):
        if path is not None and path.exists():
            href = _link(path, output)
            images.append(f'<a href="{href}"><img loading="lazy" src="{href}" alt="{label} {name}"></a>')
    fraction = row.get("area_fraction")
    area = f"{float(fraction) * 100:.1f}% of the image" if fraction not in (None, "") else "n/a"
    size = f"{row.get('width')}×{row.get('height')}" if row.get("width") else ""
    return (
        f'<div class="card"><div class="name">{name}</div><div class="meta">{size} · lesion area {area}'
        f' ({row.get("area_px", "?")} px)</div><div class="pair">{"".join(images)}</div></div>'
    )


def write_gallery(
    output: Path, entries: Iterable[tuple[dict[str, Any], Path | None, Path | None]], *, summary: str = ""
) -> Path:
    """Write ``output/index.html`` from ``(row, overlay path, input path)`` entries; return its path."""
    cards = "\n".join(_card(row, output, overlay, source) for row, overlay, source in entries)
    page = _PAGE.format(summary=html.escape(summary), cards=cards)
    path = output / GALLERY_NAME
    write_bytes_atomic(path, page.encode("utf-8"))
    return path
