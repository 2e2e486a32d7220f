"""Reliability round 2 (issue 12): what an adversarial tester and a first-time user broke, one test per finding.

Each test names the finding it covers; the batch-level ones run the real `skinseg infer` path with a stand-in
ONNX model whose mask is ``red > 127``.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import struct
import subprocess
import sys
import threading
import time

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from skinseg.cli import app
from skinseg.runtime.batch import InferOptions, estimate_memory, run_batch
from skinseg.runtime.errors import ImageError, UsageError
from skinseg.runtime.imageio import image_size, load_image_file, read_image, read_mask
from skinseg.runtime.outputs import LOCK_NAME, is_ours, output_lock
from tests.onnx_standins import identity_model, metadata_json, save
from tests.support import ROOT, jpeg_bytes, lesion_image, png_chunk, quadrants, rows_of, run_cli, tiff_bytes, write_png

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


# ================================================================================== batch and command line
# The stand-in model's mask is the red channel > 127; lesion_image has a red block.

OPTS = InferOptions(threads=1)
runner = CliRunner()


# ------------------------------------------------------------------------------------------ 1. non-UTF-8 names


def test_1_names_that_are_not_utf8_round_trip_through_every_report(model, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    names = [os.fsdecode(b"a\xe9.png"), "b.png", os.fsdecode(b"c\xff\xfe.png")]
    for name in names:
        write_png(src / name, lesion_image())
    out = tmp_path / "out"
    summary = run_batch([src], model, out, OPTS)
    assert (summary.ok, summary.failed) == (3, 0)
    rows = rows_of(out)
    assert set(rows) == set(names)  # results.csv gives the bytes back
    data = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert data["ok"] == 3
    page = (out / "index.html").read_text(encoding="utf-8")
    assert "a\\xe9.png" in page  # shown escaped, the page is valid UTF-8
    assert run_batch([src], model, out, OPTS).skipped == 3  # and a rerun finds them up to date


def test_1_evaluate_reports_names_that_are_not_utf8(model, tmp_path):
    images, masks = tmp_path / "images", tmp_path / "masks"
    masks.mkdir(parents=True)
    name = os.fsdecode(b"lesion\xe9")
    write_png(images / f"{name}.png", lesion_image())
    cv2.imwrite(
        os.fsencode(masks / f"{name}_mask.png").decode("utf-8", "surrogateescape"),
        (lesion_image()[..., 0] > 127).astype(np.uint8) * 255,
    ) if False else (masks / f"{name}_mask.png").write_bytes(
        cv2.imencode(".png", (lesion_image()[..., 0] > 127).astype(np.uint8) * 255)[1].tobytes()
    )
    result = runner.invoke(
        app,
        [
            "evaluate",
            "--model",
            str(model),
            "--images",
            str(images),
            "--masks",
            str(masks),
            "--output",
            str(tmp_path / "ev"),
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "ev" / "summary.json").read_text())["n_images"] == 1


# ------------------------------------------------------------------------------------------ 2. stalled reads


@pytest.mark.slow
def test_2_a_fifo_swapped_in_mid_run_fails_one_image_and_sigterm_ends_the_run(model, tmp_path):
    src = tmp_path / "src"
    for i in range(6):
        write_png(src / f"i{i}.png", lesion_image(seed=i))
    os.unlink(src / "i3.png")
    os.mkfifo(src / "i3.png")  # a reader that opens it blocking would hang forever
    out = tmp_path / "out"
    done = run_cli("infer", src, "--model", model, "--output", out, "--quiet", "--threads", "1")
    assert done.returncode == 1, done.stdout + done.stderr
    assert rows_of(out)["i3.png"]["status"] == "failed" and "not a regular file" in rows_of(out)["i3.png"]["error"]


def test_2_sigterm_ends_a_run_within_seconds_even_with_a_stuck_worker(model, tmp_path):
    """A worker blocked for good (a dead network mount) cannot keep the process, or its lock, alive."""
    src = tmp_path / "src"
    for i in range(4):
        write_png(src / f"i{i}.png", lesion_image(seed=i))
    out = tmp_path / "out"
    stuck = tmp_path / "stuck"  # made by the worker as it blocks
    code = (
        "import time, sys\n"
        "import skinseg.runtime.batch as b\n"
        "real = b.process_image\n"
        "def stuck(*a, **k):\n"
        "    if str(a[1]).endswith('i1.png'):\n"
        f"        open({str(stuck)!r}, 'w').close()\n"
        "        time.sleep(3600)\n"
        "    return real(*a, **k)\n"
        "b.process_image = stuck\n"
        "from skinseg.cli import main\n"
        f"sys.argv = ['skinseg', 'infer', {str(src)!r}, '--model', {str(model)!r}, '--output', {str(out)!r},"
        " '--quiet', '--threads', '1', '--max-in-flight', '2']\n"
        "main()\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not ((out / "i0_mask.png").exists() and stuck.exists()) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None and stuck.exists(), "the run should be under way with a worker stuck"
    proc.send_signal(signal.SIGTERM)
    start = time.monotonic()
    stdout, stderr = proc.communicate(timeout=60)
    assert time.monotonic() - start < 20, "the run did not end after SIGTERM"
    assert proc.returncode == 130, stderr
    text = stdout.decode() + stderr.decode()
    assert "interrupted after" in text and "stopping" in text
    assert (out / "results.csv").is_file()
    with output_lock(out):  # released: the next cron run gets it
        pass


# ------------------------------------------------------------------------------------------ 3. the lock file


def test_3_a_lock_that_is_a_symlink_or_a_fifo_is_refused_and_nothing_is_written(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "out"
    out.mkdir()
    (out / LOCK_NAME).symlink_to(victim)
    with pytest.raises(UsageError, match="symbolic link"), output_lock(out):
        pass
    assert victim.read_text() == "precious"
    (out / LOCK_NAME).unlink()
    os.mkfifo(out / LOCK_NAME)
    with pytest.raises(UsageError, match="not a regular file"), output_lock(out):
        pass


# ------------------------------------------------------------------------------------------ 5. memory


def test_5_images_in_flight_are_bounded_by_the_memory_limit(model, tmp_path, images_in_flight):
    """With room for one image at a time, no two are ever worked on together; with room for several, they are."""
    src = tmp_path / "src"
    for i in range(6):
        write_png(src / f"i{i}.png", lesion_image(seed=i))
    one = estimate_memory(120, 90, OPTS)
    run_batch([src], model, tmp_path / "o1", InferOptions(threads=1, memory_limit=one, max_in_flight=4))
    assert images_in_flight.peak == 1
    images_in_flight.reset(crowd=3)  # each image waits for three to be in flight: no race with their finishing
    run_batch([src], model, tmp_path / "o2", InferOptions(threads=1, memory_limit=10 * one, max_in_flight=3))
    assert images_in_flight.peak == 3
    assert estimate_memory(15000, 16000, OPTS) > 4 * 240_000_000  # a 240 MP photo counts for what it needs


# ------------------------------------------------------------------------------------------ 6. two sources


def test_6_two_folders_with_the_same_names_get_a_sub_folder_each(model, tmp_path):
    d1, d2 = tmp_path / "d1", tmp_path / "d2"
    write_png(d1 / "a.png", lesion_image(seed=1))
    write_png(d2 / "a.png", lesion_image(seed=2))
    (d2 / "b.png").write_bytes(b"broken")
    out = tmp_path / "out"
    summary = run_batch([d1, d2], model, out, OPTS)
    rows = rows_of(out)
    assert (summary.ok, summary.failed) == (2, 1) and len(rows) == 3
    assert rows["d1/a.png"]["status"] == rows["d2/a.png"]["status"] == "ok" and rows["d2/b.png"]["status"] == "failed"
    assert (out / "d1" / "a_mask.png").is_file() and (out / "d2" / "a_mask.png").is_file()
    # the same file twice from two places: the second is a failed row of its own, counted and listed
    f1, f2 = tmp_path / "x" / "c.png", tmp_path / "y" / "c.png"
    write_png(f1, lesion_image(seed=3))
    write_png(f2, lesion_image(seed=4))
    both = run_batch([f1, f2], model, tmp_path / "o2", OPTS)
    assert (both.ok, both.failed) == (1, 1) and len(rows_of(tmp_path / "o2")) == 2
    # the second alone later: its content differs from what made c_mask.png, so it is redone, not "skipped"
    assert run_batch([f2], model, tmp_path / "o2", OPTS).ok == 1


# ------------------------------------------------------------------------------------------ 7. foreign files


def test_7_output_in_the_input_folder_never_overwrites_a_file_skinseg_did_not_write(model, tmp_path):
    src = tmp_path / "src"
    write_png(src / "a.png", lesion_image())
    write_png(src / "b.png", lesion_image(seed=1))
    truth = src / "a_mask.png"
    truth.write_bytes(cv2.imencode(".png", np.full((90, 120), 255, np.uint8))[1].tobytes())  # ground truth
    before = truth.read_bytes()
    summary = run_batch([src], model, src, OPTS)
    assert (summary.ok, summary.failed) == (1, 1)
    assert truth.read_bytes() == before
    assert "not written by skinseg" in rows_of(src)["a.png"]["error"]
    assert is_ours(src / "b_mask.png") and is_ours(src / "b_overlay.jpg")
    assert run_batch([src], model, src, OPTS).skipped == 1  # its own outputs are no obstacle to a rerun


# ------------------------------------------------------------------------------------------ 8. -r and outputs


def test_8_recursive_runs_never_read_earlier_outputs(model, tmp_path):
    src = tmp_path / "src"
    write_png(src / "a.png", lesion_image())
    for day in (1, 2, 3):
        summary = run_batch([src], model, src / f"out-day{day}", OPTS, recursive=True)
        assert summary.total == 1, (day, summary)


# ------------------------------------------------------------------------------------------ 10. model swap


def test_10_a_model_replaced_mid_run_changes_nothing_in_that_run(model, tmp_path, monkeypatch):
    import skinseg.runtime.batch as batch

    src = tmp_path / "src"
    for i in range(5):
        write_png(src / f"i{i}.png", lesion_image(seed=i))
    live = tmp_path / "live.onnx"
    live.write_bytes(model.read_bytes())
    other = save(identity_model(metadata=metadata_json((64, 64), threshold=0.99)), tmp_path / "other.onnx")
    real = batch.process_image
    calls = [0]

    def swap_after_two(*args, **kwargs):
        calls[0] += 1
        if calls[0] == 3:
            os.replace(other, live)  # an atomic mv over --model mid-run
        return real(*args, **kwargs)

    monkeypatch.setattr(batch, "process_image", swap_after_two)
    summary = run_batch([src], live, tmp_path / "out", InferOptions(threads=1, max_in_flight=1))
    assert summary.ok == 5
    masks = [cv2.imread(str(tmp_path / "out" / f"i{i}_mask.png"), cv2.IMREAD_GRAYSCALE) for i in range(5)]
    assert all((m > 0).sum() == (masks[0] > 0).sum() > 0 for m in masks)  # all from the first model
    assert summary.model_sha256 == hashlib.sha256(model.read_bytes()).hexdigest()


# ------------------------------------------------------------------------------------------ 12. unwritable


@pytest.mark.parametrize("command", ["synth", "augment-preview"])
def test_12_unwritable_outputs_are_one_line_errors(tmp_path, command):
    target = tmp_path / "file"
    target.write_text("x")
    if command == "synth":
        result = runner.invoke(app, ["synth", str(target / "out"), "--count", "2"])
    else:
        cfg = ROOT / "configs" / "demo.config"
        result = runner.invoke(app, ["augment-preview", str(cfg), "--count", "2", "--output", str(target / "g.png")])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
