"""`skinseg evaluate` says what is wrong with the folders it was given: an image with two masks is one row saying so
(not masks "without an image" beside it), and a folder that does not exist is named by its option. Names that are not
UTF-8 are reported, an output folder inside the images folder is not read back as images, and a device that is not
there leaves no empty output folder."""

from __future__ import annotations

import csv
import json
import os

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from skinseg.cli import app
from tests.support import invoke, lesion_image, png_bytes, write_png

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


# -------------------------------------------------------------------------------------------------- names and folders


def test_evaluate_reports_names_that_are_not_utf8(model, tmp_path):
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


def test_evaluate_output_inside_the_images_folder_is_not_read_back(model, tmp_path):
    images, masks = tmp_path / "data" / "images", tmp_path / "data" / "masks"
    write_png(images / "a.png", lesion_image())
    truth = (lesion_image()[..., 0] > 127).astype(np.uint8) * 255
    masks.mkdir(parents=True)
    cv2.imwrite(str(masks / "a.png"), truth)
    for out in (images / "ev", images / "ev", images, images):  # a folder inside the images folder, and itself
        result = invoke("evaluate", "--model", model, "--images", images, "--masks", masks, "--output", out, "--quiet")
        assert result.exit_code == 0, result.output
        summary = json.loads((out / "summary.json").read_text())
        assert summary["n_images"] == 1 and summary["jaccard"]["mean"] == pytest.approx(1.0)


def test_evaluate_on_a_missing_device_leaves_no_empty_folder(model, tmp_path):
    images, masks = tmp_path / "images", tmp_path / "masks"
    write_png(images / "a.png", lesion_image())
    write_png(masks / "a.png", lesion_image())
    result = invoke(
        "evaluate",
        "--model",
        model,
        "--images",
        images,
        "--masks",
        masks,
        "--output",
        tmp_path / "ev",
        "--device",
        "cuda",
    )
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has CUDA")
    assert result.exit_code == 2 and "cuda" in result.output.lower()
    assert not (tmp_path / "ev").exists()


def _pairs(root, *stems):
    images, masks = root / "images", root / "masks"
    masks.mkdir(parents=True, exist_ok=True)
    for stem in stems:
        write_png(images / f"{stem}.png", lesion_image())
        cv2.imwrite(str(masks / f"{stem}.png"), truth())
    return images, masks


