"""Image reading and writing: orientation, bit depths, bad files, headers, atomic writes; files that are not what they
seem (a FIFO, a TIFF with two widths, content unlike its name, gigabytes behind a small header) are refused before
decoding, and masks of every common encoding are read."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

from skinseg.runtime.atomic import write_bytes_atomic
from skinseg.runtime.errors import ImageError
from skinseg.runtime.imageheaders import image_info, image_size
from skinseg.runtime.imageio import (
    SUPPORTED_EXTENSIONS,
    is_supported,
    load_image_file,
    read_image,
    read_mask,
    write_jpeg_atomic,
    write_png_atomic,
)
from tests.support import (
    ORIENT,
    exif_block,
    jpeg_bytes,
    png_chunk,
    quadrants,
    tiff_bytes,
)


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("orientation", range(1, 9))
def test_jpeg_exif_orientation(tmp_path, orientation):
    src = quadrants()
    path = write(tmp_path / f"o{orientation}.jpg", jpeg_bytes(src, orientation))
    expected = ORIENT[orientation](src)
    assert image_size(path) == (expected.shape[1], expected.shape[0])
    img = read_image(path)
    assert img.shape == expected.shape and img.dtype == np.uint8
    assert np.abs(img.astype(int) - expected).mean() < 4
    reduced = read_image(path, reduce=2)
    assert reduced.shape == (expected.shape[0] // 2, expected.shape[1] // 2, 3)


def test_little_endian_exif_and_png_exif(tmp_path):
    src = quadrants()
    path = write(tmp_path / "le.jpg", jpeg_bytes(src, 6, endian="II"))
    assert image_size(path) == (32, 48)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(src, cv2.COLOR_RGB2BGR))
    data = buf.tobytes()
    png = write(tmp_path / "o8.png", data[:33] + png_chunk(b"eXIf", exif_block(8)) + data[33:])
    assert image_info(png) == ("png", 32, 48)
    np.testing.assert_array_equal(read_image(png), ORIENT[8](src))


def test_png_is_rgb_and_lossless(tmp_path):
    src = np.random.default_rng(0).integers(0, 256, (17, 23, 3), dtype=np.uint8)
    write_png_atomic(tmp_path / "a.png", src)
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), src)


def test_16bit_gray_and_rgba(tmp_path):
    v16 = np.random.default_rng(0).integers(0, 65536, (9, 11, 3), dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "16.png"), v16[..., ::-1])
    img = read_image(tmp_path / "16.png")
    assert img.dtype == np.uint8
    np.testing.assert_array_equal(img, np.round(v16 / 257).astype(np.uint8))

    gray = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    cv2.imwrite(str(tmp_path / "g.png"), gray)
    np.testing.assert_array_equal(read_image(tmp_path / "g.png"), np.repeat(gray[..., None], 3, axis=2))

    rgba = np.zeros((5, 6, 4), np.uint8)
    rgba[..., :3] = (10, 20, 30)  # RGB under a fully transparent alpha: kept, alpha dropped
    cv2.imwrite(str(tmp_path / "a.png"), cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA))
    img = read_image(tmp_path / "a.png")
    assert img.shape == (5, 6, 3)
    np.testing.assert_array_equal(img, rgba[..., :3])


@pytest.mark.parametrize("ext", [".bmp", ".tiff", ".webp"])
def test_header_sizes_of_other_formats(tmp_path, ext):
    src = np.random.default_rng(0).integers(0, 256, (21, 34, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / f"x{ext}"), src)
    assert image_size(tmp_path / f"x{ext}") == (34, 21)
    assert read_image(tmp_path / f"x{ext}").shape == (21, 34, 3)


def test_lossy_webp_header(tmp_path):
    cv2.imwrite(str(tmp_path / "x.webp"), quadrants(30, 50), [cv2.IMWRITE_WEBP_QUALITY, 80])
    assert image_size(tmp_path / "x.webp") == (50, 30)


def test_reduce_sizes(tmp_path):
    write(tmp_path / "a.jpg", jpeg_bytes(quadrants(201, 301)))
    for r, shape in [(2, (101, 151)), (4, (51, 76)), (8, (26, 38))]:
        assert read_image(tmp_path / "a.jpg", reduce=r).shape == (*shape, 3)
    with pytest.raises(ValueError, match="reduce must be one of"):
        read_image(tmp_path / "a.jpg", reduce=3)


def bad(path: Path, match: str) -> str:
    with pytest.raises(ImageError, match=match) as info:
        read_image(path)
    message = str(info.value)
    assert "\n" not in message and path.name in message
    return message


def test_bad_files_raise_one_line_image_errors(tmp_path):
    jpg = jpeg_bytes(quadrants(64, 64))
    ok, png = cv2.imencode(".png", quadrants(64, 64))
    bad(write(tmp_path / "half.jpg", jpg[: len(jpg) // 2]), "truncated")
    bad(write(tmp_path / "noeoi.jpg", jpg[:-2]), "truncated")
    bad(write(tmp_path / "half.png", png.tobytes()[: len(png) // 2]), "truncated or corrupt")
    bad(write(tmp_path / "header.png", png.tobytes()[:20]), "truncated")
    bad(write(tmp_path / "empty.jpg", b""), "empty")
    bad(write(tmp_path / "noise.jpg", np.random.default_rng(0).bytes(4096)), "not an image")
    bad(tmp_path / "missing.png", "not found")
    bad(tmp_path, "directory")
    with pytest.raises(ImageError, match="empty"):
        image_size(tmp_path / "empty.jpg")
    with pytest.raises(ImageError, match="not a PNG, JPEG"):
        image_size(tmp_path / "noise.jpg")


def test_huge_png_header_refused_before_decoding(tmp_path):
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", b"") + png_chunk(b"IEND", b"")
    path = write(tmp_path / "bomb.png", data)
    assert image_size(path) == (100_000, 100_000)
    message = bad(path, "exceeds max_pixels=")
    assert "100000×100000 = 10,000 MP" in message and "250 MP" in message
    with pytest.raises(ImageError, match="exceeds"):
        read_mask(path)


def test_huge_jpeg_header_refused(tmp_path):
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, 60_000, 60_000, 1) + b"\x01\x11\x00"
    path = write(tmp_path / "bomb.jpg", b"\xff\xd8" + sof + b"\xff\xd9")
    assert image_size(path) == (60_000, 60_000)
    bad(path, "exceeds max_pixels=")


def test_small_max_pixels(tmp_path):
    write(tmp_path / "a.jpg", jpeg_bytes(quadrants()))
    with pytest.raises(ImageError, match="raise max_pixels "):
        read_image(tmp_path / "a.jpg", max_pixels=1000)
    assert read_image(tmp_path / "a.jpg", max_pixels=32 * 48).shape == (32, 48, 3)


def test_non_ascii_and_space_paths(tmp_path):
    folder = tmp_path / "dossier été 画像"
    folder.mkdir()
    src = quadrants()
    write_png_atomic(folder / "lésion 1.png", src)
    write_jpeg_atomic(folder / "lésion 1.JPG", src, quality=95)
    np.testing.assert_array_equal(read_image(folder / "lésion 1.png"), src)
    assert np.abs(read_image(folder / "lésion 1.JPG").astype(int) - src).mean() < 4
    assert image_size(folder / "lésion 1.JPG") == (48, 32)


def test_mask_round_trip_1bit(tmp_path):
    mask = np.zeros((400, 600), np.uint8)
    cv2.fillPoly(mask, [np.array([[100, 80], [450, 60], [520, 300], [150, 350]], np.int32)], 255)
    cv2.circle(mask, (300, 200), 40, 0, -1)
    write_png_atomic(tmp_path / "m1.png", mask, bits=1)
    write_png_atomic(tmp_path / "m8.png", mask)
    assert (tmp_path / "m1.png").read_bytes()[24] == 1  # IHDR bit depth
    assert (tmp_path / "m1.png").stat().st_size < (tmp_path / "m8.png").stat().st_size
    np.testing.assert_array_equal(read_mask(tmp_path / "m1.png"), mask)
    np.testing.assert_array_equal(cv2.imread(str(tmp_path / "m1.png"), cv2.IMREAD_UNCHANGED), mask)


def test_read_mask_binarizes(tmp_path):
    gray = np.array([[0, 127, 128, 255]], np.uint8)
    cv2.imwrite(str(tmp_path / "g.png"), gray)
    np.testing.assert_array_equal(read_mask(tmp_path / "g.png"), [[0, 0, 255, 255]])
    np.testing.assert_array_equal(read_mask(tmp_path / "g.png", threshold=200), [[0, 0, 0, 255]])


@pytest.mark.parametrize("value", [1, 2, 100, 127, 128, 255])
def test_a_mask_of_zeros_and_one_value_has_that_value_as_lesion(tmp_path, value):
    """0/127, 0/100, 0/2 masks were read as empty truth (a fixed threshold of 128): the one value is the lesion."""
    truth = np.zeros((48, 64), np.uint8)
    truth[10:30, 20:50] = 255
    path = tmp_path / f"m{value}.png"
    cv2.imwrite(str(path), (truth > 0).astype(np.uint8) * value)
    np.testing.assert_array_equal(read_mask(path), truth)
    cv2.imwrite(str(path), (truth > 0).astype(np.uint16) * value * 3)  # 16 bits: 0/300 is no 8-bit 75 either
    np.testing.assert_array_equal(read_mask(path), truth)


def test_a_mask_with_grey_edges_is_thresholded_at_half_scale(tmp_path):
    truth = np.zeros((48, 64), np.uint8)
    truth[10:30, 20:50] = 255
    soft = truth.copy()
    soft[10:30, 19] = 127  # an anti-aliased edge: under half scale, skin
    soft[10:30, 50] = 128  # at half scale: lesion
    soft[9, 20:50] = 60
    cv2.imwrite(str(tmp_path / "soft.png"), soft)
    expected = truth.copy()
    expected[10:30, 50] = 255
    np.testing.assert_array_equal(read_mask(tmp_path / "soft.png"), expected)
    faint = soft // 2  # grey levels, none at half scale: several values, so no single lesion value
    cv2.imwrite(str(tmp_path / "faint.png"), faint)
    assert not read_mask(tmp_path / "faint.png").any()


@pytest.mark.parametrize("value", [1, 255])
def test_a_0_1_mask_gets_its_exif_orientation_like_a_0_255_one(tmp_path, value):
    truth = np.zeros((32, 48), np.uint8)
    truth[4:12, 6:30] = 255
    data = cv2.imencode(".png", (truth > 0).astype(np.uint8) * value)[1].tobytes()
    path = write(tmp_path / "m.png", data[:33] + png_chunk(b"eXIf", exif_block(6)) + data[33:])
    np.testing.assert_array_equal(read_mask(path), ORIENT[6](truth))


def test_atomic_writes_leave_no_temp_files(tmp_path, monkeypatch):
    write_bytes_atomic(tmp_path / "a.bin", b"one")
    write_bytes_atomic(tmp_path / "a.bin", b"two")
    assert (tmp_path / "a.bin").read_bytes() == b"two"
    with pytest.raises(ValueError):
        write_png_atomic(tmp_path / "b.png", np.zeros((4, 4), np.float32))
    with pytest.raises(FileNotFoundError):
        write_bytes_atomic(tmp_path / "no" / "c.bin", b"x")

    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        write_jpeg_atomic(tmp_path / "a.bin", quadrants())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"]
    assert (tmp_path / "a.bin").read_bytes() == b"two"


def test_atomic_write_respects_umask(tmp_path):
    old = os.umask(0o022)
    try:
        write_bytes_atomic(tmp_path / "a.bin", b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.bin").stat().st_mode & 0o777 == 0o644


def test_supported_extensions():
    assert {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp"} == SUPPORTED_EXTENSIONS
    assert is_supported("A.JPG") and is_supported("b.TiFf") and not is_supported("c.gif")


def test_tiff_orientation_tag(tmp_path):
    src = quadrants()
    ok, buf = cv2.imencode(".tiff", cv2.cvtColor(src, cv2.COLOR_RGB2BGR))
    data = bytearray(buf.tobytes())
    e = "<" if data[:2] == b"II" else ">"
    (ifd,) = struct.unpack_from(e + "I", data, 4)
    (count,) = struct.unpack_from(e + "H", data, ifd)
    for i in range(count):  # turn PlanarConfiguration (284, default 1) into Orientation (274) = 6
        if struct.unpack_from(e + "H", data, ifd + 2 + 12 * i)[0] == 284:
            struct.pack_into(e + "HHIHH", data, ifd + 2 + 12 * i, 274, 3, 1, 6, 0)
    path = write(tmp_path / "o6.tif", bytes(data))
    img = read_image(path)
    assert image_size(path) == (img.shape[1], img.shape[0]) == (32, 48)
    np.testing.assert_array_equal(img, ORIENT[6](src))


# ---------------------------------------------------------------------------------- files that are not what they seem


def test_a_fifo_in_place_of_an_image_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "photo.jpg"
    os.mkfifo(fifo)
    outcome = {}

    def read():
        try:
            read_image(fifo)
        except ImageError as e:
            outcome["error"] = str(e)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    thread.join(10)
    assert not thread.is_alive(), "reading a FIFO blocked"
    assert "not a regular file" in outcome["error"] and "photo.jpg" in outcome["error"]


def test_a_tiff_with_two_image_widths_is_refused(tmp_path):
    """The header check once read 10×18000 while libtiff decoded 18000×18000 (324 MP, reported ok)."""
    path = tmp_path / "dup.tif"
    path.write_bytes(tiff_bytes([10, 18000], 18000, b"\x00" * 180_000))
    with pytest.raises(ImageError, match="appears twice"):
        read_image(path)


def test_the_decoder_refuses_more_pixels_than_allowed(tmp_path):
    """Whatever our header parser thinks, OpenCV's own size check runs before it allocates (its limit is ours)."""

    path = tmp_path / "big.png"
    cv2.imwrite(str(path), np.zeros((300, 400), np.uint8))
    code = (
        "from skinseg.runtime import imageio\n"
        f"f = imageio.load_image_file({str(path)!r}, max_pixels=10**9)\n"
        "imageio.decoder_limit = lambda: 10**9\n"  # as if the header had been within the limit: it lied
        "try:\n    imageio.decode_image(f)\nexcept imageio.ImageError as e:\n    print('REFUSED', e)\n"
    )
    env = {**os.environ, "OPENCV_IO_MAX_IMAGE_PIXELS": "1000"}  # read by OpenCV once, when it loads
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert "REFUSED" in out.stdout and "malformed" in out.stdout, out.stdout + out.stderr


