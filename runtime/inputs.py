"""Input discovery for the batch runner: which image files a `skinseg infer` run reads, and where their outputs go.

Sources are files, folders or glob patterns; each image found becomes an :class:`InputItem` carrying its path
relative to the output folder. With several folders given, each one's outputs go to a sub-folder named after it
(``infer clinicA/ clinicB/`` writes ``out/clinicA/...`` and ``out/clinicB/...``), so two folders holding the same
file names never collide. Never inputs: files that look like our own outputs in a folder that holds outputs (the
output folder, any folder with a skinseg settings stamp, i.e. an earlier run's output folder, and their
sub-folders); the photos in such a folder are inputs like any others (``--output`` may be the input folder). A
sub-folder that cannot be read is reported, not silently skipped; image files with hidden names (``.x.jpg``) are
listed in :attr:`Discovery.hidden`, so the caller can say so.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from skinseg.runtime.atomic import temp_target
from skinseg.runtime.errors import UsageError
from skinseg.runtime.imageio import SUPPORTED_EXTENSIONS, is_supported
from skinseg.runtime.outputs import OUTPUT_SUFFIXES, SETTINGS_NAME

__all__ = ["Discovery", "InputItem", "Unreadable", "discover", "discover_inputs", "output_key"]

_GLOB_CHARS = frozenset("*?[")


@dataclass(frozen=True)
class InputItem:
    """An input image and where its outputs go, relative to the output folder (POSIX form)."""

    path: Path
    rel: PurePosixPath


@dataclass(frozen=True)
class Unreadable:
    """A folder that could not be listed: its images, if any, were not found."""

    path: Path
    rel: PurePosixPath
    reason: str


@dataclass
class Discovery:
    items: list[InputItem]
    unreadable: list[Unreadable]
    hidden: list[Path] = field(default_factory=list)  # image files skipped for their hidden names (``.x.jpg``)


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


def _walk(
    root: Path,
    rel: PurePosixPath,
    *,
    recursive: bool,
    output_real: str | None,
    unreadable: list[Unreadable],
    hidden: list[Path],
    holds_outputs: bool = False,
) -> Iterator[InputItem]:
    """Supported images under ``root``; symlinked folders are followed once (loops end), hidden names skipped (the
    image files among them listed in ``hidden``), and files that look like our own outputs ignored in a folder that
    holds outputs: the output folder, a folder with a settings stamp (an earlier run's output folder, perhaps also
    its input folder), and their sub-folders (``holds_outputs``: ``root`` is one of these already)."""
    visited: set[str] = set()
    stack = [(root, rel, holds_outputs)]
    while stack:
        folder, folder_rel, holds_outputs = stack.pop()
        real = os.path.realpath(folder)
        if real in visited:
            continue
        visited.add(real)
        holds_outputs = (
            holds_outputs
            or (output_real is not None and _inside(real, output_real))
            or os.path.lexists(os.path.join(folder, SETTINGS_NAME))
        )
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            unreadable.append(Unreadable(Path(folder), folder_rel, e.strerror or str(e)))
            continue
        for entry in entries:
            try:
                is_dir = entry.is_dir()
            except OSError:  # a symlink loop: an image-named one is an input whose read says why
                is_dir = False
            if entry.name.startswith("."):
                if not is_dir and is_supported(entry.name) and temp_target(entry.name) is None:
                    hidden.append(Path(entry.path))
                continue
            # Anything else with an image's name is an input, FIFOs and broken links included: reading refuses it
            # with a row that says why, instead of leaving a photo out of the report without a word.
            if is_dir and recursive:
                stack.append((Path(entry.path), folder_rel / entry.name, holds_outputs))
            elif not is_dir and is_supported(entry.name) and not (holds_outputs and _is_our_output(entry.name)):
                yield InputItem(Path(entry.path), folder_rel / entry.name)


def _folder_names(folders: list[Path]) -> dict[Path, PurePosixPath]:
    """A distinct sub-folder name for each source folder: its name, with as many parents as tell it apart."""
    paths = {folder: Path(os.path.abspath(folder)).parts for folder in folders}
    names: dict[Path, PurePosixPath] = {}
    for folder, parts in paths.items():
        tail = parts
        for depth in range(1, len(parts) + 1):
            tail = parts[-depth:]
            if all(other == parts or other[-depth:] != tail for other in paths.values()):
                break
        kept = [p for p in tail if p.strip(os.sep)]
        names[folder] = PurePosixPath(*kept) if kept else PurePosixPath("root")
    return names


def discover_inputs(
    sources: Iterable[str | os.PathLike[str]], *, recursive: bool = False, output: str | os.PathLike[str] | None = None
) -> list[InputItem]:
    """The images of :func:`discover` (without the unreadable folders)."""
    return discover(sources, recursive=recursive, output=output).items


def discover(
    sources: Iterable[str | os.PathLike[str]], *, recursive: bool = False, output: str | os.PathLike[str] | None = None
) -> Discovery:
    """The images named by ``sources`` (files, folders or glob patterns), each once, sorted by output path.

    A folder's images map to their path below that folder (sub-folders only with ``recursive``), below a
    sub-folder named after it when several folders are given; a single file maps to its name; a glob match maps
    to its path below the pattern's fixed leading folders. Supported extensions (any case):
    ``SUPPORTED_EXTENSIONS``. Raises :class:`UsageError` for a source that does not exist or a named file that
    is not a supported image.
    """
    output_real = os.path.realpath(output) if output is not None else None
    sources = [os.fspath(s) for s in sources]
    folders = [Path(text) for text in sources if Path(text).is_dir()]
    prefixes = _folder_names(folders) if len(folders) > 1 else {}
    found: list[InputItem] = []
    unreadable: list[Unreadable] = []
    hidden: list[Path] = []
    for text in sources:
        path = Path(text)
        if path.is_dir():
            base = prefixes.get(path, PurePosixPath())
            found.extend(
                _walk(path, base, recursive=recursive, output_real=output_real, unreadable=unreadable, hidden=hidden)
            )
        elif os.path.lexists(path):  # a file, or a FIFO or device that the read refuses with a row
            if not is_supported(path):
                raise UsageError(
                    f"{text}: not a supported image extension (supported: {', '.join(sorted(SUPPORTED_EXTENSIONS))})"
                )
            found.append(InputItem(path, PurePosixPath(path.name)))
        elif _has_glob(text):
            found.extend(
                _glob(text, recursive=recursive, output_real=output_real, unreadable=unreadable, hidden=hidden)
            )
        else:
            raise UsageError(f"{text}: no such file or folder; check the SOURCE path")
    unique: dict[str, InputItem] = {}
    for item in sorted(found, key=lambda i: os.path.islink(i.path)):  # a file and a link to it: the file's name
        unique.setdefault(os.path.realpath(item.path), item)
    return Discovery(sorted(unique.values(), key=lambda i: str(i.rel)), unreadable, sorted(set(hidden)))


def _glob(
    pattern: str, *, recursive: bool, output_real: str | None, unreadable: list[Unreadable], hidden: list[Path]
) -> Iterator[InputItem]:
    import glob

    base = _glob_base(pattern)
    if not base.is_dir():  # an unmounted share must not look like a night without new photos
        raise UsageError(f"{pattern}: no such folder {base}; check the SOURCE path (is the share mounted?)")
    for match in sorted(glob.glob(pattern, recursive=recursive)):
        path = Path(match)
        rel = PurePosixPath(Path(os.path.relpath(path, base)).as_posix())
        if path.is_dir():
            yield from _walk(
                path,
                rel,
                recursive=recursive,
                output_real=output_real,
                unreadable=unreadable,
                hidden=hidden,
                holds_outputs=_holds_outputs(path, base, output_real),
            )
        elif is_supported(path) and not (_is_our_output(path.name) and _holds_outputs(path.parent, base, output_real)):
            yield InputItem(path, rel)


def _holds_outputs(folder: Path, base: Path, output_real: str | None) -> bool:
    """Whether ``folder`` holds outputs as :func:`_walk` judges it: inside the output folder, or at or below a
    folder with a settings stamp, looking up from ``folder`` to the glob's fixed ``base``."""
    if output_real is not None and _inside(os.path.realpath(folder), output_real):
        return True
    stop = os.path.abspath(base)
    at = os.path.abspath(folder)
    while True:
        if os.path.lexists(os.path.join(at, SETTINGS_NAME)):
            return True
        if at == stop or not _inside(at, stop) or os.path.dirname(at) == at:
            return False
        at = os.path.dirname(at)


def output_key(rel: PurePosixPath) -> tuple[str, str]:
    """Two inputs with the same key would write the same output files (compared case-insensitively)."""
    return (str(rel.parent).casefold(), rel.stem.casefold())
