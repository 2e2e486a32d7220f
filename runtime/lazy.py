"""Lazy attributes for a package's ``__init__``: ``import skinseg`` stays cheap (no numpy, OpenCV or
onnxruntime) until ``skinseg.Segmenter`` is first used."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def exports(package: str, where: dict[str, str], namespace: dict[str, Any]) -> tuple[Callable, Callable]:
    """``(__getattr__, __dir__)`` for ``package``: each name in ``where`` is imported from its module on first use
    and then kept in ``namespace`` (the package's globals)."""

    def __getattr__(name: str) -> Any:  # noqa: N807
        if name in where:
            value = getattr(importlib.import_module(where[name]), name)
            namespace[name] = value
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:  # noqa: N807
        return sorted(set(namespace) | set(where))

    return __getattr__, __dir__
