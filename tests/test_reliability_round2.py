"""Reliability round 2 (issue 12): what an adversarial tester and a first-time user broke, one test per finding.

Each test names the finding it covers; the batch-level ones run the real `skinseg infer` path with a stand-in
ONNX model whose mask is ``red > 127``.
"""

from __future__ import annotations

import os
import struct
import threading
import zlib

import cv2
import numpy as np
import pytest

from skinseg.runtime.errors import ImageError
from skinseg.runtime.imageio import image_size, load_image_file, read_image, read_mask
from tests.test_imageio import jpeg_bytes, quadrants


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


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


# ------------------------------------------------------------------------------------------ 2. stalled reads


def test_2_a_fifo_in_place_of_an_image_is_refused_without_blocking(tmp_path):
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


# ------------------------------------------------------------------------------------------ 4. bombs


def test_4_a_tiff_with_two_image_widths_is_refused(tmp_path):
    """The header check once read 10×18000 while libtiff decoded 18000×18000 (324 MP, reported ok)."""
    path = tmp_path / "dup.tif"
    path.write_bytes(tiff_bytes([10, 18000], 18000, b"\x00" * 180_000))
    with pytest.raises(ImageError, match="appears twice"):
        read_image(path)


def test_4_the_decoder_refuses_more_pixels_than_allowed(tmp_path):
    """Whatever our header parser thinks, OpenCV's own size check runs before it allocates (its limit is ours)."""
    import subprocess
    import sys

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


def test_4_content_that_is_not_what_the_name_says_is_refused_before_decoding(tmp_path):
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


def test_4_a_huge_file_is_refused_unread(tmp_path):
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


# ------------------------------------------------------------------------------------------ 11. masks


def test_11_masks_of_every_common_encoding_are_read_and_others_refused(tmp_path):
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


# ------------------------------------------------------------------------------------------ 12-bit data


def test_12_bit_data_in_a_16_bit_tiff_uses_its_real_range(tmp_path):
    """A 16-bit TIFF holding 12-bit values (0–4095) once decoded as nearly black: 0% lesion, reported ok."""
    values = np.zeros((8, 8), np.uint16)
    values[:, 4:] = 4095
    path = tmp_path / "raw12.tif"
    path.write_bytes(tiff_bytes([8], 8, values.astype("<u2").tobytes(), bits=16))
    image = read_image(path)
    assert image[0, 0, 0] == 0 and image[0, 7, 0] == 255
