"""One value of a config: a Python literal, parsed without evaluating anything."""

from __future__ import annotations

import ast
import re
from typing import Any

_BARE_STRING_RE = re.compile(r"^[A-Za-z0-9_./\\~:\-]+$")


def _strip_inline_comment(text: str) -> str:
    """Remove a trailing ``; comment`` or ``# comment`` that is outside quotes."""
    quote: str | None = None
    for i, ch in enumerate(text):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch in ";#" and (i == 0 or text[i - 1].isspace()):
            return text[:i].rstrip()
    return text


def parse_literal(text: str, *, expects_str: bool) -> Any:
    """Parse one value as a Python literal; never evaluates code.

    A bare word (``relu``, ``./models``) is accepted as a string where the schema expects a string or path.
    Raises ValueError with a reason on anything else.
    """
    candidates = [text]
    stripped = _strip_inline_comment(text)
    if stripped != text:
        candidates.append(stripped)
    for candidate in candidates:
        if candidate == "":
            return None if not expects_str else ""
        try:
            return ast.literal_eval(candidate)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
    if expects_str and _BARE_STRING_RE.match(stripped):
        return stripped.strip()
    if stripped.lower() in ("true", "false", "none"):
        raise ValueError(f"{stripped!r} is not a literal: write {stripped.capitalize()} (Python's spelling)")
    raise ValueError(
        f'{stripped[:60]!r} is not a literal (number, "string", True/False, None, tuple or list); '
        "nothing in a config is evaluated as code"
    )