def test_content_that_is_not_what_the_name_says_is_refused_before_decoding(tmp_path):
    gif = tmp_path / "big.png"
    gif.write_bytes(b"GIF89a" + struct.pack("<HH", 16000, 16000) + b"\x00" * 64)
    with pytest.raises(ImageError, match="not an image.*GIF file"):
        read_image(gif)
    jpeg = tmp_path / "photo.png"
    jpeg.write_bytes(jpeg_bytes(quadrants()))
    with pytest.raises(ImageError, match="is a JPEG image but its name ends in .png"):
        read_image(jpeg)
    with pytest.raises(ImageError, match="is a JPEG image"):
        image_size(jpeg)


def test_a_huge_file_is_refused_unread(tmp_path):
    """3 GB of zeros named .png, and a 10×10 PNG followed by 200 MB: neither is read into memory."""
    zeros = tmp_path / "zeros.png"
    with open(zeros, "wb") as f:
        f.truncate(3 << 30)  # sparse: no disk used
    with pytest.raises(ImageError, match="not an image"):
        read_image(zeros)
    ihdr = struct.pack(">IIBBBBB", 10, 10, 8, 2, 0, 0, 0)
    padded = tmp_path / "padded.png"
    with open(padded, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr))
        f.truncate(200 << 20)
    with pytest.raises(ImageError, match="more than a 10×10 image can need"):
        load_image_file(padded)


