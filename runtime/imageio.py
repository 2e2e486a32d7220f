"""Reading and writing images: RGB uint8 in, atomic files out.

- :func:`read_image` decodes any supported file to an ``H×W×3`` uint8 **RGB** array with its EXIF
  orientation applied. 16-bit images are scaled to 8 bits (``round(v / 257)``), grayscale is repeated to three
  channels and an alpha channel is **dropped** (not composited: dermoscopy photos have no meaningful
  transparency, and the colour under a transparent pixel is what the camera saw). CMYK JPEGs are converted
  by OpenCV.
- The pixel count is checked from the file header **before** decoding (:func:`image_size`), so a decompression
  bomb is refused without allocating it.
- Every failure raises :class:`~skinseg.runtime.errors.ImageError` with a one-line message naming the file.
- Writers go through a temporary file in the destination folder and :func:`os.replace`, so a crash never
  leaves a half-written output under the final name.

Files are read with Python's ``open`` and decoded with :func:`cv2.imdecode`, so non-ASCII paths work
everywhere.
"""

from __future__ import annotations

import hashlib
import os
import struct
from pathlib import Path
from typing import BinaryIO, NamedTuple

import cv2
import numpy as np

from skinseg.runtime.atomic import write_bytes_atomic
from skinseg.runtime.errors import ImageError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "SUPPORTED_EXTENSIONS",
    "ImageInfo",
    "image_info",
    "image_size",
    "is_supported",
    "read_image",
    "read_mask",
    "write_bytes_atomic",
    "write_jpeg_atomic",
    "write_png_atomic",
]

SUPPORTED_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp"})
DEFAULT_MAX_PIXELS = 250_000_000
REDUCE_FACTORS = (1, 2, 4, 8)
_REDUCED_FLAGS = {
    1: 0,
    2: cv2.IMREAD_REDUCED_GRAYSCALE_2,
    4: cv2.IMREAD_REDUCED_GRAYSCALE_4,
    8: cv2.IMREAD_REDUCED_GRAYSCALE_8,
}
_TRANSPOSING_ORIENTATIONS = frozenset({5, 6, 7, 8})  # EXIF orientations that swap width and height


