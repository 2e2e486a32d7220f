"""The INI layer: text to ``{section: {key: RawValue}}`` with line numbers, and the error list every stage fills."""

from __future__ import annotations

import re
from dataclasses import dataclass

from skinseg.runtime.errors import ConfigError

_SECTION_RE = re.compile(r"^\[\s*([^\]]*?)\s*\]\s*(?:[;#].*)?$")
_KEY_RE = re.compile(r"^([A-Za-z_][A-Za-z0-9_.\-]*)\s*[=:]\s*(.*)$")


@dataclass(frozen=True)
class RawValue:
    text: str
    line: int


class ConfigErrors(ConfigError):
    """Every problem found in a config, reported at once: ``messages`` holds one line each (file, line, key, fix)."""

    def __init__(self, messages: list[str]):
        self.messages = list(messages)
        super().__init__("\n".join(self.messages))


def raise_all(errors: list[str]) -> None:
    """Raise :class:`ConfigErrors` with ``errors`` in the file's line order, if there are any."""
    if errors:
        raise ConfigErrors(sorted(errors, key=lambda m: int(n.group(1)) if (n := _LINE_RE.match(m)) else 0))


_LINE_RE = re.compile(r"^.*?:(\d+): ")


def parse_ini(text: str, source: str, errors: list[str] | None = None) -> dict[str, dict[str, RawValue]]:
    """Split INI text into ``{section: {key: RawValue}}`` keeping line numbers. Comments start with ; or #.

    Problems are appended to ``errors``; without it, :class:`ConfigErrors` lists them all."""
    found: list[str] = [] if errors is None else errors
    sections: dict[str, dict[str, RawValue]] = {}
    current: str | None = None
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line[0] in ";#":
            continue
        if m := _SECTION_RE.match(line):
            current = m.group(1).strip().lower()
            if current in sections:
                found.append(f"{source}:{lineno}: section [{current}] appears twice; merge the two")
            sections.setdefault(current, {})
            continue
        m = _KEY_RE.match(line)
        if m is None:
            found.append(f"{source}:{lineno}: cannot read {line[:60]!r}; expected `key = value` or `[section]`")
            continue
        if current is None:
            found.append(f"{source}:{lineno}: `{m.group(1)}` comes before any [section]; put it under one")
            continue
        key = m.group(1).lower()
        if key in sections[current]:
            first = sections[current][key].line
            found.append(f"{source}:{lineno}: [{current}] {key} is set twice (first on line {first}); keep one")
            continue
        sections[current][key] = RawValue(m.group(2).strip(), lineno)
    if errors is None:
        raise_all(found)
    return sections
