"""`skinseg evaluate` says what is wrong with the folders it was given: an image with two masks is one row saying so
(not masks "without an image" beside it), and a folder that does not exist is named by its option."""

from __future__ import annotations

import csv

import cv2
import numpy as np
from typer.testing import CliRunner

from skinseg.cli import app
from tests.support import lesion_image, write_png

runner = CliRunner()


def truth() -> np.ndarray:
    return (lesion_image()[..., 0] > 127).astype(np.uint8) * 255


def evaluate(model, images, masks, out):
    return runner.invoke(
        app, ["evaluate", "--model", str(model), "--images", str(images), "--masks", str(masks), "--output", str(out),
              "--quiet"],
    )  # fmt: skip


def test_an_image_with_two_masks_is_one_row_that_says_so(standin_model, tmp_path):
    images, masks = tmp_path / "images", tmp_path / "masks"
    write_png(images / "X.png", lesion_image())
    write_png(images / "Y.png", lesion_image(seed=1))
    masks.mkdir()
    for name in ("X.png", "X_segmentation.png", "Y.png"):
        cv2.imwrite(str(masks / name), truth())
    result = evaluate(standin_model, images, masks, tmp_path / "ev")
    assert result.exit_code == 1, result.output
    assert "without an image" not in result.output, result.output
    assert "several masks match (X.png, X_segmentation.png)" in result.output.replace("\n", "")
    with open(tmp_path / "ev" / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and {r["stem"] for r in rows} == {"X", "Y"}, rows


def test_a_missing_folder_is_named_by_its_option_not_a_config(standin_model, tmp_path):
    masks = tmp_path / "masks"
    masks.mkdir()
    result = evaluate(standin_model, tmp_path / "nowhere", masks, tmp_path / "ev")
    assert result.exit_code == 2
    text = " ".join(result.output.split())
    assert "--images" in text and "nowhere" in text and "config" not in text, text
    result = evaluate(standin_model, masks, tmp_path / "no-masks", tmp_path / "ev")
    assert result.exit_code == 2 and "--masks" in result.output and "config" not in result.output
    assert not (tmp_path / "ev").exists()
