"""Reading and writing images: RGB uint8 in, atomic files out.

- :func:`read_image` decodes any supported file to an ``H×W×3`` uint8 **RGB** array with its EXIF
  orientation applied. 16-bit images are scaled to 8 bits (``round(v / 257)``), grayscale is repeated to three
  channels and an alpha channel is **dropped** (not composited: dermoscopy photos have no meaningful
  transparency, and the colour under a transparent pixel is what the camera saw). CMYK JPEGs are converted
  by OpenCV.
- The pixel count is checked from the file header **before** decoding (:func:`image_size`, parsed in
  :mod:`skinseg.runtime.imageheaders`), so a decompression bomb is refused without allocating it.
- Every failure raises :class:`~skinseg.runtime.errors.ImageError` with a one-line message naming the file
  (:class:`~skinseg.runtime.errors.ResourceError` when the machine lacked the memory, not the file's fault). What
  the C decoders print on stderr is collected (decodes still run in parallel): it becomes part of the reason, and a
  decode that libjpeg completed with grey filler ("premature end of data segment") is refused as corrupt.
- Writers go through a temporary file in the destination folder and :func:`os.replace`, so a crash never
  leaves a half-written output under the final name.

Files are read with Python's ``open`` and decoded with :func:`cv2.imdecode`, so non-ASCII paths work
everywhere.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import cv2
import numpy as np

from skinseg.runtime.atomic import write_bytes_atomic
from skinseg.runtime.defaults import DECODER_LIMIT_VARIABLE, DEFAULT_MAX_PIXELS
from skinseg.runtime.errors import ImageError, ResourceError, param
from skinseg.runtime.imageheaders import (
    Header,
    ImageInfo,
    open_image_file,
    oriented_size,
    read_header,
)

__all__ = [
    "SUPPORTED_EXTENSIONS",
    "ImageFile",
    "content_fingerprint",
    "decode_image",
    "encode_jpeg",
    "encode_png",
    "file_fingerprint",
    "is_supported",
    "load_image_file",
    "read_image",
    "read_mask",
    "write_jpeg_atomic",
    "write_png_atomic",
]

SUPPORTED_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp"})
REDUCE_FACTORS = (1, 2, 4, 8)
_REDUCED_FLAGS = {
    1: 0,
    2: cv2.IMREAD_REDUCED_GRAYSCALE_2,
    4: cv2.IMREAD_REDUCED_GRAYSCALE_4,
    8: cv2.IMREAD_REDUCED_GRAYSCALE_8,
}


def is_supported(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` has one of :data:`SUPPORTED_EXTENSIONS` (case-insensitive)."""
    return Path(path).suffix.lower() in SUPPORTED_EXTENSIONS


def _pixels(n: int) -> str:
    """``n`` pixels as people say it: ``29 MP``, ``1.5 MP``, ``4,800 px`` (never "0 MP")."""
    return f"{n / 1e6:,.0f} MP" if n >= 10_000_000 else f"{n / 1e6:.1f} MP" if n >= 1_000_000 else f"{n:,} px"


def _check_pixels(path: Path, width: int, height: int, max_pixels: int) -> None:
    if width <= 0 or height <= 0:
        raise ImageError(f"{path}: the header gives an empty size {width}×{height}")
    if width * height > max_pixels:
        raise ImageError(
            f"{path}: {width}×{height} = {_pixels(width * height)} exceeds "
            f"{param('max_pixels', _pixels(max_pixels))}; raise {param('max_pixels')} if this is intended"
        )


# --------------------------------------------------------------------------------------------------- reading

BYTES_PER_PIXEL_MAX = 8  # 16-bit RGBA, uncompressed: no valid image file needs more
SLACK_BYTES = 64 << 20  # metadata, thumbnails, ICC profiles, padding


