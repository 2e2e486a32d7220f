"""Atomic file writes: every file skinseg writes (masks, overlays, reports, ONNX and Keras models, training logs)
goes through :func:`atomic_path`, so a reader or a killed run never sees half a file.

A file is written under a hidden temporary name in its own folder, flushed, and renamed over its final name
(``os.replace`` is atomic within a filesystem). Temporary names are unique per process and call
(``.<name>.<pid>-<8 hex>.tmp``, keeping a suffix that a writer needs, such as ``.keras``), so two writers never
collide; on any error the temporary file is removed. A process killed mid-write leaves its temporary file behind:
:func:`remove_stale_temps` removes those whose process is gone (or all of them, for a caller that holds the
folder's lock). Names too long for a temporary name keep a prefix and a hash of the name instead.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = [
    "atomic_path",
    "remove_stale_temps",
    "temp_name",
    "temp_target",
    "write_bytes_atomic",
    "write_json_atomic",
    "write_text_atomic",
]

NAME_MAX = 255  # bytes in one file name on Linux, macOS and Windows filesystems
_TEMP = re.compile(r"^\.(?P<name>.+)\.(?:(?P<pid>\d+)-)?[0-9a-f]{8}\.tmp(?:\.[A-Za-z0-9]{1,8})?$")


def temp_name(name: str, suffix: str = "") -> str:
    """A fresh hidden temporary name for a file called ``name`` (``suffix`` is kept at the end, e.g. ``.keras``).

    A name too long to take the extra characters keeps its start and its last 24 characters (its kind, such as
    ``_mask.png``) around a hash of the whole name.
    """
    tail = f".{os.getpid()}-{secrets.token_hex(4)}.tmp{suffix}"
    candidate = f".{name}{tail}"
    if len(os.fsencode(candidate)) <= NAME_MAX:
        return candidate
    digest = hashlib.sha256(os.fsencode(name)).hexdigest()[:12]
    end = name[-24:]
    room = NAME_MAX - len(os.fsencode(tail)) - len(os.fsencode(end)) - len(digest) - 3
    head = os.fsencode(name)[: max(0, room)].decode("utf-8", "ignore")
    return f".{head}~{digest}~{end}{tail}"


def temp_target(name: str) -> str | None:
    """The final name a temporary file of :func:`temp_name` stands for (a prefix for long names), else None."""
    m = _TEMP.match(name)
    return None if m is None else m.group("name")


@contextmanager
def atomic_path(path: str | os.PathLike[str], *, suffix: str = "", fsync: bool = False) -> Iterator[Path]:
    """Yield a new, empty temporary path next to ``path``; when the block ends without error it becomes ``path``.

    The temporary file is created at once with ordinary permissions (the umask decides, as for ``open``), so a
    folder that cannot be written fails here, before any work. With ``fsync`` the data reaches the disk before
    the rename. On any error (or interrupt) the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    tmp = path.with_name(temp_name(path.name, suffix))
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    os.close(fd)
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_bytes_atomic(
    path: str | os.PathLike[str], data: bytes | bytearray | memoryview, *, fsync: bool = False
) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        fd = os.open(tmp, os.O_WRONLY | getattr(os, "O_BINARY", 0))
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike[str], data: Any) -> None:
    """Write ``data`` as indented JSON (keys sorted, ``Path`` and other objects as strings) atomically."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):  # alive (another user's), or a pid this OS cannot check: keep the file
        return True
    return True


def remove_stale_temps(
    folder: str | os.PathLike[str],
    *,
    recursive: bool = False,
    target: Callable[[str], bool] | None = None,
    any_process: bool = False,
) -> int:
    """Remove temporary files that killed writers left in ``folder``; return how many.

    Only names :func:`temp_name` makes are touched, and only those whose final name passes ``target`` (all when
    None). A temporary file of a live process is kept unless ``any_process`` (for a caller holding the folder's
    lock, which knows no other writer is at work: a pid may belong to another machine on a shared folder).
    """
    removed = 0
    walker = os.walk(folder) if recursive else [(str(folder), [], _names(folder))]
    for root, _dirs, files in walker:
        for name in files:
            m = _TEMP.match(name)
            if m is None or (target is not None and not target(m.group("name"))):
                continue
            pid = m.group("pid")
            if not any_process and pid is not None and _process_alive(int(pid)):
                continue
            with contextlib.suppress(FileNotFoundError, IsADirectoryError, PermissionError):
                os.unlink(os.path.join(root, name))
                removed += 1
    return removed


def _names(folder: str | os.PathLike[str]) -> list[str]:
    try:
        return [e.name for e in os.scandir(folder) if e.is_file(follow_symlinks=False)]
    except OSError:
        return []
