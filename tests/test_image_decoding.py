"""Decoding what cameras and copies produce: rotated WebP files are read, JPEGs whose data is cut short are refused
(libjpeg only warns), and what the C decoders print becomes the row's reason instead of stray stderr lines."""

from __future__ import annotations

import struct
import subprocess
import sys

import cv2
import numpy as np
import pytest

from skinseg.runtime.errors import ImageError
from skinseg.runtime.imageheaders import image_size
from skinseg.runtime.imageio import load_image_file, read_image, read_mask
from skinseg.runtime.report import read_results
from tests.support import lesion_image, write_png


def _chunk(kind: bytes, data: bytes) -> bytes:
    return kind + struct.pack("<I", len(data)) + data + (b"\x00" if len(data) % 2 else b"")


def rotated_webp(bgr: np.ndarray, orientation: int, *, exif_prefix: bool = False) -> bytes:
    """An extended (VP8X) WebP of ``bgr`` carrying an EXIF orientation tag, as phones write them."""
    ok, buf = cv2.imencode(".webp", bgr, [cv2.IMWRITE_WEBP_QUALITY, 101])  # lossless
    assert ok
    simple = buf.tobytes()
    h, w = bgr.shape[:2]
    tiff = b"II*\x00" + struct.pack("<IH", 8, 1) + struct.pack("<HHIHH", 0x0112, 3, 1, orientation, 0) + b"\0" * 4
    vp8x = bytes([0x08, 0, 0, 0]) + (w - 1).to_bytes(3, "little") + (h - 1).to_bytes(3, "little")
    exif = (b"Exif\x00\x00" if exif_prefix else b"") + tiff
    body = b"WEBP" + _chunk(b"VP8X", vp8x) + simple[12:] + _chunk(b"EXIF", exif)
    return b"RIFF" + struct.pack("<I", len(body)) + body


def corner_marked(h: int = 40, w: int = 60) -> np.ndarray:
    bgr = np.zeros((h, w, 3), np.uint8)
    bgr[:10, :20] = (0, 0, 255)  # red, top left
    return bgr


@pytest.mark.parametrize(("orientation", "corner"), [(6, (0, -1)), (8, (-1, 0))])
def test_a_webp_rotated_by_its_exif_is_read_upright(tmp_path, orientation, corner):
    path = tmp_path / "phone.webp"
    path.write_bytes(rotated_webp(corner_marked(), orientation))
    assert image_size(path) == (40, 60)  # width and height as displayed
    rgb = read_image(path)
    assert rgb.shape == (60, 40, 3)
    assert rgb[corner][0] > 200 and rgb[30, 20][0] < 50  # the red corner turned with the picture
    mask = read_mask(path)
    assert mask.shape == (60, 40) and mask[corner] == 255


def test_a_webp_whose_exif_the_decoder_does_not_apply_is_read_as_stored(tmp_path):
    """An EXIF chunk behind an "Exif" prefix (not the WebP layout): OpenCV leaves the picture as stored, and so
    must the size check."""
    path = tmp_path / "prefixed.webp"
    path.write_bytes(rotated_webp(corner_marked(), 6, exif_prefix=True))
    assert image_size(path) == (60, 40) and read_image(path).shape == (40, 60, 3)


def test_a_rotated_webp_is_segmented_in_a_batch(standin_model, tmp_path):
    from skinseg.runtime.batch import run_batch
    from skinseg.runtime.options import InferOptions

    bgr = cv2.cvtColor(lesion_image(90, 120), cv2.COLOR_RGB2BGR)
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "p.webp").write_bytes(rotated_webp(bgr, 6))
    summary = run_batch([tmp_path / "src"], standin_model, tmp_path / "out", InferOptions(threads=1))
    assert summary.ok == 1, read_results(tmp_path / "out" / "results.csv")
    assert cv2.imread(str(tmp_path / "out" / "p_mask.png"), cv2.IMREAD_GRAYSCALE).shape == (120, 90)


def jpeg(rgb: np.ndarray) -> bytes:
    return cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()


def noisy(h: int = 256, w: int = 256) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)


