"""Reading a config: the INI parsed, each key found in the schema (the seed's spellings and places too), typed and
checked; every problem reported at once."""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

from skinseg.data.config.coerce import coerce, describe, expects_str, suggest
from skinseg.data.config.ini import RawValue, parse_ini, raise_all
from skinseg.data.config.literals import parse_literal
from skinseg.data.config.schema import ALIASES, MOVED, SECTIONS, Config
from skinseg.data.config.validate import check_ranges, ignored_keys_warning
from skinseg.runtime.errors import ConfigError


def load_config(path: str | Path) -> Config:
    """Read and validate a config file. Raises :class:`ConfigError` with file, line, key and a fix."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found; create one with `skinseg config init {path}`") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read config ({e.__class__.__name__}: {e}); check the file") from None
    return parse_config(text, source=str(path), base_dir=path.resolve().parent)


def parse_config(text: str, *, source: str = "<config>", base_dir: Path | None = None) -> Config:
    """Validate INI ``text`` against the schema. ``base_dir`` anchors relative paths.

    Every problem is found in one pass: :class:`ConfigErrors` lists them all, one line each."""
    errors: list[str] = []
    raw = parse_ini(text, source, errors)
    cfg = Config(source=Path(source) if source != "<config>" else None)
    placed = _place(raw, source, cfg.warnings, errors)
    hints_cache: dict[type, dict[str, Any]] = {}
    for section, entries in placed.items():
        cls = SECTIONS[section]
        hints = hints_cache.setdefault(cls, typing.get_type_hints(cls))
        values: dict[str, Any] = {}
        for name, (written, key, rv) in entries.items():
            cfg.lines[(section, name)] = rv.line
            if name not in hints:
                errors.append(f"{source}:{rv.line}: unknown key `{key}` in [{written}]; {suggest(name, list(hints))}")
                continue
            tp = hints[name]
            try:
                literal = parse_literal(rv.text, expects_str=expects_str(tp))
            except ValueError as e:
                errors.append(f"{source}:{rv.line}: [{written}] {key}: {e}")
                continue
            try:
                values[name] = coerce(literal, tp, base_dir)
            except TypeError:
                errors.append(
                    f"{source}:{rv.line}: [{written}] {key} = {rv.text[:60]} has the wrong type; "
                    f"expected {describe(tp)}"
                )
        setattr(cfg, section, cls(**values))
        cfg.present[section] = set(values)
    check_ranges(cfg, source, errors)
    raise_all(errors)
    ignored = ignored_keys_warning(cfg, source)
    if ignored:
        cfg.warnings.append(ignored)
    return cfg


def _place(
    raw: dict[str, dict[str, RawValue]], source: str, warnings: list[str], errors: list[str]
) -> dict[str, dict[str, tuple[str, str, RawValue]]]:
    """Each key of the file in the section and under the name the schema gives it: ``{section: {name: (section
    written, key written, value)}}``. The seed's spellings (:data:`ALIASES`) and places (:data:`MOVED`) are read
    with a warning; a setting given in its own section and in the seed's place takes its own section's value."""
    placed: dict[str, dict[str, tuple[str, str, RawValue]]] = {}
    dropped: list[tuple[tuple[str, str, RawValue], tuple[str, str, RawValue], str, str]] = []
    for section, entries in raw.items():
        if section not in SECTIONS:
            errors.append(f"{source}: unknown section [{section}]; {suggest(section, list(SECTIONS))}")
            continue
        placed.setdefault(section, {})
        for key, rv in entries.items():
            name = ALIASES.get((section, key)) or ALIASES.get(("*", key)) or key
            target, name = MOVED.get((section, name), (section, name))
            slot = placed.setdefault(target, {})
            entry = (section, key, rv)
            if name in slot:
                first = slot[name]
                # its own section's value wins; else, as for any key, the later one
                entry, lost = (first, entry) if first[0] == target != section else (entry, first)
                if entry[0] != lost[0]:
                    dropped.append((lost, entry, target, name))
            slot[name] = entry
    for target, entries in placed.items():
        for name, (section, key, rv) in entries.items():
            if target != section:
                warnings.append(
                    f"{source}:{rv.line}: [{section}] `{key}` is read as [{target}] `{name}` (the seed's place for it)"
                )
            elif name != key:
                warnings.append(f"{source}:{rv.line}: [{section}] `{key}` is read as `{name}` (the seed's spelling)")
    for (section, key, rv), (kept_section, kept_key, kept_rv), target, name in dropped:
        warnings.append(
            f"{source}:{rv.line}: [{section}] `{key}` is ignored: [{kept_section}] `{kept_key}` (line {kept_rv.line}) "
            f"sets [{target}] {name}"
        )
    return placed