def test_masks_of_every_common_encoding_are_read_and_others_refused(tmp_path):
    truth = np.zeros((64, 80), np.uint8)
    truth[10:40, 20:60] = 255
    expected = truth > 0
    zero_one = tmp_path / "a01.png"
    cv2.imwrite(str(zero_one), (truth > 0).astype(np.uint8))
    red = tmp_path / "red.png"
    cv2.imwrite(str(red), np.dstack([np.zeros_like(truth), np.zeros_like(truth), truth]))  # BGR: red lesion
    rgb_white = tmp_path / "white3.png"
    cv2.imwrite(str(rgb_white), np.dstack([truth] * 3))
    for path in (zero_one, red, rgb_white):
        np.testing.assert_array_equal(read_mask(path) > 0, expected, err_msg=path.name)
    try:
        from PIL import Image
    except ImportError:
        Image = None
    if Image is not None:
        palette = Image.fromarray((truth > 0).astype(np.uint8), mode="P")
        palette.putpalette([0, 0, 0, 200, 30, 30] + [0] * 762)
        palette.save(tmp_path / "palette.png")
        np.testing.assert_array_equal(read_mask(tmp_path / "palette.png") > 0, expected)
    photo = tmp_path / "photo.png"
    ramp = np.tile(np.linspace(0, 255, 80).astype(np.uint8), (64, 1))
    cv2.imwrite(str(photo), ramp)
    with pytest.raises(ImageError, match="not a binary mask"):
        read_mask(photo)


def test_12_bit_data_in_a_16_bit_tiff_uses_its_real_range(tmp_path):
    """A 16-bit TIFF holding 12-bit values (0–4095) once decoded as nearly black: 0% lesion, reported ok."""
    values = np.zeros((8, 8), np.uint16)
    values[:, 4:] = 4095
    path = tmp_path / "raw12.tif"
    path.write_bytes(tiff_bytes([8], 8, values.astype("<u2").tobytes(), bits=16))
    image = read_image(path)
    assert image[0, 0, 0] == 0 and image[0, 7, 0] == 255
