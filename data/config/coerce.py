"""Typing a parsed value against the schema's type hints, and the words errors use to describe types and fixes."""

from __future__ import annotations

import difflib
import os
import types
import typing
from pathlib import Path
from typing import Any, Union


def describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if tp is Path:
        return "path string"
    if origin in (Union, types.UnionType):
        return " or ".join(describe(a) for a in typing.get_args(tp))
    if origin in (list, tuple):
        args = typing.get_args(tp)
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            return f"tuple of {describe(args[0])}"
        if origin is tuple:
            return f"tuple of {len(args)} ({', '.join(describe(a) for a in args)})"
        return f"list of {describe(args[0])}"
    if tp is type(None):
        return "None"
    return getattr(tp, "__name__", str(tp))


def expects_str(tp: Any) -> bool:
    """Whether a bare word is read as a string for type hint ``tp`` (a string or path, or an optional one)."""
    return tp in (str, Path) or typing.get_args(tp) in ((str, type(None)), (Path, type(None)))


def coerce(value: Any, tp: Any, base_dir: Path | None) -> Any:
    """Check ``value`` against type hint ``tp``; return the typed value or raise TypeError."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return coerce(value, arg, base_dir)
            except TypeError:
                continue
        raise TypeError
    if tp is type(None):
        if value is None:
            return None
        raise TypeError
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise TypeError
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise TypeError
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                return float(value)
            except OverflowError:  # an integer beyond float range
                raise TypeError from None
        raise TypeError
    if tp is str:
        if isinstance(value, str):
            return value
        raise TypeError
    if tp is Path:
        if isinstance(value, str) and value.strip():
            try:
                p = Path(value).expanduser()
            except RuntimeError:  # ~user of an unknown user
                raise TypeError from None
            return p if p.is_absolute() or base_dir is None else Path(os.path.normpath(base_dir / p))
        raise TypeError
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            if origin is list and not isinstance(value, (dict, set)):
                value = [value]  # a single value where a list is expected: [value]
            else:
                raise TypeError
        args = typing.get_args(tp)
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                raise TypeError
            return tuple(coerce(v, a, base_dir) for v, a in zip(value, args, strict=True))
        items = [coerce(v, args[0], base_dir) for v in value]
        return tuple(items) if origin is tuple else items
    raise TypeError


def suggest(name: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.6)
    return f"did you mean `{close[0]}`?" if close else f"valid: {', '.join(sorted(valid))}"
