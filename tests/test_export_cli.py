"""`skinseg export` on a real (tiny) training run: files, metadata from the run, variants, checks, bad input."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

pytest.importorskip("tensorflow")

import onnxruntime as ort  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from skinseg.cli import app  # noqa: E402
from skinseg.data.synth import write_dataset  # noqa: E402
from skinseg.runtime.metadata import METADATA_KEY, parse_metadata  # noqa: E402

pytestmark = pytest.mark.train
runner = CliRunner()

CONFIG = """\
[model]
image_width = 64
image_height = 64
base_filters = 4
num_layers = 3
dilation = (2, 2)
normalization = True
dropout_rate = 0.05
learning_rate = 0.01
metrics = ["dice_coef"]

[train]
epochs = 3
batch_size = 4
steps_per_epoch = 4
model_dir = "run"
image_datapath = "data/images"
mask_datapath = "data/masks"
valid_ratio = 0.3
seed = 1
"""


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("export")
    write_dataset(root / "data", count=12, size=(80, 64), seed=2)
    (root / "c.config").write_text(CONFIG)
    result = runner.invoke(app, ["train", "--config", str(root / "c.config"), "--quiet"])
    assert result.exit_code == 0, result.output
    return root / "run"


@pytest.fixture(scope="module")
def exported(run_dir):
    """The run exported once with both variants: (run directory, CLI result)."""
    result = runner.invoke(app, ["export", str(run_dir), "--quantize", "int8", "--quantize", "fp16"])
    assert result.exit_code == 0, result.output
    return run_dir, result


def test_export_run_writes_verified_self_describing_files(exported):
    run_dir, result = exported
    assert "max |keras - onnx|" in result.output
    fp32 = run_dir / "model.onnx"
    for path in (fp32, run_dir / "model.int8.onnx", run_dir / "model.fp16.onnx"):
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        meta = parse_metadata(session.get_modelmeta().custom_metadata_map[METADATA_KEY])
        assert meta.tile_size == (64, 64)
        assert (meta.train_scale.mode, meta.train_scale.value) == ("short_side", 64)  # whole images, see strategies
        assert meta.training_data["train_images"] + meta.training_data["valid_images"] == 12
        assert "val_loss" in meta.validation_metrics
        checked = runner.invoke(app, ["export", "--check", str(path)])
        assert checked.exit_code == 0, checked.output
    diff = float(result.output.split("max |keras - onnx| = ")[1].split()[0])
    assert diff <= 1e-4


def test_check_reports_a_broken_file_in_one_line(exported, tmp_path):
    run_dir, _ = exported
    broken = tmp_path / "broken.onnx"
    broken.write_bytes((run_dir / "model.onnx").read_bytes()[:2000])
    result = runner.invoke(app, ["export", "--check", str(broken)])
    assert result.exit_code == 1
    assert "broken.onnx" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--opset", "9"], "opset"),
        (["--output", "/proc/nope/model.onnx"], "model.onnx"),
    ],
)
def test_bad_options_are_usage_errors_and_leave_nothing(run_dir, tmp_path, args, fragment):
    before = set(os.listdir(run_dir))
    result = runner.invoke(app, ["export", str(run_dir), *args])
    assert result.exit_code == 2, result.output
    assert fragment in result.output and "Traceback" not in result.output
    assert set(os.listdir(run_dir)) == before


def test_missing_and_corrupt_models_are_clear_errors(tmp_path):
    empty = tmp_path / "empty_run"
    empty.mkdir()
    result = runner.invoke(app, ["export", str(empty)])
    assert result.exit_code == 2 and "best_model.keras" in result.output
    corrupt = tmp_path / "bad.keras"
    corrupt.write_bytes(b"PK\x03\x04 not really a zip")
    result = runner.invoke(app, ["export", str(corrupt), "--output", str(tmp_path / "out.onnx")])
    assert result.exit_code == 2 and "bad.keras" in result.output
    assert not (tmp_path / "out.onnx").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_metadata_json_is_plain_json(exported):
    run_dir, _ = exported
    session = ort.InferenceSession(str(run_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    doc = json.loads(session.get_modelmeta().custom_metadata_map[METADATA_KEY])
    assert doc["format_version"] == 1 and doc["input_name"] == "image" and doc["export_options"]["opset"] == 17


def test_strict_refuses_a_variant_that_disagrees_with_fp32(run_dir, tmp_path, monkeypatch):
    import skinseg.exporters.from_run as from_run

    monkeypatch.setattr(from_run, "AGREEMENT_WARN", 1.01)  # no variant can agree this well: every one is refused
    out = tmp_path / "m.onnx"
    result = runner.invoke(app, ["export", str(run_dir), "--output", str(out), "--quantize", "int8", "--strict"])
    assert result.exit_code == 2 and "--strict" in result.output
    # with one --quantize, --output names the int8 file: refused, it is removed; the fp32 model is kept beside it
    assert (tmp_path / "m.fp32.onnx").is_file() and not out.exists()
    lenient = runner.invoke(app, ["export", str(run_dir), "--output", str(out), "--quantize", "int8"])
    assert lenient.exit_code == 0 and "warning" in lenient.output and out.is_file()
    import onnx

    assert any(node.op_type == "QuantizeLinear" for node in onnx.load(str(out)).graph.node)  # the int8 model
