"""Reliability round 2 (issue 12), the weaker findings and the cron and first-use ones: one test each.

The command-line tests run the real `skinseg` (in a subprocess where the process matters: pipes, HOME, exit codes)
with a stand-in ONNX model whose mask is ``red > 127``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from typer.testing import CliRunner

from skinseg.cli import app
from skinseg.runtime.batch import InferOptions, run_batch
from skinseg.runtime.errors import ModelError, UsageError
from skinseg.runtime.segmenter import Segmenter
from tests.onnx_standins import IR_VERSION, OPSET, identity_model, metadata_json, save
from tests.support import ROOT, lesion_image, rows_of, run_cli, write_png

OPTS = InferOptions(threads=1)
runner = CliRunner()


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args])


# ------------------------------------------------------------------------------------------ model metadata


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"tile_size": [12000, 12000]}, "tile_size must be two integers from 1 to 4096"),
        ({"tile_size": ["64", "64"]}, "tile_size must be two integers"),
        ({"train_scale": {"mode": "long_side", "value": 1e300}}, "from 32 to 100000 px"),
        ({"train_scale": {"mode": "factor", "value": 1e-9}}, "scale"),
        ({"value_range": [0, 0]}, "value_range"),
        ({"value_range": [0, float("nan")]}, "value_range"),
        ({"color_order": "bgrx"}, "color_order"),
    ],
)
def test_metadata_is_checked_once_at_load_with_the_rules_of_the_options(tmp_path, change, words):
    text = json.dumps({**json.loads(metadata_json((64, 64))), **change})
    path = save(identity_model(metadata=text), tmp_path / "m.onnx")
    with pytest.raises(ModelError, match=words) as caught:
        Segmenter(path)
    assert "re-export" in str(caught.value) and str(path) in str(caught.value)


def test_a_model_whose_output_has_height_and_width_swapped_is_refused(tmp_path):
    """Invisible on square tiles (every pixel lands somewhere), found by one wide probe tile at load."""
    nodes = [
        helper.make_node("Transpose", ["image"], ["t"], perm=[0, 2, 1, 3]),
        helper.make_node("ReduceMax", ["t"], ["r"], axes=[3], keepdims=1),
        helper.make_node("Mul", ["r", "k"], ["mask"]),
    ]
    graph = helper.make_graph(
        nodes,
        "swapped",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", "H", "W", 3])],
        [helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["N", "W", "H", 1])],
        [helper.make_tensor("k", TensorProto.FLOAT, [], [1 / 255])],
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = IR_VERSION
    helper.set_model_props(m, {"skinseg": metadata_json((64, 64))})
    path = tmp_path / "swapped.onnx"
    onnx.save(m, str(path))
    with pytest.raises(ModelError, match="height and width swapped"):
        Segmenter(path)
    assert OPSET >= 13


# ------------------------------------------------------------------------------------------ options


def test_a_tile_larger_than_the_working_image_is_capped(model):
    seg = Segmenter(model, tile=4000, scale="native")
    assert seg._tile_for((100, 90)) == (128, 128)  # the working image rounded up to 64 px, never below the model's
    assert seg._tile_for((5000, 5000)) == (4000, 4000)  # a large image keeps the tile asked for


@pytest.mark.parametrize(
    ("option", "value", "words"),
    [("--overlap", "0.999", "--overlap must be within"), ("--scale", "1e-9", "--scale"), ("--scale", "9", "--scale")],
)
def test_options_that_make_no_sense_are_refused_before_any_work(model, tmp_path, option, value, words):
    write_png(tmp_path / "src" / "a.png", lesion_image())
    result = invoke("infer", tmp_path / "src", "--model", model, "--output", tmp_path / "out", option, value)
    assert result.exit_code == 2, result.output
    assert words in result.output and not (tmp_path / "out" / "a_mask.png").exists()


def test_more_threads_than_cores_are_capped_with_a_note(model, tmp_path):
    write_png(tmp_path / "src" / "a.png", lesion_image())
    result = run_cli("infer", tmp_path / "src", "--model", model, "--output", tmp_path / "out", "--threads", "1000")
    assert result.returncode == 0, result.stderr
    assert f"--threads 1000 is more than this machine's {os.cpu_count()} cores" in result.stderr


def test_an_out_of_memory_message_is_kept_whole():
    from skinseg.runtime.segmenter import _first_line

    raw = "[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Failed to allocate memory for requested buffer of size 98765"
    said = _first_line(RuntimeError(raw + " " + "x" * 400 + "\nstack"))
    assert said == "out of memory: use a smaller --tile or --batch-size, or free memory"
    long = " ".join(["word"] * 200)
    assert _first_line(RuntimeError(long)).endswith("word …") and len(_first_line(RuntimeError(long))) <= 300


# ------------------------------------------------------------------------------------------ paths and names


def test_an_empty_output_is_refused_not_the_current_folder(model, tmp_path):
    write_png(tmp_path / "src" / "a.png", lesion_image())
    result = run_cli("infer", tmp_path / "src", "--model", model, "--output", "")
    assert result.returncode == 2 and "is empty" in result.stderr
    assert not (ROOT / "a_mask.png").exists() and not (ROOT / "results.csv").exists()


def test_a_name_at_the_file_system_limit_is_segmented(model, tmp_path):
    name = "n" * 240 + ".png"
    write_png(tmp_path / "src" / name, lesion_image())
    summary = run_batch([tmp_path / "src"], model, tmp_path / "out", OPTS)
    assert summary.ok == 1, rows_of(tmp_path / "out")
    assert (tmp_path / "out" / ("n" * 240 + "_mask.png")).is_file()
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.endswith(".tmp")]


def test_a_newline_in_a_file_name_cannot_forge_a_log_line(model, tmp_path):
    name = "a.png\n2026-01-01T00:00:00 ok  forged.png"
    src = tmp_path / "src"
    write_png(src / (name + ".png"), lesion_image())
    result = run_cli("infer", src, "--model", model, "--output", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines() + result.stderr.splitlines()
    assert not any(line.startswith("2026-01-01") for line in lines)
    assert any("a.png\\n2026-01-01" in line for line in lines)


def test_cells_that_a_spreadsheet_would_run_are_escaped_and_read_back(model, tmp_path):
    names = ["=1+1.png", "+cmd.png", "-x.png", "@sum.png"]
    for name in names:
        write_png(tmp_path / "src" / name, lesion_image())
    run_batch([tmp_path / "src"], model, tmp_path / "out", OPTS)
    raw = (tmp_path / "out" / "results.csv").read_text(encoding="utf-8")
    for name in names:
        assert f"'{name}" in raw and f",{name}" not in raw
    assert set(rows_of(tmp_path / "out")) == set(names)


# ------------------------------------------------------------------------------------------ signals and pipes


def test_a_closed_stdout_does_not_stop_the_work(model, tmp_path):
    """`skinseg infer ... | head -1`: head exits after one line; every image is still done, exit 0."""
    src = tmp_path / "src"
    for i in range(6):
        write_png(src / f"i{i}.png", lesion_image(seed=i))
    out = tmp_path / "out"
    command = f"{sys.executable} -m skinseg infer {src} --model {model} --output {out} --threads 1 | head -1"
    done = subprocess.run(
        ["bash", "-o", "pipefail", "-c", command], capture_output=True, text=True, timeout=180, cwd=ROOT
    )
    assert len(done.stdout.splitlines()) == 1
    assert len(list(out.glob("*_mask.png"))) == 6
    assert json.loads((out / "summary.json").read_text())["ok"] == 6
    assert done.returncode == 0, done.stderr


# ------------------------------------------------------------------------------------------ nothing outside --output


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


# ------------------------------------------------------------------------------------------ wasted work


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


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a folder whatever its mode")
def test_an_unreadable_sub_folder_is_a_failed_row_not_a_silence(model, tmp_path):
    src = tmp_path / "src"
    write_png(src / "a.png", lesion_image())
    write_png(src / "locked" / "b.png", lesion_image())
    (src / "locked").chmod(0)
    try:
        summary = run_batch([src], model, tmp_path / "out", OPTS, recursive=True)
    finally:
        (src / "locked").chmod(0o700)
    rows = rows_of(tmp_path / "out")
    assert summary.ok == 1 and summary.failed == 1
    assert rows["locked/"]["status"] == "failed" and "ermission" in rows["locked/"]["error"]


def test_an_unreadable_sub_folder_row_from_discovery(model, tmp_path, monkeypatch):
    """The same finding where the test runs as root: the folder's listing fails as it would for a user."""
    import skinseg.runtime.inputs as inputs

    src = tmp_path / "src"
    write_png(src / "a.png", lesion_image())
    write_png(src / "locked" / "b.png", lesion_image())
    real = os.scandir

    def scandir(path):
        if os.fspath(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real(path)

    monkeypatch.setattr(inputs.os, "scandir", scandir)
    summary = run_batch([src], model, tmp_path / "out", OPTS, recursive=True)
    rows = rows_of(tmp_path / "out")
    assert (summary.ok, summary.failed) == (1, 1)
    assert rows["locked/"]["status"] == "failed" and "Permission denied" in rows["locked/"]["error"]


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


# ------------------------------------------------------------------------------------------ cron and first use


def test_an_empty_folder_is_exit_0_with_one_line_and_a_missing_one_exit_2(model, tmp_path):
    (tmp_path / "empty").mkdir()
    result = run_cli("infer", tmp_path / "empty", "--model", model, "--output", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    assert "no images in" in result.stdout + result.stderr
    assert len((result.stdout + result.stderr).strip().splitlines()) == 1
    missing = run_cli("infer", tmp_path / "nowhere", "--model", model, "--output", tmp_path / "out")
    assert missing.returncode == 2 and "no such file or folder" in missing.stderr


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


def test_log_lines_carry_timestamps_and_counts_read_right(model, tmp_path):
    write_png(tmp_path / "src" / "a.png", lesion_image())
    first = run_cli("infer", tmp_path / "src", "--model", model, "--output", tmp_path / "out")
    text = first.stdout + first.stderr
    assert "1 image " in text and "1 images" not in text
    lines = [line for line in text.splitlines() if line.strip()]
    assert all(line[:4].isdigit() and line[10] == "T" for line in lines), lines
    again = run_cli("infer", tmp_path / "src", "--model", model, "--output", tmp_path / "out", "--log-format", "json")
    events = [json.loads(line) for line in again.stdout.splitlines() if line.strip()]
    assert events and all("T" in e["time"] for e in events)
    assert "MP/s" not in again.stdout + again.stderr  # nothing was processed: no speed to report


@pytest.mark.parametrize("command", ["train", "export", "infer", "evaluate", "config"])
def test_help_keeps_section_names_and_examples_name_files_that_exist(command):
    result = invoke(command, "--help") if command != "config" else invoke("config", "show", "--help")
    assert result.exit_code == 0
    text = result.output
    if command == "train":
        assert "[train]" in text
    for word in text.split():
        if word.startswith("configs/") and word.endswith(".config"):
            assert (ROOT / word).is_file(), word


def test_q_means_quiet_everywhere():
    import re

    for command in ("infer", "evaluate", "export", "train"):
        text = re.sub(r"\x1b\[[0-9;]*m", "", invoke(command, "--help").output)
        for line in text.splitlines():
            if re.search(r"(^|[\s,│])-q\b", line):
                assert "--quiet" in line, (command, line)
    assert "-q" not in re.sub(r"\x1b\[[0-9;]*m", "", invoke("export", "--help").output).split("--quantize")[1][:30]


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ('optimizer = "SGD"', "optimizer"),
        ('model = "Foo"', "model"),
    ],
)
def test_config_values_train_would_reject_are_errors_at_load_with_file_and_line(tmp_path, line, words):
    cfg = tmp_path / "c.config"
    cfg.write_text(f"[model]\nimage_width = 64\nimage_height = 64\n{line}\n")
    result = invoke("config", "show", cfg)
    assert result.exit_code == 2, result.output
    assert f"{cfg}:4" in result.output.replace("\n", "") and words in result.output


def test_lowercase_true_suggests_true(tmp_path):
    cfg = tmp_path / "c.config"
    cfg.write_text("[augmentor]\nhflip = true\n")
    result = invoke("config", "show", cfg)
    assert result.exit_code == 2 and "True" in result.output


def test_a_keras_model_given_to_infer_says_to_export_it(tmp_path):
    keras_file = tmp_path / "best_model.keras"
    keras_file.write_bytes(b"PK\x03\x04 not really")
    write_png(tmp_path / "src" / "a.png", lesion_image())
    result = invoke("infer", tmp_path / "src", "--model", keras_file, "--output", tmp_path / "out")
    assert result.exit_code == 2 and "skinseg export" in result.output
    assert not (tmp_path / "out").exists()


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


def test_wrong_options_never_reach_the_work(model, tmp_path):
    with pytest.raises(UsageError):
        run_batch([tmp_path], model, tmp_path / "o", InferOptions(threads=1, overlap=0.999))
