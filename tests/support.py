"""Plain helpers shared by the test modules: images and files to feed skinseg, and readers of what it wrote.

Not a test module (pytest collects nothing here) and no fixtures (those live in ``tests/conftest.py``): a test module
imports from here, never from another test module (``tests/test_layers.py`` checks).
"""

from __future__ import annotations

import csv
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]

# ------------------------------------------------------------------------------------------------ images to segment


def lesion_image(h: int = 90, w: int = 120, *, seed: int = 0) -> np.ndarray:
    """Dark skin (red < 110) with one bright red disk: the identity model's mask is exactly the disk."""
    rng = np.random.default_rng(seed)
    img = rng.integers(40, 110, (h, w, 3), dtype=np.uint8)
    yy, xx = np.mgrid[:h, :w]
    disk = (yy - h * 0.45) ** 2 + (xx - w * 0.55) ** 2 < (min(h, w) * 0.3) ** 2
    img[disk] = (230, 60, 50)
    return img


def smooth_image(h: int, w: int, seed: int) -> np.ndarray:
    """A smooth red blob on a blue-grey ground (no noise: outputs compress alike run after run)."""
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    cy, cx = h * (0.3 + 0.04 * seed), w * 0.5
    red = 60 + 180 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (0.2 * h) ** 2))
    return np.dstack([red, np.full_like(red, 80), 200 - 0.5 * red]).astype(np.uint8)


