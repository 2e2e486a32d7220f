"""`skinseg infer` end to end: exit codes, bad inputs, logs, lock, odd paths, options that cannot work refused before
any work."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from rich.console import Console

from skinseg.progress import InferProgress
from skinseg.runtime.batch import run_batch
from skinseg.runtime.errors import UsageError
from skinseg.runtime.options import InferOptions
from skinseg.runtime.outputs import output_lock
from tests.onnx_standins import metadata_json, odd_input_model, save
from tests.support import infer, invoke, jpeg_bytes, lesion_image, read_rows, run_cli, write_png

ROOT = Path(__file__).resolve().parents[1]


def test_folder_tree_is_mirrored_exit_0(model, tmp_path):
    src = tmp_path / "src"
    for rel in ["top.png", "a/one.png", "a/b/two.png"]:
        write_png(src / rel, lesion_image(seed=len(rel)))
    out = tmp_path / "out"
    result = infer(src, "--recursive", "--model", model, "--output", out)
    assert result.exit_code == 0, result.output
    for rel in ["top", "a/one", "a/b/two"]:
        assert (out / f"{rel}_mask.png").is_file() and (out / f"{rel}_overlay.jpg").is_file()
    stamped = result.stdout.strip().splitlines()
    assert all(re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ ", line) for line in stamped)  # ISO 8601 UTC
    lines = [line.split(" ", 1)[1] for line in stamped]
    assert "CPUExecutionProvider" in lines[0]
    assert sum(line.startswith("ok ") for line in lines) == 3 and "lesion" in lines[1]
    assert lines[-1].startswith("3 images: 3 ok, 0 failed, 0 skipped")
    assert json.loads((out / "summary.json").read_text())["ok"] == 3

    again = infer(src, "--recursive", "--model", model, "--output", out, "--log-format", "json")
    assert again.exit_code == 0
    objects = [json.loads(line) for line in again.stdout.strip().splitlines()]
    assert [o["event"] for o in objects] == ["image", "image", "image", "summary"]
    assert all(o["status"] == "skipped" and o["area_px"] > 0 for o in objects[:3]) and objects[-1]["skipped"] == 3


def bad_inputs(src: Path) -> dict[str, str | None]:
    """Every kind of awkward file; the value is the expected failure reason (None: it must succeed)."""
    src.mkdir(parents=True)
    rgb = lesion_image()
    write_png(src / "good.png", rgb)
    png = bytearray(cv2.imencode(".png", rgb)[1].tobytes())
    at = png.find(b"IDAT") + 6
    png[at : at + 16] = bytes(b ^ 0x55 for b in png[at : at + 16])
    (src / "corrupt.png").write_bytes(bytes(png))
    (src / "truncated.jpg").write_bytes(jpeg_bytes(rgb)[:400])
    (src / "empty.jpeg").write_bytes(b"")
    (src / "text.PNG").write_text("this is not an image\n")
    wide = (rgb.astype(np.uint16) * 257)[..., ::-1]
    (src / "deep16.png").write_bytes(cv2.imencode(".png", wide)[1].tobytes())
    (src / "tiff16.tif").write_bytes(cv2.imencode(".tiff", wide)[1].tobytes())
    (src / "gray.png").write_bytes(cv2.imencode(".png", rgb[..., 0])[1].tobytes())
    rgba = np.dstack([rgb[..., ::-1], np.full(rgb.shape[:2], 128, np.uint8)])
    (src / "rgba.png").write_bytes(cv2.imencode(".png", rgba)[1].tobytes())
    (src / "rotated.jpg").write_bytes(jpeg_bytes(rgb, orientation=6))
    write_png(src / "huge.png", lesion_image(160, 200))
    return {
        "good.png": None,
        "deep16.png": None,
        "tiff16.tif": None,
        "gray.png": None,
        "rgba.png": None,
        "rotated.jpg": None,
        "corrupt.png": "cannot be decoded",
        "truncated.jpg": "truncated",
        "empty.jpeg": "empty",
        "text.PNG": "not an image",
        "huge.png": "exceeds --max-pixels",
    }


def test_every_bad_input_in_one_batch_exit_1(model, tmp_path):
    expected = bad_inputs(tmp_path / "src")
    out = tmp_path / "out"
    result = infer(tmp_path / "src", "--model", model, "--output", out, "--max-pixels", 20000)
    assert result.exit_code == 1, result.output
    rows = read_rows(out)
    assert set(rows) == set(expected)
    for name, reason in expected.items():
        row = rows[name]
        if reason is None:
            assert row["status"] == "ok", (name, row["error"])
        else:
            assert row["status"] == "failed" and reason in row["error"] and name in row["error"], (name, row)
            assert f"failed  {name}" in result.stdout
    assert "WARN" not in result.output
    # Orientation: the 120×90 photo tagged "rotate 90°" gets a 90×120 mask that lines up with the turned photo.
    mask = cv2.imread(str(out / "rotated_mask.png"), cv2.IMREAD_GRAYSCALE)
    assert mask.shape == (120, 90)
    turned = np.rot90(lesion_image(), -1)[..., 0] > 127
    assert ((mask > 127) == turned).mean() > 0.98
    for name in ("gray.png", "rgba.png", "deep16.png"):
        assert rows[name]["area_px"] == rows["good.png"]["area_px"], name


def test_16bit_tiff_gives_the_same_mask_as_8bit(model, tmp_path):
    rgb = lesion_image()
    (tmp_path / "src").mkdir()
    write_png(tmp_path / "src" / "eight.png", rgb)
    wide = np.ascontiguousarray((rgb.astype(np.uint16) * 257)[..., ::-1])
    (tmp_path / "src" / "sixteen.tif").write_bytes(cv2.imencode(".tiff", wide)[1].tobytes())
    assert infer(tmp_path / "src", "--model", model, "--output", tmp_path / "out").exit_code == 0
    rows = read_rows(tmp_path / "out")
    assert rows["sixteen.tif"]["area_px"] == rows["eight.png"]["area_px"]


def test_usage_errors_exit_2(model, tmp_path):
    src = write_png(tmp_path / "a.png", lesion_image())
    (tmp_path / "empty").mkdir()
    junk = tmp_path / "junk.onnx"
    junk.write_text("not onnx")
    odd = save(odd_input_model([1, 10], metadata=metadata_json()), tmp_path / "odd.onnx")
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    cases = [
        ([tmp_path / "missing_folder", "--model", model, "--output", tmp_path / "o1"], "no such file or folder"),
        ([src, "--model", model, "--output", a_file / "sub"], "cannot be created or written"),
        ([src, "--model", junk, "--output", tmp_path / "o2"], "not a loadable ONNX model"),
        ([src, "--model", odd, "--output", tmp_path / "o3"], "4-D image batch"),
        ([src, "--model", tmp_path / "missing.onnx", "--output", tmp_path / "o4"], "missing.onnx"),
        ([src, "--model", model, "--output", tmp_path / "o5", "--scale", "huge"], "--scale"),
    ]
    for args, message in cases:
        result = infer(*args)
        assert result.exit_code == 2, (args, result.output)
        assert message in " ".join(result.stderr.split()), (message, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o2").exists() and not (tmp_path / "o3").exists()
    bad_device = infer(src, "--model", model, "--output", tmp_path / "o6", "--device", "tpu")
    assert bad_device.exit_code == 2 and "openvino" in bad_device.output


def test_locked_output_exits_2(model, tmp_path):
    src = write_png(tmp_path / "a.png", lesion_image())
    out = tmp_path / "out"
    out.mkdir()
    with output_lock(out):
        result = infer(src, "--model", model, "--output", out)
    assert result.exit_code == 2 and "another skinseg infer" in result.stderr
    assert infer(src, "--model", model, "--output", out, "--wait").exit_code == 0


def test_spaces_and_non_ascii_paths(model, tmp_path):
    src = tmp_path / "Patient Ünal 皮膚"
    write_png(src / "läsion 1.png", lesion_image())
    (src / "sub dir").mkdir()
    (src / "sub dir" / "naevus é.jpg").write_bytes(jpeg_bytes(lesion_image(seed=3)))
    out = tmp_path / "résultats finaux"
    result = infer(src, "-r", "--model", model, "--output", out, "--contours")
    assert result.exit_code == 0, result.output
    assert (out / "läsion 1_mask.png").is_file() and (out / "sub dir" / "naevus é_contours.json").is_file()
    assert set(read_rows(out)) == {"läsion 1.png", "sub dir/naevus é.jpg"}


def test_bars_on_a_terminal():
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=100)
    with InferProgress(out=console, console=console, quiet=False) as progress:
        assert progress.bars
        progress.handle({"event": "start", "total": 1, "model": "m.onnx", "provider": "CPU", "output": "o"})
        progress.handle({"event": "tiles", "index": 0, "path": "a.png", "done": 2, "total": 4})
        row = {"path": "a.png", "status": "failed", "error": "a.png: broken", "area_fraction": None, "seconds": 0.1}
        progress.handle({"event": "image_done", "index": 0, "done": 1, "total": 1, "row": row})
    assert "a.png: broken" in buf.getvalue() and "tiles" in buf.getvalue()


# --------------------------------------------------------------------------------------------------- the bundled model


def test_without_model_the_bundled_default_is_used(tmp_path):
    from skinseg.runtime.model_cache import default_model_path

    src = write_png(tmp_path / "a.png", lesion_image())
    result = infer(src, "--output", tmp_path / "out", "--quiet")
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert Path(summary["model"]) == default_model_path()


# ------------------------------------------------------------------------------------------- options that cannot work


@pytest.mark.parametrize(
    ("option", "value", "words"),
    [("--overlap", "0.999", "--overlap must be within"), ("--scale", "1e-9", "--scale"), ("--scale", "9", "--scale")],
)
def test_options_that_make_no_sense_are_refused_before_any_work(model, tmp_path, option, value, words):
    write_png(tmp_path / "src" / "a.png", lesion_image())
    result = invoke("infer", tmp_path / "src", "--model", model, "--output", tmp_path / "out", option, value)
    assert result.exit_code == 2, result.output
    assert words in result.output and not (tmp_path / "out" / "a_mask.png").exists()


def test_an_empty_output_is_refused_not_the_current_folder(model, tmp_path):
    write_png(tmp_path / "src" / "a.png", lesion_image())
    result = run_cli("infer", tmp_path / "src", "--model", model, "--output", "")
    assert result.returncode == 2 and "is empty" in result.stderr
    assert not (ROOT / "a_mask.png").exists() and not (ROOT / "results.csv").exists()


def test_wrong_options_never_reach_the_work(model, tmp_path):
    with pytest.raises(UsageError):
        run_batch([tmp_path], model, tmp_path / "o", InferOptions(threads=1, overlap=0.999))
