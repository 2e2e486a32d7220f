"""Where `skinseg infer` writes and what it never touches: one sub-folder per source when two share names, files it
did not write are never overwritten, nothing is written outside --output, and every image keeps a mask however wide.

Elsewhere: the output paths one image gets and the symlinks that would lead out (``tests/test_batch.py``), the
atomic writer (``tests/test_atomic.py``), files killed runs leave (``tests/test_crash_safety.py``).
"""

from __future__ import annotations

import os

import cv2
import numpy as np

from skinseg.runtime.batch import run_batch
from skinseg.runtime.options import InferOptions
from skinseg.runtime.outputs import is_ours
from tests.support import lesion_image, rows_of, run_cli, write_png

OPTS = InferOptions(threads=1)


def test_two_folders_with_the_same_names_get_a_sub_folder_each(model, tmp_path):
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
    # the second alone later: another photo than the one c_mask.png was made from; neither "skipped" nor redone
    # over the first photo's mask (tests/test_batch.py: the same name from another folder)
    mask = (tmp_path / "o2" / "c_mask.png").read_bytes()
    assert run_batch([f2], model, tmp_path / "o2", OPTS).failed == 1
    assert (tmp_path / "o2" / "c_mask.png").read_bytes() == mask


def test_output_in_the_input_folder_never_overwrites_a_file_skinseg_did_not_write(model, tmp_path):
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


def test_nothing_is_written_outside_the_output_and_onnxruntime_stays_quiet(model, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    write_png(tmp_path / "src" / "a.png", lesion_image())
    env = {**os.environ, "HOME": str(home), "XDG_CACHE_HOME": str(home / ".cache")}
    result = run_cli("infer", tmp_path / "src", "--model", model, "--output", tmp_path / "out", "--quiet", env=env)
    assert result.returncode == 0, result.stderr
    assert list(home.rglob("*")) == []
    home.chmod(0o500)  # an unwritable HOME: no warning from onnxruntime either
    try:
        again = run_cli("infer", tmp_path / "src", "--model", model, "--output", tmp_path / "o2", "--quiet", env=env)
    finally:
        home.chmod(0o700)
    assert again.returncode == 0 and again.stderr == ""  # the plain lines (stdout) only, no onnxruntime warning
    assert list(home.rglob("*")) == []


def test_an_image_wider_than_jpeg_allows_keeps_its_mask_and_a_bounded_overlay(model, tmp_path):
    wide = np.zeros((12, 66000, 3), np.uint8)
    wide[:, 1000:2000] = (230, 60, 50)
    write_png(tmp_path / "src" / "wide.png", wide)
    summary = run_batch([tmp_path / "src"], model, tmp_path / "out", InferOptions(threads=1, scale="native"))
    assert summary.ok == 1, rows_of(tmp_path / "out")
    mask = cv2.imread(str(tmp_path / "out" / "wide_mask.png"), cv2.IMREAD_GRAYSCALE)
    assert mask.shape == (12, 66000) and (mask[:, 1000:2000] > 0).all() and not mask[:, 3000:].any()
    overlay = cv2.imread(str(tmp_path / "out" / "wide_overlay.jpg"))
    assert overlay is not None and max(overlay.shape[:2]) <= 2048
