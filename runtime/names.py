"""File names as they are, and as they are shown.

A file name on Linux is bytes; Python hands over the ones that are not UTF-8 as lone surrogates
(``'a\\udce9.jpg'`` for ``b'a\\xe9.jpg'``), which no UTF-8 file, terminal or page can hold. skinseg keeps names as
they are where they must round-trip (``results.csv`` is written with ``surrogateescape``, so the bytes come back
unchanged; JSON escapes them as ``\\udce9``) and shows them with :func:`shown` wherever a person reads them: logs,
messages, the gallery. :func:`shown` also escapes control characters, so a newline in a file name cannot forge a
log line.
"""

from __future__ import annotations

import json
import os
from typing import Any

__all__ = ["csv_cell", "from_csv_cell", "json_text", "shown"]

_CONTROL = {i: f"\\x{i:02x}" for i in (*range(0x20), 0x7F)} | {ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"}
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def shown(text: Any) -> str:
    """``text`` (a name or a message) printable on one line: undecodable bytes as ``\\xNN``, controls escaped."""
    s = os.fspath(text) if isinstance(text, os.PathLike) else str(text)
    if any("\udc80" <= c <= "\udcff" for c in s):
        s = s.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return s.translate(_CONTROL)


def json_text(data: Any, *, indent: int | None = None) -> str:
    """JSON for ``data``: UTF-8 text as is, names with undecodable bytes as ``\\udcNN`` escapes (valid JSON that
    ``json.loads`` turns back into the same name)."""
    text = json.dumps(data, indent=indent, ensure_ascii=False, allow_nan=False, default=str)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(data, indent=indent, ensure_ascii=True, allow_nan=False, default=str)
    return text


def csv_cell(text: str) -> str:
    """A text cell a spreadsheet will not run: one starting with ``= + - @`` (a formula) gets a leading ``'``."""
    return "'" + text if text.startswith(_FORMULA_START) or text.startswith("'") and text[1:2] in "=+-@" else text


def from_csv_cell(text: str) -> str:
    """The text :func:`csv_cell` stored."""
    return text[1:] if text.startswith("'") and text[1:2] in ("=", "+", "-", "@", "'", "\t", "\r") else text
