"""Where a batch's outputs go and how they are written: per-image output paths, atomic writes, the output folder.

Every output stays inside the output folder (:func:`output_paths` and :func:`check_inside` refuse paths that
would leave it). Outputs are written to hidden temporary files and renamed, the mask **last**; each output carries
a record of its input (a content fingerprint) and of the settings that made it (:func:`settings_digest`: the model
and the options that change outputs). An image is up to date when its mask's record names the same input content
and the same settings (:func:`up_to_date`), whatever the files' dates say. :func:`remove_stale_temps` clears what a
killed run left behind. :func:`output_lock` keeps two runs from writing to one folder at once.

The settings stamp ``.skinseg-settings.json`` (:func:`stamp_settings`) records the model and the options of the
folder's latest run, so a run can say that it will redo the outputs of another model or other options.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import secrets
import stat
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

import cv2
import numpy as np

from skinseg.runtime import atomic
from skinseg.runtime import postprocess as pp
from skinseg.runtime.atomic import write_bytes_atomic
from skinseg.runtime.defaults import DEFAULT_OVERLAY_COLOR, DEFAULT_OVERLAY_OPACITY
from skinseg.runtime.errors import ImageError, SkinsegError, UsageError, param
from skinseg.runtime.imageio import encode_jpeg, encode_png, file_fingerprint

__all__ = [
    "LOCK_NAME",
    "OUTPUT_SUFFIXES",
    "RESULTS_NAME",
    "SETTINGS_NAME",
    "SUMMARY_NAME",
    "OutputOptions",
    "OutputPaths",
    "SettingsStamp",
    "RECORD_KEY",
    "check_inside",
    "is_ours",
    "quick_stat",
    "read_head",
    "read_record",
    "settings_digest",
    "source_key",
    "up_to_date",
    "with_record",
    "output_lock",
    "output_paths",
    "prepare_output",
    "remove_stale_temps",
    "stamp_settings",
    "write_outputs",
]

LOCK_NAME = ".skinseg.lock"
RESULTS_NAME = (
    "results.csv"  # the report files (see skinseg.runtime.report) are named here: remove_stale_temps needs them
)
SUMMARY_NAME = "summary.json"
SETTINGS_NAME = ".skinseg-settings.json"  # the model and options that made the outputs (see stamp_settings)
DASK_SCRATCH_NAME = ".skinseg-dask"  # a local Dask cluster's scratch space while it runs (skinseg.runtime.cluster)
OUTPUT_SUFFIXES = ("_mask.png", "_overlay.jpg", "_prob.png", "_contours.json")


class OutputOptions(Protocol):
    """The options that decide which outputs are written (:class:`skinseg.runtime.options.InferOptions` has them)."""

    @property
    def save_prob(self) -> bool: ...

    @property
    def contours(self) -> bool: ...


# --------------------------------------------------------------------------------------------------- outputs


@dataclass(frozen=True)
class OutputPaths:
    """Where one image's outputs go; ``prob`` and ``contours`` are ``None`` when not requested."""

    mask: Path
    overlay: Path
    prob: Path | None
    contours: Path | None

    def all(self) -> list[Path]:
        return [p for p in (self.overlay, self.prob, self.contours, self.mask) if p is not None]


def check_inside(root: Path, folder: Path, rel: PurePosixPath) -> None:
    """:class:`ImageError` unless ``folder``, with every symlink resolved, is ``root`` or lies inside it."""
    real = folder.resolve()
    if real != root and root not in real.parents:
        raise ImageError(
            f"{rel}: its output folder {folder} resolves to {real}, outside {param('output', root)} (a symlink?); "
            f"refusing to write there — remove the link or choose another {param('output')}"
        )


def output_paths(
    output_root: str | os.PathLike[str], rel_path: str | PurePosixPath, options: OutputOptions
) -> OutputPaths:
    """The output files for the input at ``rel_path``; :class:`ImageError` if any would leave ``output_root``.

    ``rel_path`` must be relative and free of ``..``; the folder it lands in, with every symlink resolved, must
    lie inside ``output_root``.
    """
    rel = PurePosixPath(rel_path)
    if rel.is_absolute() or not rel.parts or ".." in rel.parts or rel.name in ("", "."):
        raise ImageError(
            f"{rel_path}: output path must be relative without '..'; refusing to write outside {param('output')}"
        )
    root = Path(output_root).resolve()
    folder = root.joinpath(*rel.parent.parts)
    check_inside(root, folder, rel)
    stem = rel.stem
    paths = OutputPaths(
        mask=folder / f"{stem}_mask.png",
        overlay=folder / f"{stem}_overlay.jpg",
        prob=folder / f"{stem}_prob.png" if options.save_prob else None,
        contours=folder / f"{stem}_contours.json" if options.contours else None,
    )
    longest = max(paths.all(), key=lambda p: len(os.fsencode(p.name)))
    if len(os.fsencode(longest.name)) > atomic.NAME_MAX:
        raise ImageError(  # the name is shortened: the message must stay one readable line
            f"its output name {longest.name[:20]}…{longest.name[-20:]} would be {len(os.fsencode(longest.name))} "
            f"bytes long, over the file system's {atomic.NAME_MAX}; shorten the file's name"
        )
    return paths