def _rows(out):
    with open(out / "results.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_two_images_of_one_stem_are_refused_not_scored_twice(standin_model, tmp_path):
    images, masks = _pairs(tmp_path, "a", "b")
    cv2.imwrite(str(images / "a.jpg"), cv2.cvtColor(lesion_image(seed=3), cv2.COLOR_RGB2BGR))
    result = evaluate(standin_model, images, masks, tmp_path / "ev")
    assert result.exit_code == 1, result.output
    text = " ".join(result.output.split())
    assert "the stem a has several images (a.jpg, a.png) for one mask (a.png)" in text, text
    rows = _rows(tmp_path / "ev")
    assert sorted((r["stem"], r["status"]) for r in rows) == [("a", "skipped"), ("a", "skipped"), ("b", "ok")]
    assert json.loads((tmp_path / "ev" / "summary.json").read_text())["n_images"] == 1  # a is in no mean


def test_a_second_evaluation_into_the_same_folder_stops_at_once(standin_model, tmp_path):
    from skinseg.runtime.outputs import output_lock

    images, masks = _pairs(tmp_path, "a")
    out = tmp_path / "ev"
    out.mkdir()
    with output_lock(out, command="evaluate"):
        result = evaluate(standin_model, images, masks, out)
        assert result.exit_code == 2, result.output
        text = " ".join(result.output.split())
        assert f"another skinseg evaluate (pid {os.getpid()}) is writing" in text and "--wait" not in text, text
        assert not (out / "results.csv").exists()
    with output_lock(out):  # an infer there too
        result = evaluate(standin_model, images, masks, out)
        assert result.exit_code == 2 and "another skinseg infer" in result.output
    assert evaluate(standin_model, images, masks, out).exit_code == 0


@pytest.mark.parametrize("name", ["results.csv", "summary.json", "worst.png"])
def test_a_report_skinseg_did_not_write_is_not_replaced(standin_model, tmp_path, name):
    images, masks = _pairs(tmp_path, "a")
    out = tmp_path / "ev"
    out.mkdir()
    theirs = {"results.csv": b"patient,score\n1,0.9\n", "summary.json": b'{"mine": 1}\n'}.get(name, png_bytes(truth()))
    (out / name).write_bytes(theirs)
    result = evaluate(standin_model, images, masks, out)
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert f"{out / name}: this {name} was not written by skinseg evaluate" in text, text
    assert (out / name).read_bytes() == theirs and sorted(p.name for p in out.iterdir()) == [".skinseg.lock", name]
    if name == "worst.png":  # a run that draws no picture leaves it be
        result = runner.invoke(app, ["evaluate", "--model", str(standin_model), "--images", str(images), "--masks",
                                     str(masks), "--output", str(out), "--quiet", "--worst", "0"])  # fmt: skip
        assert result.exit_code == 0, result.output
        assert (out / name).read_bytes() == theirs


def test_a_rerun_that_draws_no_picture_removes_the_earlier_one(standin_model, tmp_path):
    images, masks = _pairs(tmp_path, "a")
    out = tmp_path / "ev"
    assert evaluate(standin_model, images, masks, out).exit_code == 0
    assert (out / "worst.png").is_file()
    args = ["evaluate", "--model", str(standin_model), "--images", str(images), "--masks", str(masks), "--output",
            str(out), "--quiet"]  # fmt: skip
    result = runner.invoke(app, [*args, "--worst", "0"])
    assert result.exit_code == 0 and "wrote results.csv, summary.json to" in " ".join(result.output.split())
    assert not (out / "worst.png").exists()
    assert evaluate(standin_model, images, masks, out).exit_code == 0 and (out / "worst.png").is_file()
    (masks / "a.png").unlink()  # nothing scored: no picture either
    assert evaluate(standin_model, images, masks, out).exit_code == 1
    assert not (out / "worst.png").exists()


@pytest.mark.parametrize("folder", ["images", "masks"])
def test_evaluate_output_in_the_images_or_masks_folder_is_not_read_back(standin_model, tmp_path, folder):
    images, masks = _pairs(tmp_path, "a")
    out = tmp_path / folder
    for out in (out, out, tmp_path / "ev"):  # and a report left there by an earlier run is not read either
        result = evaluate(standin_model, images, masks, out)
        assert result.exit_code == 0, result.output
        summary = json.loads((out / "summary.json").read_text())
        assert summary["n_images"] == 1 and summary["n_errors"] == 0 and (out / "worst.png").is_file()


def test_an_interrupt_says_so(standin_model, tmp_path, monkeypatch):
    import skinseg.data.evaluate as core

    def interrupted(segment, pairs, *, on_event=None, **kwargs):
        on_event({"event": "image", "done": 1, "total": 2})
        raise KeyboardInterrupt

    monkeypatch.setattr(core, "evaluate", interrupted)
    images, masks = _pairs(tmp_path, "a", "b")
    result = evaluate(standin_model, images, masks, tmp_path / "ev")
    assert result.exit_code == 130
    assert "interrupted after 1 of 2 image(s): no report written" in " ".join(result.output.split())
    assert not (tmp_path / "ev" / "results.csv").exists()


def test_sigterm_says_so_like_ctrl_c(standin_model, tmp_path, monkeypatch):
    """cron's timeout or systemd's stop sends SIGTERM: it exited 130 without a word."""
    import os
    import signal

    import skinseg.data.evaluate as core

    def terminated(segment, pairs, *, on_event=None, **kwargs):
        on_event({"event": "image", "done": 1, "total": 2})
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(core, "evaluate", terminated)
    images, masks = _pairs(tmp_path, "a", "b")
    before = signal.getsignal(signal.SIGTERM)
    result = evaluate(standin_model, images, masks, tmp_path / "ev")
    assert result.exit_code == 130
    assert "interrupted after 1 of 2 image(s)" in " ".join(result.output.split())
    assert signal.getsignal(signal.SIGTERM) == before  # the handler is the process's again