def block_image(h: int = 48, w: int = 64) -> np.ndarray:
    """Skin with a red block in the top-left corner: the identity model's mask is the block, so any wrong flip or
    turn of the image shows in the mask."""
    img = np.empty((h, w, 3), np.uint8)
    img[:] = (60, 90, 80)
    img[: h * 2 // 5, : w * 2 // 5] = (230, 60, 50)
    return img


def quadrants(h: int = 32, w: int = 48) -> np.ndarray:
    """An RGB image with four flat, distinct quadrants (survives JPEG; any flip or turn is visible)."""
    img = np.empty((h, w, 3), np.uint8)
    img[: h // 2, : w // 2] = (220, 30, 30)
    img[: h // 2, w // 2 :] = (30, 220, 30)
    img[h // 2 :, : w // 2] = (30, 30, 220)
    img[h // 2 :, w // 2 :] = (220, 220, 30)
    return img


# Orientation n as numpy: the decoded image is what the EXIF tag says to display.
ORIENT = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),
    8: lambda a: np.rot90(a, 1),
}

# ------------------------------------------------------------------------------------------------ encoded files


def photos(folder: Path, count: int = 3, size: tuple[int, int] = (90, 120)) -> Path:
    """``folder`` with ``count`` lesion photos ``p000.png``, ``p001.png``… of ``size`` (h, w), each its own seed."""
    for i in range(count):
        write_png(folder / f"p{i:03d}.png", lesion_image(*size, seed=i))
    return folder


def write_png(path: Path, rgb: np.ndarray) -> Path:
    """``rgb`` as a PNG at ``path`` (its folders made)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    path.write_bytes(buf.tobytes())
    return path


def png_bytes(array: np.ndarray) -> bytes:
    """PNG of an RGB(A) array or a 2-D gray one (any dtype OpenCV writes)."""
    if array.ndim == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR if array.shape[2] == 3 else cv2.COLOR_RGBA2BGRA)
    return cv2.imencode(".png", array)[1].tobytes()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def exif_block(orientation: int, endian: str = "MM") -> bytes:
    e = ">" if endian == "MM" else "<"
    ifd = struct.pack(e + "H", 1) + struct.pack(e + "HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack(e + "I", 0)
    return endian.encode() + struct.pack(e + "HI", 42, 8) + ifd


def jpeg_bytes(rgb: np.ndarray, orientation: int | None = None, endian: str = "MM") -> bytes:
    """``rgb`` as a quality-95 JPEG, with an EXIF orientation tag when ``orientation`` is given."""
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
    data = buf.tobytes()
    if orientation is None:
        return data
    payload = b"Exif\x00\x00" + exif_block(orientation, endian)
    return data[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + data[2:]


def tiff_bytes(width_tags: list[int], height: int, pixels: bytes, bits: int = 8, samples: int = 1) -> bytes:
    """A little-endian, uncompressed, one-strip TIFF whose first directory holds ``width_tags`` ImageWidth tags."""
    entries = [(256, 4, 1, w) for w in width_tags] + [
        (257, 4, 1, height),
        (258, 3, 1, bits),
        (259, 3, 1, 1),
        (262, 3, 1, 1),
        (273, 4, 1, 0),  # strip offset, patched below
        (277, 3, 1, samples),
        (278, 4, 1, height),
        (279, 4, 1, len(pixels)),
    ]
    ifd_size = 2 + 12 * len(entries) + 4
    data_offset = 8 + ifd_size
    out = b"II" + struct.pack("<HI", 42, 8) + struct.pack("<H", len(entries))
    for tag, typ, count, value in entries:
        value = data_offset if tag == 273 else value
        packed = struct.pack("<HHI", tag, typ, count) + (
            struct.pack("<HH", value, 0) if typ == 3 else struct.pack("<I", value)
        )
        out += packed
    return out + struct.pack("<I", 0) + pixels


def png_bit_depth(path: Path) -> int:
    return path.read_bytes()[24]  # IHDR: signature 8, length 4, type 4, width 4, height 4, then bit depth


# ------------------------------------------------------------------------------------------------ what skinseg wrote


def read_rows(output: Path) -> dict[str, dict[str, str]]:
    """results.csv's rows by path, the cells as written (a guarding ' kept)."""
    with open(output / "results.csv", newline="", encoding="utf-8") as f:
        return {r["path"]: r for r in csv.DictReader(f)}


def rows_of(out: Path) -> dict[str, dict[str, str]]:
    """results.csv's rows by path as skinseg reads them back (escaped names decoded)."""
    from skinseg.runtime.report import read_results

    return read_results(out / "results.csv")


def outputs(folder: Path) -> dict[str, bytes]:
    """Every segmentation output under ``folder`` (masks, overlays, probabilities, contours): relative path -> bytes."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name.endswith(("_mask.png", "_overlay.jpg", "_prob.png", "_contours.json"))
    }


# ------------------------------------------------------------------------------------------------ the command


def run_cli(*args: object, timeout: float = 180, **kwargs: object) -> subprocess.CompletedProcess:
    """`python -m skinseg ARGS` in a subprocess, from the repository root unless ``kwargs`` give a ``cwd`` (or
    e.g. an ``env``)."""
    kwargs.setdefault("cwd", ROOT)
    return subprocess.run(
        [sys.executable, "-m", "skinseg", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        **kwargs,  # type: ignore[arg-type]
    )


def invoke(*args: object):
    """``skinseg ARGS`` in this process through Typer's test runner (a ``click.testing.Result``)."""
    from typer.testing import CliRunner

    from skinseg.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def infer(*args: object, quiet: bool = False):
    """``skinseg infer ARGS --threads 1`` (``--quiet`` too with ``quiet``) in this process, as :func:`invoke`."""
    return invoke("infer", *args, "--threads", "1", *(["--quiet"] if quiet else []))


def wait_for(
    condition: Callable[[], bool], proc: subprocess.Popen | None = None, timeout: float = 120, poll: float = 0.002
) -> bool:
    """Poll ``condition`` until it holds; False if ``proc`` ended first (and it still does not hold) or time ran
    out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        if proc is not None and proc.poll() is not None:
            return condition()
        time.sleep(poll)
    return False


class InFlightEvents:
    """The images a batch works on at once, counted from its events (``image_start`` … ``image_done``):
    pass :meth:`on_event` to the batch; :attr:`peak` is the most at once."""

    def __init__(self) -> None:
        self.live: set[int] = set()
        self.peak = 0

    def on_event(self, event) -> None:
        if event["event"] == "image_start":
            self.live.add(event["index"])
            self.peak = max(self.peak, len(self.live))
        elif event["event"] == "image_done":
            self.live.discard(event["index"])
