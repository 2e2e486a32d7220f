"""Values given on the command line (or by a caller) over a loaded config, typed and checked like the file's."""

from __future__ import annotations

import dataclasses
import os
import typing
from pathlib import PurePath
from typing import Any

from skinseg.data.config.coerce import coerce, describe, expects_str, suggest
from skinseg.data.config.literals import parse_literal
from skinseg.data.config.schema import ALIASES, MOVED, SECTIONS, Config
from skinseg.data.config.validate import check_ranges
from skinseg.runtime.errors import ConfigError


def apply_overrides(cfg: Config, overrides: dict[str, Any]) -> Config:
    """Return ``cfg`` with CLI values applied (CLI wins). Keys are ``section.key``; None values are ignored.

    A value is typed as the file's would be: text is read as the file reads a value (``"0.001"`` is the float
    0.001, ``"True"`` the boolean), then checked against the key's type (an int where a float is expected becomes
    a float, one folder where a list is expected a list of one); paths stay relative to the current folder.
    The seed's spellings (:data:`ALIASES`) and places (:data:`MOVED`) are read as in a file, with a warning in
    ``cfg.warnings``. ConfigError, naming the key, for an unknown section or key, or a value of the wrong type or
    out of range.
    """
    for dotted, value in overrides.items():
        if value is None:
            continue
        written_section, _, written_key = dotted.partition(".")
        if written_section not in SECTIONS:
            raise ConfigError(
                f"override `{dotted}`: no such section `{written_section}`; {suggest(written_section, list(SECTIONS))}"
            )
        name = ALIASES.get((written_section, written_key)) or ALIASES.get(("*", written_key)) or written_key
        section, key = MOVED.get((written_section, name), (written_section, name))
        if (section, key) != (written_section, written_key):
            why = "the seed's place for it" if section != written_section else "the seed's spelling"
            cfg.warnings.append(f"override `{dotted}` is read as `{section}.{key}` ({why})")
        sub = getattr(cfg, section)
        if key not in {f.name for f in dataclasses.fields(sub)}:
            raise ConfigError(
                f"override `{dotted}`: no such key; {suggest(key, [f.name for f in dataclasses.fields(sub)])}"
            )
        setattr(sub, key, _typed(dotted, value, typing.get_type_hints(type(sub))[key]))
        cfg.present.setdefault(section, set()).add(key)
    check_ranges(cfg, str(cfg.source) if cfg.source else "command line")  # the file's lines, with the CLI's values
    return cfg


def _typed(dotted: str, value: Any, tp: Any) -> Any:
    """``value`` typed for hint ``tp`` as a file's value would be; ConfigError naming ``dotted`` otherwise."""
    if isinstance(value, str):  # text, as a file holds it (a Path is taken as it is)
        try:
            value = parse_literal(value, expects_str=expects_str(tp))
        except ValueError as e:
            raise ConfigError(f"override `{dotted}`: {e}") from None
    try:
        return coerce(_text_paths(value), tp, None)
    except TypeError:
        raise ConfigError(f"override `{dotted}` = {value!r} has the wrong type; expected {describe(tp)}") from None


def _text_paths(value: Any) -> Any:
    """Paths as the text a file would hold (lists and tuples of them too)."""
    if isinstance(value, PurePath):
        return os.fspath(value)
    if isinstance(value, (list, tuple)):
        return type(value)(_text_paths(v) for v in value)
    return value