# --------------------------------------------------------------------------------------------------- records
#
# Every file skinseg writes carries a small record of where it came from: a PNG ``tEXt`` chunk, a JPEG comment
# segment, a top-level key of the contours JSON. The mask's record (written last, so it marks completion) holds
# the input's fingerprint (size and content hash, plus its stat for a quick check), which input path it is
# (:func:`source_key`), the digest of the model and options that made it, and the image's statistics. A rerun
# compares them with the input and the settings it has now; nothing else decides whether an image is up to date.
# A file without a record was not written by skinseg (or by an older one) and is never overwritten silently.

RECORD_KEY = "skinseg"
RECORD_VERSION = 1
_RECORD_READ_LIMIT = 1 << 16  # records sit in the first bytes of a file


def settings_digest(model_sha256: str, options: dict[str, Any]) -> str:
    """A short digest of the model and the options that change the outputs."""
    text = json.dumps({"model_sha256": model_sha256, "options": options}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def source_key(image_path: str | os.PathLike[str]) -> str:
    """Which input an output belongs to, by its absolute path, as a short digest (an output shared elsewhere does not
    carry the folder names of a clinic's disk). Two photos of the same name from two folders, or two days of a
    camera that restarts at IMG_0001, have different keys."""
    path = os.fsencode(os.path.abspath(image_path))
    return hashlib.sha256(path).hexdigest()[:16]


def quick_stat(st: os.stat_result) -> list[int]:
    """What a rerun compares first: size, modification and change times, inode. Equal means unchanged; unequal
    (a ``cp -p`` of another photo, a touched file) means the content hash decides."""
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def with_record(data: bytes, record: dict[str, Any]) -> bytes:
    """PNG or JPEG bytes with ``record`` embedded (PNG: a tEXt chunk after IHDR; JPEG: a comment after SOI)."""
    text = json.dumps({"v": RECORD_VERSION, **record}, separators=(",", ":"), sort_keys=True, ensure_ascii=True)
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        at = 8 + 25  # signature, then the IHDR chunk (length, type, 13 bytes, CRC)
        return data[:at] + _png_chunk(b"tEXt", RECORD_KEY.encode() + b"\x00" + text.encode()) + data[at:]
    if data.startswith(b"\xff\xd8"):
        payload = f"{RECORD_KEY}:{text}".encode()
        return data[:2] + b"\xff\xfe" + struct.pack(">H", len(payload) + 2) + payload + data[2:]
    raise ValueError("with_record takes PNG or JPEG bytes")


def read_head(path: str | os.PathLike[str], size: int | None = None) -> bytes | None:
    """The first ``size`` bytes of a regular file (all of it with None), never following a link or blocking on a
    FIFO; None when it is no regular file or cannot be read. How skinseg looks into a file it may have written."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read() if size is None else f.read(size)
    except OSError:
        return None
    finally:
        os.close(fd)


def read_record(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The record a skinseg output carries, or None (not ours, unreadable, or not a file)."""
    head = read_head(path, _RECORD_READ_LIMIT)
    if head is None:
        return None
    text = _record_text(head)
    if text is None:
        return None
    try:
        record = json.loads(text)
    except ValueError:
        return None
    return record if isinstance(record, dict) and record.get("v") == RECORD_VERSION else None


def _record_text(head: bytes) -> str | None:
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        at = 8
        while at + 8 <= len(head):
            (length,) = struct.unpack_from(">I", head, at)
            kind = head[at + 4 : at + 8]
            if kind in (b"IDAT", b"IEND"):
                return None
            body = head[at + 8 : at + 8 + length]
            if kind == b"tEXt" and body.startswith(RECORD_KEY.encode() + b"\x00"):
                return body[len(RECORD_KEY) + 1 :].decode("latin-1")
            at += 12 + length
        return None
    if head.startswith(b"\xff\xd8"):
        at = 2
        while at + 4 <= len(head) and head[at] == 0xFF:
            marker = head[at + 1]
            (length,) = struct.unpack_from(">H", head, at + 2)
            if marker == 0xFE and head[at + 4 : at + 4 + len(RECORD_KEY) + 1] == RECORD_KEY.encode() + b":":
                return head[at + 4 + len(RECORD_KEY) + 1 : at + 2 + length].decode("latin-1")
            if marker == 0xDA:
                return None
            at += 2 + length
        return None
    if head.lstrip().startswith(b"{"):  # contours JSON: the record is its first key
        start = head.find(b'"' + RECORD_KEY.encode() + b'":')
        if 0 <= start < 64:
            end = head.find(b"}", start)
            return head[start + len(RECORD_KEY) + 3 : end + 1].decode("utf-8", "replace") if end > 0 else None
    return None


def is_ours(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a file skinseg wrote (it carries a record)."""
    return read_record(path) is not None


def up_to_date(paths: OutputPaths, image_path: str | os.PathLike[str], settings: str) -> dict[str, Any] | None:
    """The mask's record when every requested output exists, the mask was made with ``settings``, and the input
    is the one it was made from (same stat, or else the same content); otherwise None (the image is redone)."""
    record = read_record(paths.mask)
    if record is None or record.get("settings") != settings or not all(p.is_file() for p in paths.all()):
        return None
    try:
        st = os.stat(image_path)
    except OSError:
        return None
    if record.get("stat") == quick_stat(st):
        return record
    try:
        return record if record.get("input") == file_fingerprint(image_path) else None
    except ImageError:
        return None


def write_outputs(
    paths: OutputPaths,
    image: np.ndarray,
    result: Any,
    *,
    record: dict[str, Any] | None = None,
    color: tuple[int, int, int] = DEFAULT_OVERLAY_COLOR,
    opacity: float = DEFAULT_OVERLAY_OPACITY,
) -> None:
    """Write the overlay, the optional probability map and contours, then the mask (last: it marks completion).

    ``image`` is the photo at the overlay's size (the mask is brought to it); ``record`` goes into every file
    (the mask's gets the image's statistics too); the overlay's lesion is filled with ``opacity`` of ``color``.
    """
    record = record or {}
    marker = {k: v for k, v in record.items() if k in ("input", "settings")}
    small = result.mask if result.mask.shape == image.shape[:2] else _fit_mask(result.mask, image.shape[:2])
    picture = pp.overlay(image, small, color, opacity)
    write_bytes_atomic(paths.overlay, with_record(encode_jpeg(picture, quality=90), marker))
    if paths.prob is not None:
        write_bytes_atomic(paths.prob, with_record(encode_png(result.prob, bits=8), marker))
    if paths.contours is not None:
        body = json.dumps(pp.contours_json(result.mask), separators=(",", ":"))
        head = json.dumps({RECORD_KEY: {"v": RECORD_VERSION, **marker}}, separators=(",", ":"))
        write_bytes_atomic(paths.contours, (head[:-1] + "," + body[1:]).encode("utf-8"))
    write_bytes_atomic(paths.mask, with_record(encode_png(result.mask, bits=1), record))


def _fit_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The full-size mask at a smaller picture's size (area-weighted, then thresholded: thin parts survive)."""
    small = cv2.resize(mask, (shape[1], shape[0]), interpolation=cv2.INTER_AREA)
    return np.where(small >= 128, np.uint8(255), np.uint8(0))


# --------------------------------------------------------------------------------------------------- output folder


def prepare_output(output: str | os.PathLike[str]) -> Path:
    """Create the output folder and check it is writable; :class:`UsageError` (exit 2) otherwise."""
    path = Path(output)
    if path.exists() and not path.is_dir():
        raise UsageError(f"{param('output', path)}: exists and is not a folder; choose a folder path")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = new_probe(path)
        os.close(fd)
        probe.unlink()
    except OSError as e:
        raise UsageError(
            f"{param('output', path)}: the folder cannot be created or written ({e.strerror or e}); "
            "check its permissions or choose another folder"
        ) from None
    return path


@contextlib.contextmanager
def output_lock(
    output: str | os.PathLike[str],
    *,
    wait: bool = False,
    on_wait: Callable[[], None] | None = None,
    command: str = "infer",
):
    """Hold ``.skinseg.lock`` in ``output`` for the ``with`` block (``fcntl.flock``; released if the process dies).

    If another run holds it: :class:`UsageError` at once, or with ``wait`` block until it ends (``on_wait`` is
    called first). Where ``fcntl`` does not exist (Windows) no lock is taken. The lock file holds the holder's pid,
    followed by ``command`` (the skinseg command holding it) unless that is ``infer``; only ``infer`` can wait.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on Linux/macOS
        yield
        return
    path = Path(output) / LOCK_NAME
    # Never follow a link (a link named .skinseg.lock would make whoever runs infer truncate its target) and
    # never block on a FIFO put in its place.
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags, 0o666)
    except OSError as e:
        why = "it is a symbolic link" if e.errno == errno.ELOOP else (e.strerror or str(e))
        raise UsageError(
            f"{path}: cannot use the lock file ({why}); remove it, or check the folder's permissions"
        ) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UsageError(f"{path}: the lock file is not a regular file (a pipe or device?); remove it")
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                pid, _, holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip().partition(" ")
                how = f"wait for it to finish, add {param('wait')}," if command == "infer" else "wait for it to finish"
                raise UsageError(
                    f"{Path(output)}: another skinseg {holder or 'infer'}{f' (pid {pid})' if pid else ''} is writing "
                    f"to this output folder; {how} or choose another {param('output')}"
                ) from None
            if on_wait is not None:
                on_wait()
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}{'' if command == 'infer' else ' ' + command}\n".encode("ascii"), 0)
        yield
    finally:
        os.close(fd)  # closing releases the flock


def remove_stale_temps(output: str | os.PathLike[str]) -> int:
    """Delete temporary files a killed run left in ``output`` (only our own output names), and the scratch space of a
    killed run's local Dask cluster (:data:`DASK_SCRATCH_NAME`); return how many files.

    Called by the holder of the output folder's lock: no other writer is at work, whatever its pid."""
    import shutil

    scratch = Path(output) / DASK_SCRATCH_NAME
    if scratch.is_dir() and not scratch.is_symlink():
        shutil.rmtree(scratch, ignore_errors=True)
    names = (*OUTPUT_SUFFIXES, RESULTS_NAME, SUMMARY_NAME, SETTINGS_NAME)
    return atomic.remove_stale_temps(output, recursive=True, target=lambda n: n.endswith(names), any_process=True)


# --------------------------------------------------------------------------------------------------- settings stamp


@dataclass(frozen=True)
class SettingsStamp:
    """The output folder's settings stamp after :func:`stamp_settings`.

    ``changed`` is true when this run wrote a new stamp; ``previous`` is then the old stamp's content (``None``
    when there was none or it could not be read).
    """

    changed: bool
    previous: dict[str, Any] | None


def _read_stamp(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def new_probe(folder: Path, attempts: int = 8) -> tuple[int, Path]:
    """A new, empty probe file of our own in ``folder`` and its open descriptor: created exclusively and never
    through a link (``O_EXCL``, ``O_NOFOLLOW``), under a fresh random name if one is taken."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    for attempt in range(attempts):
        probe = folder / f".skinseg-probe-{secrets.token_hex(4)}"
        try:
            return os.open(probe, flags, 0o600), probe
        except FileExistsError:
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


def stamp_settings(output: str | os.PathLike[str], model_sha256: str, options: dict[str, Any]) -> SettingsStamp:
    """Read ``output``'s settings stamp; write a new one if it is missing or records other settings.

    ``options`` are the options that change the outputs (``InferOptions.output_settings()``). Call it with the
    output lock held, before any image is processed. A folder without a stamp (new, or written by an older
    skinseg) gets one, and its existing outputs, made with unknown settings, count as out of date.
    """
    path = Path(output) / SETTINGS_NAME
    wanted = {"model_sha256": model_sha256, "options": json.loads(json.dumps(options))}
    previous = _read_stamp(path)
    if previous is not None and {k: previous.get(k) for k in wanted} == wanted:
        return SettingsStamp(changed=False, previous=None)
    stamp = {**wanted, "since": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    try:
        write_bytes_atomic(path, (json.dumps(stamp, indent=2) + "\n").encode("utf-8"), fsync=True)
    except OSError as e:
        raise SkinsegError(
            f"{path}: cannot write the settings stamp ({e.strerror or e}); free some space or fix the permissions "
            "and run again"
        ) from None
    return SettingsStamp(changed=True, previous=previous)
