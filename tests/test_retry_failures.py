"""Which failed images a rerun retries: those whose cause may have gone (other options, a foreign file moved away,
memory that was short, another decoder), not those that would fail the same way again, which it says (and exits 0:
cron does not mail the same failure every night) until --retry-failed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np

import skinseg.runtime.imageio as imageio
import skinseg.runtime.job as batch
from skinseg.runtime.batch import run_batch
from skinseg.runtime.errors import ImageError
from skinseg.runtime.options import InferOptions
from skinseg.runtime.report import read_results
from tests.support import lesion_image, rows_of, run_cli, write_png

OPTS = InferOptions(threads=1)


def rows(out: Path) -> dict:
    return read_results(out / "results.csv")


def test_an_image_refused_by_max_pixels_is_retried_when_max_pixels_grows(standin_model, tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    write_png(src / "big.png", lesion_image(90, 120))  # 10,800 px
    small = InferOptions(threads=1, max_pixels=5000)
    assert run_batch([src], standin_model, out, small).failed == 1
    again = run_batch([src], standin_model, out, small)
    assert (again.failed, again.failed_before) == (0, 1)  # it would fail the same way: not retried
    larger = run_batch([src], standin_model, out, InferOptions(threads=1, max_pixels=20000))
    assert larger.ok == 1 and rows(out)["big.png"]["status"] == "ok"


def test_an_image_refused_for_a_foreign_output_file_is_retried_once_it_is_moved(standin_model, tmp_path):
    src = tmp_path / "src"
    write_png(src / "a.png", lesion_image())
    foreign = src / "a_mask.png"
    foreign.write_bytes(cv2.imencode(".png", np.full((90, 120), 255, np.uint8))[1].tobytes())  # ground truth
    assert run_batch([src], standin_model, src, OPTS).failed == 1
    assert run_batch([src], standin_model, src, OPTS).failed_before == 1  # still there: the same failure
    shutil.move(foreign, tmp_path / "a_mask.png")
    moved = run_batch([src], standin_model, src, OPTS)
    assert moved.ok == 1 and rows(src)["a.png"]["status"] == "ok"


def test_an_image_that_failed_for_lack_of_memory_is_retried(standin_model, tmp_path, monkeypatch):
    src, out = tmp_path / "src", tmp_path / "out"
    write_png(src / "a.png", lesion_image())
    real = cv2.imdecode

    def short_of_memory(*args, **kwargs):
        raise cv2.error("OpenCV(5.0.0) alloc.cpp:73: error: (-4:Insufficient memory) Failed to allocate 1 bytes")

    monkeypatch.setattr(imageio.cv2, "imdecode", short_of_memory)
    first = run_batch([src], standin_model, out, OPTS)
    assert first.failed == 1 and "memory" in rows(out)["a.png"]["error"]
    monkeypatch.setattr(imageio.cv2, "imdecode", real)
    assert run_batch([src], standin_model, out, OPTS).ok == 1


def test_an_image_that_failed_in_another_skinseg_is_retried(standin_model, tmp_path, monkeypatch):
    """A decoder fixed since (the rotated WebP files of issue 20) must get its chance at the old failures."""
    src, out = tmp_path / "src", tmp_path / "out"
    (src).mkdir()
    (src / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    assert run_batch([src], standin_model, out, OPTS).failed == 1
    assert run_batch([src], standin_model, out, OPTS).failed_before == 1
    monkeypatch.setattr(batch, "_decoder_versions", lambda: {"skinseg": "99.0", "opencv": "9.9"})
    retried = run_batch([src], standin_model, out, OPTS)
    assert (retried.failed, retried.failed_before) == (1, 0)


def test_a_file_completed_between_the_failed_read_and_its_fingerprint_is_retried(standin_model, tmp_path, monkeypatch):
    """Issue 20, item 17: the fingerprint of a failed input was taken by reading it a second time; a copy that
    completed in between was recorded as a failure of the complete file, never retried."""
    src, out = tmp_path / "src", tmp_path / "out"
    good = cv2.imencode(".jpg", cv2.cvtColor(lesion_image(), cv2.COLOR_RGB2BGR))[1].tobytes()
    src.mkdir()
    (src / "a.jpg").write_bytes(good[: len(good) // 2])  # still being copied: refused as truncated, unread
    real = batch.load_image_file

    def copy_completes_meanwhile(path, **kwargs):
        try:
            return real(path, **kwargs)
        except ImageError:
            Path(path).write_bytes(good)  # the copy ends right after our read failed
            raise

    monkeypatch.setattr(batch, "load_image_file", copy_completes_meanwhile)
    assert run_batch([src], standin_model, out, OPTS).failed == 1
    monkeypatch.setattr(batch, "load_image_file", real)
    assert run_batch([src], standin_model, out, OPTS).ok == 1  # retried: what failed was not this file


def test_the_log_says_why_an_image_is_not_retried(standin_model, tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    (src / "bad.png").write_bytes(b"not a png")
    command = [sys.executable, "-m", "skinseg", "infer", src, "--model", standin_model, "-o", out]
    assert subprocess.run(command, capture_output=True, timeout=180).returncode == 1
    again = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert again.returncode == 0
    line = next(line for line in again.stdout.splitlines() if "bad.png" in line)
    assert "same file, model, options and output folder" in line and "--retry-failed" in line, line
    assert os.path.isfile(out / "results.csv")


def test_a_failed_image_that_has_not_changed_is_not_retried_until_asked(model, tmp_path):
    src = tmp_path / "src"
    write_png(src / "good.png", lesion_image())
    (src / "bad.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    assert run_cli("infer", src, "--model", model, "--output", out).returncode == 1
    again = run_cli("infer", src, "--model", model, "--output", out)
    assert again.returncode == 0, again.stdout + again.stderr  # cron does not mail the same failure every night
    assert "failed before" in again.stdout + again.stderr
    assert rows_of(out)["bad.png"]["status"] == "failed"
    forced = run_cli("infer", src, "--model", model, "--output", out, "--retry-failed")
    assert forced.returncode == 1
    write_png(src / "bad.png", lesion_image(seed=3))  # fixed: retried without being asked
    fixed = run_cli("infer", src, "--model", model, "--output", out)
    assert fixed.returncode == 0 and rows_of(out)["bad.png"]["status"] == "ok"
