"""Writing a config back as INI text (the run folder's ``config.resolved.ini``, ``config init``, ``config show``)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from skinseg.data.config.schema import SECTIONS, Config


def render_config(cfg: Config, *, comments: bool = True, only_present: bool = False) -> str:
    """The config as INI text, with each section's help as a comment. Round-trips through :func:`parse_config`."""
    lines: list[str] = []
    for name in SECTIONS:
        sub = getattr(cfg, name)
        keys = [f.name for f in dataclasses.fields(sub)]
        if only_present:
            keys = [k for k in keys if k in cfg.present.get(name, set())]
            if not keys:
                continue
        if comments and sub.__doc__:
            lines.append(f"; {sub.__doc__.strip()}")
        lines.append(f"[{name}]")
        width = max((len(k) for k in keys), default=0)
        for k in keys:
            lines.append(f"{k:<{width}} = {_render_value(getattr(sub, k))}")
        lines.append("")
    return "\n".join(lines)


def _render_value(v: Any) -> str:
    """A literal the config parser reads back as ``v``: strings and paths in double quotes with quotes, backslashes
    and control characters escaped (a folder named ``my "data"`` included), lists and tuples element by element."""
    if isinstance(v, Path):
        v = v.as_posix()
    if isinstance(v, str):
        text = json.dumps(v, ensure_ascii=False)  # JSON's escapes are Python's: \", \\, \n, \uXXXX
        for char in "\x85\u2028\u2029":  # line breaks to str.splitlines(), which JSON leaves raw
            text = text.replace(char, f"\\u{ord(char):04x}")
        return text
    if isinstance(v, list):
        return "[" + ", ".join(_render_value(x) for x in v) + "]"
    if isinstance(v, tuple):
        return "(" + ", ".join(_render_value(x) for x in v) + ("," if len(v) == 1 else "") + ")"
    return repr(v)
