"""Image file headers: format, size and orientation read from a file's first bytes, nothing decoded.

PNG, JPEG, BMP, WebP and TIFF headers are parsed here byte by byte (with the EXIF orientation a JPEG, PNG, WebP or
TIFF carries), so a caller learns an image's size before allocating it: :func:`image_info` and :func:`image_size`,
and for the codecs in :mod:`skinseg.runtime.imageio`, :func:`open_image_file` and :func:`read_header`. Every problem
a user can fix is an :class:`~skinseg.runtime.errors.ImageError` naming the file.
"""

from __future__ import annotations

import os
import stat
import struct
from pathlib import Path
from typing import BinaryIO, NamedTuple

from skinseg.runtime.errors import ImageError

__all__ = [
    "EXTENSION_FORMATS",
    "Header",
    "HeaderError",
    "ImageInfo",
    "image_info",
    "image_size",
    "open_image_file",
    "oriented_size",
    "read_header",
]

_TRANSPOSING_ORIENTATIONS = frozenset({5, 6, 7, 8})  # EXIF orientations that swap width and height


class HeaderError(Exception):
    """The header is malformed; the message says how."""


class Header(NamedTuple):
    format: str
    width: int  # as stored, before the EXIF orientation
    height: int
    orientation: int = 1
    data_offset: int = 0  # JPEG: where the main frame header ends (the EXIF thumbnail lies before it)


def _read_exact(f: BinaryIO, n: int) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise HeaderError("the file ends inside its header (truncated)")
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


def _png_header(f: BinaryIO) -> Header:
    head = _read_exact(f, 24)
    if head[12:16] != b"IHDR":
        raise HeaderError("PNG without an IHDR chunk")
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
    return Header("png", width, height, orientation)


_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _jpeg_header(f: BinaryIO) -> Header:
    f.seek(2)
    orientation = 1
    while True:
        byte = _read_exact(f, 1)
        if byte != b"\xff":
            raise HeaderError("JPEG marker expected")
        marker = _read_exact(f, 1)[0]
        while marker == 0xFF:  # fill bytes
            marker = _read_exact(f, 1)[0]
        if marker in (0x01, *range(0xD0, 0xD8)):  # markers without a length
            continue
        if marker in (0xD9, 0xDA):
            raise HeaderError("JPEG without a frame header (SOF) before its image data")
        (length,) = struct.unpack(">H", _read_exact(f, 2))
        if length < 2:
            raise HeaderError("JPEG segment with an invalid length")
        if marker in _SOF_MARKERS:
            _precision, height, width = struct.unpack(">BHH", _read_exact(f, 5))
            return Header("jpeg", width, height, orientation, f.tell())
        if marker == 0xE1 and orientation == 1:
            payload = _read_exact(f, length - 2)
            if payload.startswith(b"Exif\x00\x00"):
                orientation = _exif_orientation(payload[6:])
            continue
        f.seek(length - 2, os.SEEK_CUR)


def _bmp_header(f: BinaryIO) -> Header:
    head = _read_exact(f, 26)
    (header_size,) = struct.unpack_from("<I", head, 14)
    if header_size == 12:  # OS/2 BITMAPCOREHEADER
        width, height = struct.unpack_from("<HH", head, 18)
    else:
        width, height = struct.unpack_from("<ii", head, 18)
    return Header("bmp", abs(width), abs(height))