@dataclass(frozen=True)
class ImageFile:
    """An image file read whole and checked, not yet decoded: its bytes, header and ``os.stat``.

    ``fingerprint`` identifies the content (size and a BLAKE2b hash of the bytes): a rerun compares it to decide
    whether an input changed, whatever its modification time says.
    """

    path: Path
    data: bytes
    header: Header
    stat: os.stat_result

    @property
    def info(self) -> ImageInfo:
        h = self.header
        return ImageInfo(h.format, *oriented_size(h.width, h.height, h.orientation))

    @cached_property
    def fingerprint(self) -> str:
        return content_fingerprint(self.data)


def content_fingerprint(data: bytes | memoryview) -> str:
    """``<bytes>:<BLAKE2b-128 hex>`` of a file's content."""
    return f"{len(data)}:{hashlib.blake2b(data, digest_size=16).hexdigest()}"


def file_fingerprint(path: str | os.PathLike[str]) -> str:
    """:func:`content_fingerprint` of a file, streamed (the same special-file checks as reading an image)."""
    path = Path(path)
    digest = hashlib.blake2b(digest_size=16)
    size = 0
    with open_image_file(path) as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
            size += len(block)
    return f"{size}:{digest.hexdigest()}"


def load_image_file(path: str | os.PathLike[str], *, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageFile:
    """Open, check and read an image file (not decoding it). ImageError, naming the file, when:

    it is missing, not a regular file, empty, not a supported format or not the one its extension says; its
    header is malformed or gives more than ``max_pixels``; the file is far larger than its pixels could need
    (it is not read then); a JPEG lacks its end-of-image marker (libjpeg would fill the rest with grey).
    """
    path = Path(path)
    with open_image_file(path) as f:
        info = read_header(path, f)
        _check_pixels(path, info.width, info.height, max_pixels)
        st = os.fstat(f.fileno())
        limit = info.width * info.height * BYTES_PER_PIXEL_MAX + SLACK_BYTES
        if st.st_size > limit:
            raise ImageError(
                f"{path}: the file is {st.st_size / 1e6:,.0f} MB, more than a {info.width}×{info.height} image can "
                "need; it is corrupt or not what it claims to be"
            )
        f.seek(0)
        try:
            data = f.read()
        except OSError as e:
            raise ImageError(f"{path}: cannot be read ({e.strerror or e})") from None
    if info.format == "jpeg" and data.find(b"\xff\xd9", info.data_offset) < 0:
        # libjpeg fills a truncated scan with grey and reports success; a whole JPEG ends with an EOI marker.
        raise ImageError(f"{path}: the JPEG is truncated (no end-of-image marker); re-copy or re-export it")
    return ImageFile(path, data, info, st)


def decoder_limit() -> int:
    """The pixel count above which OpenCV's decoders refuse an image in this process (see
    :func:`skinseg.runtime.defaults.set_decoder_limit`; OpenCV's own default is 2^30)."""
    try:
        return int(os.environ.get(DECODER_LIMIT_VARIABLE, 1 << 30))
    except ValueError:
        return 1 << 30


# What the C decoders (libjpeg, libpng, libtiff, OpenCV's own log) print on the process's stderr while they decode.
# Lines that say pixels are missing make an image fail even when the decoder returned one; the rest are kept off the
# terminal (they become part of the reason when a decode fails).
_DECODER_LINE = re.compile(
    rb"^(libpng (warning|error)|\[ ?(WARN|ERROR|INFO)[:\]]|Corrupt JPEG data|Premature end of JPEG file|Invalid JPEG"
    rb"|Not a JPEG|Unsupported (marker|JPEG)|Bogus|Warning: unknown JFIF|Insufficient memory|JPEG datastream|"
    rb"Huffman table|Quantization table|TIFF\w*: )"
)
_CORRUPT = re.compile(
    r"premature end|bad huffman code|instead of RST|invalid jpeg|corrupt jpeg data: bad|JPEG datastream contains no",
    re.IGNORECASE,
)
_OUT_OF_MEMORY = re.compile(r"insufficient memory|failed to allocate|out of memory|cannot allocate", re.IGNORECASE)
_OPENCV_LOG_PREFIX = re.compile(r"^\[ ?\w+:[^\]]*\] (global )?\S+:\d+ \S+ ")  # "[ WARN:0@3.6] global x.cpp:79 fn "


class _Stderr:
    """What C decoders print on the process's stderr (file descriptor 2), collected while they decode.

    Descriptor 2 is the process's own, so decodes share one window: while any decode runs, it points at a pipe.
    Each decode gets what arrived during its stay; when two stayed together their lines cannot be told apart, and
    the decode that heard something runs again alone (:meth:`window` with ``alone``) to know whose they were:
    decodes run in parallel, and only a file that makes a decoder speak costs a second decode. Lines that are no
    decoder's (another thread's output) are written to stderr when the window closes.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._active = 0
        self._alone = False
        self._waiting = 0  # decodes waiting to run alone: no other enters meanwhile
        self._entered = 0  # decodes that entered the current window
        self._saved: int | None = None
        self._read: int | None = None
        self._heard = bytearray()

    def _drain(self) -> None:
        if self._read is None:
            return
        with contextlib.suppress(BlockingIOError, OSError):
            while chunk := os.read(self._read, 1 << 16):
                self._heard += chunk

    def _open(self) -> None:
        try:
            sys.stderr.flush()
            saved = os.dup(2)
        except (OSError, ValueError, AttributeError):
            return  # no stderr: nothing to collect
        read, write = os.pipe()
        os.set_blocking(write, False)  # a decoder printing more than the pipe holds loses lines, never blocks
        os.set_blocking(read, False)
        os.dup2(write, 2)
        os.close(write)
        self._saved, self._read = saved, read
        self._heard.clear()
        self._entered = 0

    def _close(self) -> None:
        if self._saved is None:
            return
        with contextlib.suppress(OSError, ValueError, AttributeError):
            sys.stderr.flush()
        os.dup2(self._saved, 2)
        os.close(self._saved)
        self._drain()
        os.close(self._read)  # type: ignore[arg-type]
        self._saved = self._read = None
        others = b"".join(raw for raw in bytes(self._heard).splitlines(keepends=True) if not _DECODER_LINE.match(raw))
        if others:
            with contextlib.suppress(OSError):
                os.write(2, others)

    @contextlib.contextmanager
    def window(self, *, alone: bool = False) -> Iterator[tuple[list[str], list[bool]]]:
        """Yield ``(lines, shared)``: after the block, the decoder lines that arrived during it, and whether another
        decode stayed in the window at the same time (then the lines may be its)."""
        lines: list[str] = []
        shared = [False]
        with self._cond:
            self._waiting += alone
            while self._alone or (alone and self._active) or (not alone and self._waiting):
                self._cond.wait()
            self._waiting -= alone
            if self._active == 0:
                self._open()
            self._active += 1
            self._alone = alone
            self._entered += 1
            mine = self._entered
            shared[0] = self._active > 1
            self._drain()
            start = len(self._heard)
        try:
            yield lines, shared
        finally:
            with self._cond:
                self._drain()
                heard = bytes(self._heard[start:])
                shared[0] = shared[0] or self._entered > mine or self._active > 1
                self._active -= 1
                if self._active == 0:
                    self._close()
                    self._alone = False
                    self._cond.notify_all()
            for raw in heard.splitlines():
                if _DECODER_LINE.match(raw):
                    lines.append(_OPENCV_LOG_PREFIX.sub("", raw.decode("utf-8", "replace")).strip())


_STDERR = _Stderr()


def _imdecode(file: ImageFile, flags: int) -> np.ndarray:
    for alone in (False, True):
        with _STDERR.window(alone=alone) as (said, shared):
            try:
                image = cv2.imdecode(np.frombuffer(file.data, np.uint8), flags)
                error = None
            except cv2.error as e:
                image, error = None, e
        if not (said and shared[0]):
            break  # what it heard is its own (or it heard nothing)
    heard = "; ".join(dict.fromkeys(said))[:200]  # each line once
    if error is not None:
        detail = str(error).strip().splitlines()[-1]
        if _OUT_OF_MEMORY.search(detail):
            raise ResourceError(f"{file.path}: not enough memory to decode it now ({detail}); it is retried next run")
        if "CV_IO_MAX_IMAGE" in detail:
            h = file.header
            if h.width * h.height > decoder_limit():
                raise ImageError(
                    f"{file.path}: {h.width}×{h.height} px is more than this process decodes ({decoder_limit():,} "
                    f"px, set when OpenCV loaded); start it with {DECODER_LIMIT_VARIABLE} or {param('max_pixels')} "
                    "larger"
                ) from None
            raise ImageError(
                f"{file.path}: the decoder finds more pixels than the header says ({h.width}×{h.height}); "
                "the file is malformed"
            ) from None
        raise ImageError(f"{file.path}: cannot be decoded ({heard or detail})") from None
    if _OUT_OF_MEMORY.search(heard):
        raise ResourceError(f"{file.path}: not enough memory to decode it now ({heard}); it is retried next run")
    kind = file.header.format.upper()
    if image is None or image.size == 0:
        why = f"truncated or corrupt file: {heard}" if heard else "truncated or corrupt file"
        raise ImageError(f"{file.path}: the {kind} data cannot be decoded ({why})")
    if _CORRUPT.search(heard):
        # libjpeg fills what it could not read with grey and reports success: a mask of half a photo is no result.
        raise ImageError(f"{file.path}: the {kind} data is corrupt ({heard}); re-copy or re-export the file")
    return image


def _check_decoded(file: ImageFile, image: np.ndarray, reduce: int, *, oriented: bool) -> None:
    """The decoded size must be the header's (oriented or as stored, at ``reduce``): a decoder that sees another
    image than the header announced is refused."""
    h = file.header
    width, height = oriented_size(h.width, h.height, h.orientation) if oriented else (h.width, h.height)

    def sides(n: int) -> set[int]:
        return {n // reduce, -(-n // reduce)}

    if image.shape[1] not in sides(width) or image.shape[0] not in sides(height):
        raise ImageError(
            f"{file.path}: decodes to {image.shape[1] * reduce}×{image.shape[0] * reduce} px but its header says "
            f"{width}×{height}; the file is malformed"
        )


def _to_8bit(path: Path, image: np.ndarray) -> np.ndarray:
    """uint8 as is; 16-bit data scaled by its real depth (10-, 12- or 14-bit data in a 16-bit file too)."""
    if image.dtype == np.uint8:
        return image
    if image.dtype != np.uint16:
        raise ImageError(f"{path}: {image.dtype} pixels are not supported; convert the image to 8 or 16 bits")
    bits = int(image.max()).bit_length()
    depth = next(d for d in (8, 10, 12, 14, 16) if bits <= d)
    return cv2.convertScaleAbs(image, alpha=255.0 / (2**depth - 1))  # rounds and saturates to uint8


def decode_image(file: ImageFile, *, reduce: int = 1) -> np.ndarray:
    """Decode a loaded file as an ``H×W×3`` uint8 RGB array, EXIF orientation applied (see :func:`read_image`)."""
    if reduce not in REDUCE_FACTORS:
        raise ValueError(f"reduce must be one of {REDUCE_FACTORS}, got {reduce!r}")
    # Decode as BGR and convert here: OpenCV 5.0's IMREAD_COLOR_RGB scrambles 16-bit RGB TIFFs.
    flags = cv2.IMREAD_COLOR | (_REDUCED_FLAGS[reduce] if reduce > 1 else cv2.IMREAD_ANYDEPTH)
    image = _imdecode(file, flags)
    _check_decoded(file, image, reduce, oriented=True)
    image = _to_8bit(file.path, image)
    return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB if image.ndim == 2 else cv2.COLOR_BGR2RGB)


def read_image(path: str | os.PathLike[str], *, max_pixels: int = DEFAULT_MAX_PIXELS, reduce: int = 1) -> np.ndarray:
    """Read an image as an ``H×W×3`` uint8 RGB array, EXIF orientation applied.

    ``reduce`` ∈ {1, 2, 4, 8} decodes at 1/reduce of the size. For JPEG this is libjpeg's scaled DCT decoding,
    several times faster than a full decode (sides rounded up); other formats are decoded whole and shrunk by
    OpenCV (sides rounded down). ``max_pixels`` bounds the **full** size and is checked from the header
    before anything is decoded (see :func:`load_image_file` for every check).
    """
    return decode_image(load_image_file(path, max_pixels=max_pixels), reduce=reduce)


def read_mask(
    path: str | os.PathLike[str], *, threshold: int = 128, max_pixels: int = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """Read a mask as ``H×W`` uint8 with values 0 or 255, EXIF orientation applied as for :func:`read_image`.

    Which pixels are lesion:

    - a gray mask with a single non-zero value ``v`` (0/255, 0/1 label images, 0/127, 0/100, 0/2, in 8 or 16
      bits): the pixels of value ``v``, whatever ``v`` is;
    - a gray mask with several non-zero values (anti-aliased, resized or JPEG-compressed edges): pixels >=
      ``threshold`` on the 8-bit scale (default 128, half of 255; 16-bit masks are scaled to 8 bits first);
    - a colour or palette mask with black background: any colour.

    A mask that is not two-valued (a photograph, a probability map, a colour mask on a coloured background) raises
    :class:`ImageError` saying so, instead of scoring as an empty or arbitrary mask.
    """
    if not 1 <= threshold <= 255:
        raise ValueError(f"mask threshold must be within 1–255, got {threshold!r}")
    file = load_image_file(path, max_pixels=max_pixels)
    raw = _imdecode(file, cv2.IMREAD_UNCHANGED)  # as stored: the orientation is applied at the end
    _check_decoded(file, raw, 1, oriented=False)
    if raw.ndim == 3 and raw.shape[2] == 4:
        raw = raw[..., :3]
    if raw.ndim == 3 and not (np.array_equal(raw[..., 0], raw[..., 1]) and np.array_equal(raw[..., 1], raw[..., 2])):
        return _apply_orientation(_colour_mask(file.path, raw), file.header.orientation)
    gray = raw if raw.ndim == 2 else raw[..., 0]
    if (value := _single_lesion_value(gray)) is not None:  # 0/v: v is the lesion, however dark (0/1, 0/127)
        return _apply_orientation(np.where(gray == value, np.uint8(255), np.uint8(0)), file.header.orientation)
    if gray.dtype != np.uint8:
        gray = _to_8bit(file.path, gray)
    top = int(gray.max())
    if top > 0:
        # Anti-aliased or JPEG-compressed masks have a few grey pixels; a photograph or probability map has many.
        middle = np.count_nonzero((gray > 0.15 * top) & (gray < 0.85 * top))
        if middle > max(0.05 * gray.size, 256):  # only judged on masks large enough for a share to mean much
            raise ImageError(
                f"{file.path}: not a binary mask ({middle / gray.size:.0%} of its pixels are grey levels between "
                "black and white); give a 0/255 or 0/1 mask"
            )
    mask = gray >= threshold
    return _apply_orientation(np.where(mask, np.uint8(255), np.uint8(0)), file.header.orientation)


def _single_lesion_value(gray: np.ndarray) -> int | None:
    """The one non-zero value of an 8- or 16-bit gray mask whose pixels are 0 or that value; None otherwise (all
    zero, several grey levels, another depth)."""
    if gray.dtype not in (np.uint8, np.uint16):
        return None
    present = np.flatnonzero(np.bincount(gray.ravel(), minlength=2)[1:])  # a histogram: no sort of a 29 MP mask
    return int(present[0]) + 1 if len(present) == 1 else None


def _colour_mask(path: Path, bgr: np.ndarray) -> np.ndarray:
    """A colour (or palette) mask: lesion wherever the pixel is not black; refused without a black background."""
    lit = np.any(bgr > 32, axis=-1)
    if np.count_nonzero(~lit) == 0:
        raise ImageError(f"{path}: a colour mask without black background pixels; give a 0/255 or 0/1 mask")
    return np.where(lit, np.uint8(255), np.uint8(0))


def _apply_orientation(array: np.ndarray, orientation: int) -> np.ndarray:
    """Mask pixels as displayed: IMREAD_UNCHANGED ignores the EXIF orientation, so apply it here."""
    if orientation == 1:
        return array
    ops = {
        2: lambda a: cv2.flip(a, 1),
        3: lambda a: cv2.flip(a, -1),
        4: lambda a: cv2.flip(a, 0),
        5: lambda a: cv2.transpose(a),
        6: lambda a: cv2.rotate(a, cv2.ROTATE_90_CLOCKWISE),
        7: lambda a: cv2.flip(cv2.transpose(a), -1),
        8: lambda a: cv2.rotate(a, cv2.ROTATE_90_COUNTERCLOCKWISE),
    }
    return np.ascontiguousarray(ops[orientation](array))


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------------- writing


def _encode(ext: str, image: np.ndarray, params: list[int]) -> bytes:
    ok, buf = cv2.imencode(ext, image, params)
    if not ok:
        raise ValueError(f"OpenCV could not encode a {image.shape} {image.dtype} array as {ext}")
    return buf.tobytes()


def encode_png(array: np.ndarray, *, bits: int = 8, compression: int | None = None) -> bytes:
    """PNG bytes of a uint8 ``H×W`` (gray) or ``H×W×3`` (RGB) array.

    ``bits=1`` writes a bilevel PNG for masks (pixels > 127 become white): smaller than an 8-bit one, and read
    back by any viewer (and :func:`read_mask`) as 0/255. ``compression`` is zlib's level 0–9; the default is
    3 for 8 bits (fast on large photos) and 6 for 1 bit (smaller than level 3, a quarter of level 9's time).
    """
    if array.dtype != np.uint8:
        raise ValueError(f"write_png_atomic needs a uint8 array, got {array.dtype}")
    if bits == 1:
        if array.ndim != 2:
            raise ValueError(f"bits=1 needs a 2-D mask, got shape {array.shape}")
        level = 6 if compression is None else compression  # 29 MP mask: 80 KB in 32 ms (level 9: 57 KB, 146 ms)
        params = [cv2.IMWRITE_PNG_BILEVEL, 1, cv2.IMWRITE_PNG_COMPRESSION, level]
        return _encode(".png", (array > 127).view(np.uint8), params)
    if bits == 8:
        if array.ndim == 3 and array.shape[2] == 3:
            array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
        elif array.ndim != 2:
            raise ValueError(f"write_png_atomic needs an H×W or H×W×3 array, got shape {array.shape}")
        level = 3 if compression is None else compression
        return _encode(".png", array, [cv2.IMWRITE_PNG_COMPRESSION, level])
    raise ValueError(f"bits must be 1 or 8, got {bits!r}")


def encode_jpeg(rgb: np.ndarray, quality: int = 90) -> bytes:
    """JPEG bytes of an ``H×W×3`` uint8 RGB array (``quality`` 1–100)."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"write_jpeg_atomic needs an H×W×3 uint8 array, got {rgb.shape} {rgb.dtype}")
    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be within 1–100, got {quality!r}")
    if max(rgb.shape[:2]) > JPEG_MAX_SIDE:
        raise ValueError(f"a JPEG side is at most {JPEG_MAX_SIDE} px, got {rgb.shape[1]}×{rgb.shape[0]}")
    return _encode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])


JPEG_MAX_SIDE = 65_500  # libjpeg's limit


def write_png_atomic(
    path: str | os.PathLike[str], array: np.ndarray, *, bits: int = 8, compression: int | None = None
) -> None:
    """Write a uint8 ``H×W`` (gray) or ``H×W×3`` (RGB) array as PNG (see :func:`encode_png`), atomically."""
    write_bytes_atomic(path, encode_png(array, bits=bits, compression=compression))


def write_jpeg_atomic(path: str | os.PathLike[str], rgb: np.ndarray, quality: int = 90) -> None:
    """Write an ``H×W×3`` uint8 RGB array as JPEG (``quality`` 1–100), atomically."""
    write_bytes_atomic(path, encode_jpeg(rgb, quality))
