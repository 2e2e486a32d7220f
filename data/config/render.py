"""Writing a config back as INI text (the run folder's ``config.resolved.ini``, ``config init``, ``config show``)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from skinseg.data.config.schema import SECTIONS, Config, plain


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
    if isinstance(v, Path):
        return repr(v.as_posix()).replace("'", '"')
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (list, tuple)):
        return repr(plain(v)).replace("'", '"')
    return repr(v)