def _webp_header(f: BinaryIO) -> Header:
    head = _read_exact(f, 30)
    kind = head[12:16]
    if kind == b"VP8 ":
        width, height = struct.unpack_from("<HH", head, 26)
        return Header("webp", width & 0x3FFF, height & 0x3FFF)
    if kind == b"VP8L":
        (bits,) = struct.unpack_from("<I", head, 21)
        return Header("webp", (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1)
    if kind == b"VP8X":
        width = int.from_bytes(head[24:27], "little") + 1
        height = int.from_bytes(head[27:30], "little") + 1
        orientation = _webp_orientation(f) if head[20] & 0x08 else 1  # the VP8X flags say an EXIF chunk follows
        return Header("webp", width, height, orientation)
    raise HeaderError(f"unknown WebP chunk {kind!r}")


def _webp_orientation(f: BinaryIO) -> int:
    """The EXIF orientation of an extended WebP (its ``EXIF`` chunk, usually after the image data; OpenCV applies
    it), or 1 when there is none."""
    f.seek(30)  # the RIFF header, then the VP8X chunk
    for _ in range(64):  # ICCP, ANIM, ALPH, VP8/VP8L, EXIF, XMP: a handful of chunks
        chunk = f.read(8)
        if len(chunk) < 8:
            return 1
        kind, length = chunk[:4], struct.unpack("<I", chunk[4:])[0]
        if kind == b"EXIF" and length < 1 << 20:
            return _exif_orientation(f.read(length))  # a TIFF block; OpenCV ignores one behind an "Exif" prefix
        f.seek(length + (length & 1), os.SEEK_CUR)  # chunks are padded to an even length
    return 1


def _tiff_header(f: BinaryIO) -> Header:
    head = _read_exact(f, 8)
    e = "<" if head[:2] == b"II" else ">"
    (magic, ifd) = struct.unpack(e + "HI", head[2:8])
    if magic != 42:
        raise HeaderError("BigTIFF or unknown TIFF variant")
    f.seek(ifd)
    (count,) = struct.unpack(e + "H", _read_exact(f, 2))
    entries = _read_exact(f, 12 * count)
    values: dict[int, int] = {}
    for i in range(count):
        tag, typ, _n = struct.unpack_from(e + "HHI", entries, 12 * i)
        if tag in (256, 257, 274) and typ in (3, 4):
            if tag in values:  # decoders disagree on which one counts: a size check could be fooled
                raise HeaderError(f"malformed TIFF: tag {tag} appears twice in the first directory")
            fmt = e + ("H" if typ == 3 else "I")
            values[tag] = struct.unpack_from(fmt, entries, 12 * i + 8)[0]
    if 256 not in values or 257 not in values:
        raise HeaderError("TIFF without ImageWidth/ImageLength tags")
    orientation = values.get(274, 1)  # OpenCV (libtiff) applies the TIFF orientation tag
    return Header("tiff", values[256], values[257], orientation if 1 <= orientation <= 8 else 1)


_OTHER_FORMATS = (
    (b"GIF8", "GIF"),
    (b"%PDF", "PDF"),
    (b"PK\x03\x04", "ZIP"),
    (b"\x00\x00\x00\x0cjP", "JPEG 2000"),
    (b"8BPS", "Photoshop"),
)
EXTENSION_FORMATS = {".jpg": "jpeg", ".jpeg": "jpeg", ".png": "png", ".tif": "tiff", ".tiff": "tiff", ".bmp": "bmp",
                     ".webp": "webp"}  # fmt: skip
"""The format each supported extension promises; a file whose content is another format is refused."""


def _what_else(magic: bytes) -> str:
    """A name for content that is none of the supported formats (for the error message)."""
    if len(magic) >= 12 and magic[4:8] == b"ftyp":
        return " (it is a HEIC/HEIF or MP4 file)"
    for prefix, name in _OTHER_FORMATS:
        if magic.startswith(prefix):
            return f" (it is a {name} file)"
    return ""


def _sniff(f: BinaryIO) -> Header | None:
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


def oriented_size(width: int, height: int, orientation: int) -> tuple[int, int]:
    return (height, width) if orientation in _TRANSPOSING_ORIENTATIONS else (width, height)


def open_image_file(path: Path) -> BinaryIO:
    """Open ``path`` for reading without ever blocking on a special file: a FIFO, a device or a socket put where
    an image should be (or a stalled mount's placeholder) is refused from its descriptor's own type."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise ImageError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise ImageError(f"{path}: is a directory, not an image") from None
    except OSError as e:
        raise ImageError(f"{path}: cannot be opened ({e.strerror or e})") from None
    try:
        mode = os.fstat(fd).st_mode
    except OSError as e:
        os.close(fd)
        raise ImageError(f"{path}: cannot be read ({e.strerror or e})") from None
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = "a directory" if stat.S_ISDIR(mode) else "not a regular file (a pipe, device or socket)"
        raise ImageError(f"{path}: is {kind}, not an image") from None
    return os.fdopen(fd, "rb")


def read_header(path: Path, f: BinaryIO) -> Header:
    """The header of an open image file; ImageError for an empty file, an unsupported format, or content that is
    not what the file's extension says (a GIF named ``.png`` is refused before a byte of it is decoded)."""
    f.seek(0, os.SEEK_END)
    if f.tell() == 0:
        raise ImageError(f"{path}: the file is empty (0 bytes)")
    f.seek(0)
    try:
        info = _sniff(f)
    except (HeaderError, struct.error) as e:
        raise ImageError(f"{path}: not a readable image ({e})") from None
    if info is None:
        f.seek(0)
        other = _what_else(f.read(16))
        raise ImageError(f"{path}: not an image skinseg reads (not a PNG, JPEG, BMP, WebP or TIFF file{other})")
    promised = EXTENSION_FORMATS.get(path.suffix.lower())
    if promised is not None and promised != info.format:
        raise ImageError(
            f"{path}: the file is a {info.format.upper()} image but its name ends in {path.suffix}; "
            "rename it to match its content"
        )
    return info


class ImageInfo(NamedTuple):
    """What the header says: ``format`` (png, jpeg, bmp, webp, tiff) and the size as :func:`read_image`
    returns it, i.e. after the EXIF orientation."""

    format: str
    width: int
    height: int


def image_info(path: str | os.PathLike[str]) -> ImageInfo:
    """Format and oriented size of an image, read from its header only (nothing is decoded).

    JPEG, PNG, TIFF and WebP orientations 5–8 (rotations by 90°) swap width and height.
    Raises :class:`ImageError` for a file that is missing, empty, not a PNG, JPEG, BMP, WebP or TIFF, or not the
    format its extension says.
    """
    path = Path(path)
    with open_image_file(path) as f:
        info = read_header(path, f)
    return ImageInfo(info.format, *oriented_size(info.width, info.height, info.orientation))


def image_size(path: str | os.PathLike[str]) -> tuple[int, int]:
    """``(width, height)`` of an image as :func:`read_image` would return it, from the header only."""
    info = image_info(path)
    return info.width, info.height