def is_supported(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` has one of :data:`SUPPORTED_EXTENSIONS` (case-insensitive)."""
    return Path(path).suffix.lower() in SUPPORTED_EXTENSIONS


# --------------------------------------------------------------------------------------------------- headers


class _HeaderError(Exception):
    """The header is malformed; the message says how."""


class _Header(NamedTuple):
    format: str
    width: int  # as stored, before the EXIF orientation
    height: int
    orientation: int = 1
    data_offset: int = 0  # JPEG: where the main frame header ends (the EXIF thumbnail lies before it)


def _read_exact(f: BinaryIO, n: int) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise _HeaderError("the file ends inside its header (truncated)")
    return data


def _exif_orientation(tiff: bytes) -> int:
    """The orientation tag (0x0112) of a TIFF/EXIF block, or 1 when absent or unreadable."""
    if len(tiff) < 8 or tiff[:2] not in (b"II", b"MM"):
        return 1
    e = "<" if tiff[:2] == b"II" else ">"
    try:
        (ifd,) = struct.unpack_from(e + "I", tiff, 4)
        (count,) = struct.unpack_from(e + "H", tiff, ifd)
        for i in range(count):
            tag, typ, _n = struct.unpack_from(e + "HHI", tiff, ifd + 2 + 12 * i)
            if tag == 0x0112 and typ == 3:
                (value,) = struct.unpack_from(e + "H", tiff, ifd + 2 + 12 * i + 8)
                return value if 1 <= value <= 8 else 1
    except struct.error:
        return 1
    return 1


def _png_header(f: BinaryIO) -> _Header:
    head = _read_exact(f, 24)
    if head[12:16] != b"IHDR":
        raise _HeaderError("PNG without an IHDR chunk")
    width, height = struct.unpack(">II", head[16:24])
    f.seek(8 + 8 + 13 + 4)  # signature, IHDR length/type, IHDR data, CRC
    orientation = 1
    for _ in range(64):  # eXIf must come before IDAT; a few ancillary chunks precede it at most
        chunk = f.read(8)
        if len(chunk) < 8:
            break
        length, kind = struct.unpack(">I4s", chunk)
        if kind in (b"IDAT", b"IEND"):
            break
        if kind == b"eXIf" and length < 1 << 20:
            orientation = _exif_orientation(f.read(length))
            break
        f.seek(length + 4, os.SEEK_CUR)
    return _Header("png", width, height, orientation)


_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _jpeg_header(f: BinaryIO) -> _Header:
    f.seek(2)
    orientation = 1
    while True:
        byte = _read_exact(f, 1)
        if byte != b"\xff":
            raise _HeaderError("JPEG marker expected")
        marker = _read_exact(f, 1)[0]
        while marker == 0xFF:  # fill bytes
            marker = _read_exact(f, 1)[0]
        if marker in (0x01, *range(0xD0, 0xD8)):  # markers without a length
            continue
        if marker in (0xD9, 0xDA):
            raise _HeaderError("JPEG without a frame header (SOF) before its image data")
        (length,) = struct.unpack(">H", _read_exact(f, 2))
        if length < 2:
            raise _HeaderError("JPEG segment with an invalid length")
        if marker in _SOF_MARKERS:
            _precision, height, width = struct.unpack(">BHH", _read_exact(f, 5))
            return _Header("jpeg", width, height, orientation, f.tell())
        if marker == 0xE1 and orientation == 1:
            payload = _read_exact(f, length - 2)
            if payload.startswith(b"Exif\x00\x00"):
                orientation = _exif_orientation(payload[6:])
            continue
        f.seek(length - 2, os.SEEK_CUR)


def _bmp_header(f: BinaryIO) -> _Header:
    head = _read_exact(f, 26)
    (header_size,) = struct.unpack_from("<I", head, 14)
    if header_size == 12:  # OS/2 BITMAPCOREHEADER
        width, height = struct.unpack_from("<HH", head, 18)
    else:
        width, height = struct.unpack_from("<ii", head, 18)
    return _Header("bmp", abs(width), abs(height))


def _webp_header(f: BinaryIO) -> _Header:
    head = _read_exact(f, 30)
    kind = head[12:16]
    if kind == b"VP8 ":
        width, height = struct.unpack_from("<HH", head, 26)
        return _Header("webp", width & 0x3FFF, height & 0x3FFF)
    if kind == b"VP8L":
        (bits,) = struct.unpack_from("<I", head, 21)
        return _Header("webp", (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1)
    if kind == b"VP8X":
        width = int.from_bytes(head[24:27], "little") + 1
        height = int.from_bytes(head[27:30], "little") + 1
        return _Header("webp", width, height)
    raise _HeaderError(f"unknown WebP chunk {kind!r}")


def _tiff_header(f: BinaryIO) -> _Header:
    head = _read_exact(f, 8)
    e = "<" if head[:2] == b"II" else ">"
    (magic, ifd) = struct.unpack(e + "HI", head[2:8])
    if magic != 42:
        raise _HeaderError("BigTIFF or unknown TIFF variant")
    f.seek(ifd)
    (count,) = struct.unpack(e + "H", _read_exact(f, 2))
    entries = _read_exact(f, 12 * count)
    values: dict[int, int] = {}
    for i in range(count):
        tag, typ, _n = struct.unpack_from(e + "HHI", entries, 12 * i)
        if tag in (256, 257, 274) and typ in (3, 4):
            fmt = e + ("H" if typ == 3 else "I")
            values[tag] = struct.unpack_from(fmt, entries, 12 * i + 8)[0]
    if 256 not in values or 257 not in values:
        raise _HeaderError("TIFF without ImageWidth/ImageLength tags")
    orientation = values.get(274, 1)  # OpenCV (libtiff) applies the TIFF orientation tag
    return _Header("tiff", values[256], values[257], orientation if 1 <= orientation <= 8 else 1)


def _sniff(f: BinaryIO) -> _Header | None:
    """The header of a PNG, JPEG, BMP, WebP or TIFF file, or ``None`` for another format."""
    magic = f.read(16)
    f.seek(0)
    if magic.startswith(b"\x89PNG\r\n\x1a\n"):
        return _png_header(f)
    if magic.startswith(b"\xff\xd8"):
        return _jpeg_header(f)
    if magic.startswith(b"BM"):
        return _bmp_header(f)
    if magic.startswith(b"RIFF") and magic[8:12] == b"WEBP":
        return _webp_header(f)
    if magic[:4] in (b"II*\x00", b"MM\x00*"):
        return _tiff_header(f)
    return None


def _oriented(width: int, height: int, orientation: int) -> tuple[int, int]:
    return (height, width) if orientation in _TRANSPOSING_ORIENTATIONS else (width, height)


def _open(path: Path) -> BinaryIO:
    try:
        f = path.open("rb")
    except FileNotFoundError:
        raise ImageError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise ImageError(f"{path}: is a directory, not an image") from None
    except OSError as e:
        raise ImageError(f"{path}: cannot be opened ({e.strerror or e})") from None
    return f


def _header(path: Path, f: BinaryIO) -> _Header | None:
    f.seek(0, os.SEEK_END)
    if f.tell() == 0:
        raise ImageError(f"{path}: the file is empty (0 bytes)")
    f.seek(0)
    try:
        return _sniff(f)
    except (_HeaderError, struct.error) as e:
        raise ImageError(f"{path}: not a readable image ({e})") from None


class ImageInfo(NamedTuple):
    """What the header says: ``format`` (png, jpeg, bmp, webp, tiff) and the size as :func:`read_image`
    returns it, i.e. after the EXIF orientation."""

    format: str
    width: int
    height: int


def image_info(path: str | os.PathLike[str]) -> ImageInfo:
    """Format and oriented size of an image, read from its header only (nothing is decoded).

    JPEG, PNG and TIFF orientations 5–8 (rotations by 90°) swap width and height (a WebP's is not read).
    Raises :class:`ImageError` for a file that is missing, empty, or not a PNG, JPEG, BMP, WebP or TIFF.
    """
    path = Path(path)
    with _open(path) as f:
        info = _header(path, f)
    if info is None:
        raise ImageError(f"{path}: not a PNG, JPEG, BMP, WebP or TIFF file")
    return ImageInfo(info.format, *_oriented(info.width, info.height, info.orientation))


def image_size(path: str | os.PathLike[str]) -> tuple[int, int]:
    """``(width, height)`` of an image as :func:`read_image` would return it, from the header only."""
    info = image_info(path)
    return info.width, info.height


def _check_pixels(path: Path, width: int, height: int, max_pixels: int) -> None:
    if width <= 0 or height <= 0:
        raise ImageError(f"{path}: the header gives an empty size {width}×{height}")
    if width * height > max_pixels:
        raise ImageError(
            f"{path}: {width}×{height} = {width * height / 1e6:,.0f} MP exceeds --max-pixels "
            f"{max_pixels / 1e6:,.0f} MP; raise --max-pixels if this is intended"
        )


# --------------------------------------------------------------------------------------------------- reading


def _read_checked(path: Path, max_pixels: int) -> tuple[bytes, _Header | None]:
    with _open(path) as f:
        info = _header(path, f)
        if info is not None:
            _check_pixels(path, info.width, info.height, max_pixels)
        f.seek(0)
        try:
            data = f.read()
        except OSError as e:
            raise ImageError(f"{path}: cannot be read ({e.strerror or e})") from None
    if info is not None and info.format == "jpeg" and data.find(b"\xff\xd9", info.data_offset) < 0:
        # libjpeg fills a truncated scan with grey and reports success; a whole JPEG ends with an EOI marker.
        raise ImageError(f"{path}: the JPEG is truncated (no end-of-image marker); re-copy or re-export it")
    return data, info


def _decode_failed(path: Path, info: _Header | None) -> ImageError:
    if info is None:
        return ImageError(f"{path}: not an image OpenCV can decode (supported: PNG, JPEG, BMP, WebP, TIFF)")
    return ImageError(f"{path}: the {info.format.upper()} data cannot be decoded (truncated or corrupt file)")


def read_image(path: str | os.PathLike[str], *, max_pixels: int = DEFAULT_MAX_PIXELS, reduce: int = 1) -> np.ndarray:
    """Read an image as an ``H×W×3`` uint8 RGB array, EXIF orientation applied.

    ``reduce`` ∈ {1, 2, 4, 8} decodes at 1/reduce of the size. For JPEG this is libjpeg's scaled DCT decoding,
    several times faster than a full decode (sides rounded up); other formats are decoded whole and shrunk by
    OpenCV (sides rounded down). ``max_pixels`` bounds the **full** size and is checked from the header
    before anything is decoded.
    """
    path = Path(path)
    if reduce not in REDUCE_FACTORS:
        raise ValueError(f"reduce must be one of {REDUCE_FACTORS}, got {reduce!r}")
    data, info = _read_checked(path, max_pixels)
    buf = np.frombuffer(data, np.uint8)
    # Decode as BGR and convert here: OpenCV 5.0's IMREAD_COLOR_RGB scrambles 16-bit RGB TIFFs.
    flags = cv2.IMREAD_COLOR | (_REDUCED_FLAGS[reduce] if reduce > 1 else cv2.IMREAD_ANYDEPTH)
    try:
        image = cv2.imdecode(buf, flags)
    except cv2.error as e:
        raise ImageError(f"{path}: cannot be decoded ({str(e).strip().splitlines()[-1]})") from None
    del buf, data
    if image is None or image.size == 0:
        raise _decode_failed(path, info)
    if info is None:  # unknown header: the size check has to happen after decoding
        _check_pixels(path, image.shape[1] * reduce, image.shape[0] * reduce, max_pixels)
    if image.dtype == np.uint16:
        image = cv2.convertScaleAbs(image, alpha=1.0 / 257.0)  # rounds and saturates to uint8
    elif image.dtype != np.uint8:
        raise ImageError(f"{path}: {image.dtype} pixels are not supported; convert the image to 8 or 16 bits")
    return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB if image.ndim == 2 else cv2.COLOR_BGR2RGB)


def read_mask(
    path: str | os.PathLike[str], *, threshold: int = 128, max_pixels: int = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """Read a mask as ``H×W`` uint8 with values 0 or 255 (pixels >= ``threshold`` are foreground).

    The default 128 makes anything above mid-grey foreground; the EXIF orientation is applied as for
    :func:`read_image`, so a mask lines up with its photo.
    """
    if not 1 <= threshold <= 255:
        raise ValueError(f"mask threshold must be within 1–255, got {threshold!r}")
    path = Path(path)
    data, info = _read_checked(path, max_pixels)
    try:
        mask = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
    except cv2.error as e:
        raise ImageError(f"{path}: cannot be decoded ({str(e).strip().splitlines()[-1]})") from None
    if mask is None or mask.size == 0:
        raise _decode_failed(path, info)
    if info is None:
        _check_pixels(path, mask.shape[1], mask.shape[0], max_pixels)
    return np.where(mask >= threshold, np.uint8(255), np.uint8(0))


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


def write_png_atomic(
    path: str | os.PathLike[str], array: np.ndarray, *, bits: int = 8, compression: int | None = None
) -> None:
    """Write a uint8 ``H×W`` (gray) or ``H×W×3`` (RGB) array as PNG, atomically.

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
        data = _encode(".png", (array > 127).view(np.uint8), params)
    elif bits == 8:
        if array.ndim == 3 and array.shape[2] == 3:
            array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
        elif array.ndim != 2:
            raise ValueError(f"write_png_atomic needs an H×W or H×W×3 array, got shape {array.shape}")
        level = 3 if compression is None else compression
        data = _encode(".png", array, [cv2.IMWRITE_PNG_COMPRESSION, level])
    else:
        raise ValueError(f"bits must be 1 or 8, got {bits!r}")
    write_bytes_atomic(path, data)


def write_jpeg_atomic(path: str | os.PathLike[str], rgb: np.ndarray, quality: int = 90) -> None:
    """Write an ``H×W×3`` uint8 RGB array as JPEG (``quality`` 1–100), atomically."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"write_jpeg_atomic needs an H×W×3 uint8 array, got {rgb.shape} {rgb.dtype}")
    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be within 1–100, got {quality!r}")
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    write_bytes_atomic(path, _encode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)]))