def test_a_jpeg_cut_short_but_ending_in_an_end_marker_is_refused(tmp_path):
    data = jpeg(noisy())
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2] + b"\xff\xd9")  # a copy cut short, "repaired" by a tool
    with pytest.raises(ImageError, match=r"cut\.jpg: .*corrupt.*premature end of data segment"):
        read_image(path)
    with pytest.raises(ImageError, match="corrupt"):
        read_image(path, reduce=4)


def test_a_harmless_decoder_warning_does_not_fail_the_image(tmp_path):
    data = jpeg(noisy())
    path = tmp_path / "padded.jpg"
    path.write_bytes(data[:-2] + b"\x00\x00\xff\xd9")  # "2 extraneous bytes before marker 0xd9": all pixels there
    np.testing.assert_array_equal(
        read_image(path), cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), 1), cv2.COLOR_BGR2RGB)
    )


def test_what_the_decoders_print_goes_into_the_row_not_onto_stderr(standin_model, tmp_path):
    src = tmp_path / "src"
    write_png(src / "good.png", lesion_image())
    png = bytearray((src / "good.png").read_bytes())
    png[60:90] = bytes(30)  # a damaged IDAT chunk: libpng prints "libpng error: IDAT: ..." on stderr
    (src / "crc.png").write_bytes(bytes(png))
    data = jpeg(noisy())
    (src / "cut.jpg").write_bytes(data[: len(data) // 2] + b"\xff\xd9")
    done = subprocess.run(
        [sys.executable, "-m", "skinseg", "infer", src, "--model", standin_model, "-o", tmp_path / "out", "--quiet"],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 1, done.stderr
    assert done.stderr == "", done.stderr  # no libpng, libjpeg or OpenCV line of its own
    rows = read_results(tmp_path / "out" / "results.csv")
    assert rows["good.png"]["status"] == "ok"
    assert rows["crc.png"]["status"] == "failed" and "libpng error: IDAT" in rows["crc.png"]["error"]
    assert rows["cut.jpg"]["status"] == "failed" and "premature end" in rows["cut.jpg"]["error"]


def test_a_decode_that_runs_out_of_memory_is_not_blamed_on_the_file(tmp_path):
    """Under `ulimit -v` the decoder cannot allocate: that is this machine's state, retried next run."""
    path = tmp_path / "big.png"
    picture = np.zeros((3000, 3000, 3), np.uint8)
    picture[::7] = 200
    cv2.imwrite(str(path), picture)
    code = (
        "import resource, sys\n"
        "from skinseg.runtime import imageio\n"
        "from skinseg.runtime.errors import ResourceError\n"
        f"f = imageio.load_image_file({str(path)!r})\n"
        "vm = int(open('/proc/self/statm').read().split()[0]) * 4096\n"
        "resource.setrlimit(resource.RLIMIT_AS, (vm + 10_000_000, resource.RLIM_INFINITY))\n"
        "try:\n    imageio.decode_image(f)\nexcept ResourceError as e:\n    print('RESOURCE', e)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "RESOURCE" in done.stdout and "memory" in done.stdout, done.stdout + done.stderr


def test_the_header_of_a_webp_without_exif_is_unchanged(tmp_path):
    path = tmp_path / "plain.webp"
    path.write_bytes(cv2.imencode(".webp", corner_marked())[1].tobytes())
    assert image_size(path) == (60, 40) and load_image_file(path).header.orientation == 1
    assert read_image(path).shape == (40, 60, 3)


def test_decodes_in_parallel_each_get_their_own_decoder_messages(tmp_path):
    """Descriptor 2 is shared: a good JPEG decoded beside a corrupt one is never blamed for its warnings."""
    import threading

    good, bad, harmless = tmp_path / "good.jpg", tmp_path / "bad.jpg", tmp_path / "harmless.jpg"
    data = jpeg(noisy(512, 512))
    good.write_bytes(data)
    bad.write_bytes(data[: len(data) // 2] + b"\xff\xd9")
    harmless.write_bytes(data[:-2] + b"\x00\x00\xff\xd9")
    wrong: list[str] = []

    def work(path, fails):
        for _ in range(15):
            try:
                read_image(path)
                if fails:
                    wrong.append(f"{path.name} passed")
            except ImageError as e:
                if not fails:
                    wrong.append(f"{path.name}: {e}")

    threads = [threading.Thread(target=work, args=a) for a in ((good, False), (bad, True), (harmless, False))]
    threads += [threading.Thread(target=work, args=(good, False))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert wrong == []
