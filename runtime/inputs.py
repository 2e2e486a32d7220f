"""Input discovery for the batch runner: which image files a `skinseg infer` run reads, and where their outputs go.

Sources are files, folders or glob patterns; each image found becomes an :class:`InputItem` carrying its path
relative to the output folder. Files inside the output folder that look like our own outputs are never inputs.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from skinseg.runtime.errors import UsageError
from skinseg.runtime.imageio import SUPPORTED_EXTENSIONS, is_supported
from skinseg.runtime.outputs import OUTPUT_SUFFIXES

__all__ = ["InputItem", "discover_inputs", "output_key"]

_GLOB_CHARS = frozenset("*?[")


@dataclass(frozen=True)
class InputItem:
    """An input image and where its outputs go, relative to the output folder (POSIX form)."""

    path: Path
    rel: PurePosixPath


def _has_glob(text: str) -> bool:
    return any(c in _GLOB_CHARS for c in text)


def _glob_base(pattern: str) -> Path:
    """The folder a glob pattern starts from: its leading components without wildcards."""
    base = list(itertools.takewhile(lambda part: not _has_glob(part), Path(pattern).parts))
    return Path(*base) if base else Path(".")


def _inside(real: str, root_real: str) -> bool:
    return real == root_real or real.startswith(root_real.rstrip(os.sep) + os.sep)


def _is_our_output(name: str) -> bool:
    return name.lower().endswith(OUTPUT_SUFFIXES)


def _walk(root: Path, rel: PurePosixPath, *, recursive: bool, output_real: str | None) -> Iterator[InputItem]:
    """Supported images under ``root``; symlinked folders are followed once (loops end), hidden names skipped,
    and files that look like our own outputs inside the output folder are ignored."""
    visited: set[str] = set()
    stack = [(root, rel)]
    while stack:
        folder, folder_rel = stack.pop()
        real = os.path.realpath(folder)
        if real in visited:
            continue
        visited.add(real)
        in_output = output_real is not None and _inside(real, output_real)
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:
            continue  # an unreadable sub-folder is not an input
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                is_dir = entry.is_dir()
                is_file = not is_dir and entry.is_file()
            except OSError:
                continue
            if is_dir and recursive:
                stack.append((Path(entry.path), folder_rel / entry.name))
            elif is_file and is_supported(entry.name) and not (in_output and _is_our_output(entry.name)):
                yield InputItem(Path(entry.path), folder_rel / entry.name)


def discover_inputs(
    sources: Iterable[str | os.PathLike[str]], *, recursive: bool = False, output: str | os.PathLike[str] | None = None
) -> list[InputItem]:
    """The images named by ``sources`` (files, folders or glob patterns), each once, sorted by output path.

    A folder's images map to their path below that folder (sub-folders only with ``recursive``); a single file
    maps to its name; a glob match maps to its path below the pattern's fixed leading folders. Supported
    extensions (any case): ``SUPPORTED_EXTENSIONS``. Raises :class:`UsageError` for a source that does not
    exist or a named file that is not a supported image.
    """
    output_real = os.path.realpath(output) if output is not None else None
    found: list[InputItem] = []
    for source in sources:
        text = os.fspath(source)
        path = Path(text)
        if path.is_dir():
            found.extend(_walk(path, PurePosixPath(), recursive=recursive, output_real=output_real))
        elif path.is_file():
            if not is_supported(path):
                raise UsageError(
                    f"{text}: not a supported image extension (supported: {', '.join(sorted(SUPPORTED_EXTENSIONS))})"
                )
            found.append(InputItem(path, PurePosixPath(path.name)))
        elif _has_glob(text):
            found.extend(_glob(text, recursive=recursive, output_real=output_real))
        else:
            raise UsageError(f"{text}: no such file or folder; check the SOURCE path")
    unique: dict[str, InputItem] = {}
    for item in found:
        unique.setdefault(os.path.realpath(item.path), item)
    return sorted(unique.values(), key=lambda i: str(i.rel))


def _glob(pattern: str, *, recursive: bool, output_real: str | None) -> Iterator[InputItem]:
    import glob

    base = _glob_base(pattern)
    for match in sorted(glob.glob(pattern, recursive=recursive)):
        path = Path(match)
        rel = PurePosixPath(Path(os.path.relpath(path, base)).as_posix())
        if path.is_dir():
            yield from _walk(path, rel, recursive=recursive, output_real=output_real)
        elif path.is_file() and is_supported(path):
            in_output = output_real is not None and _inside(os.path.realpath(path.parent), output_real)
            if not (in_output and _is_our_output(path.name)):
                yield InputItem(path, rel)


def output_key(rel: PurePosixPath) -> tuple[str, str]:
    """Two inputs with the same key would write the same output files (compared case-insensitively)."""
    return (str(rel.parent).casefold(), rel.stem.casefold())
