"""The CLI shell: help texts with examples, version, one-line errors, the train extra's absence."""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from skinseg import __version__
from skinseg.cli import app
from tests.support import ROOT

runner = CliRunner()

COMMANDS = [
    ["train"],
    ["export"],
    ["infer"],
    ["evaluate"],
    ["synth"],
    ["augment-preview"],
    ["config", "show"],
    ["config", "init"],
]


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c))
def test_every_command_has_help_with_an_example(command):
    result = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "Example: skinseg" in result.output


def test_module_entry_point_runs():
    proc = subprocess.run([sys.executable, "-m", "skinseg", "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "train" in proc.stdout


def test_config_error_is_one_line_exit_2(tmp_path):
    bad = tmp_path / "bad.config"
    bad.write_text("[model]\nlearning_rat = 0.1\n")
    result = runner.invoke(app, ["config", "show", str(bad)])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "did you mean `learning_rate`" in lines[0] and "Traceback" not in result.output


def test_config_init_then_show(tmp_path):
    path = tmp_path / "new.config"
    assert runner.invoke(app, ["config", "init", str(path)]).exit_code == 0
    assert runner.invoke(app, ["config", "init", str(path)]).exit_code == 2  # no silent overwrite
    shown = runner.invoke(app, ["config", "show", str(path)])
    assert shown.exit_code == 0 and "[model]" in shown.output


def test_train_without_tensorflow_says_how_to_install(monkeypatch, tmp_path):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorflow" else real(name, *a))
    cfg = tmp_path / "c.config"
    cfg.write_text("[model]\n")
    result = runner.invoke(app, ["train", "--config", str(cfg)])
    assert result.exit_code == 2
    assert "pip install 'skinseg-edge[train]'" in result.output and "pip install -e '.[train]'" in result.output


def test_synth_command_writes_pairs(tmp_path):
    result = runner.invoke(app, ["synth", str(tmp_path / "s"), "--count", "2", "--size", "64x48", "--quiet"])
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "s" / "images").iterdir())) == 2
    bad = runner.invoke(app, ["synth", str(tmp_path / "t"), "--size", "64by48"])
    assert bad.exit_code == 2 and "64by48" in bad.output


def test_export_check_without_onnx_says_what_to_install(monkeypatch, tmp_path):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnx" else real(name, *a))
    model = tmp_path / "m.onnx"
    model.write_bytes(b"whatever")
    result = runner.invoke(app, ["export", "--check", str(model)])
    assert result.exit_code == 2 and "pip install onnx" in result.output


# ------------------------------------------------------------------------------------------------- unwritable outputs


@pytest.mark.parametrize("command", ["synth", "augment-preview"])
def test_unwritable_outputs_are_one_line_errors(tmp_path, command):
    target = tmp_path / "file"
    target.write_text("x")
    if command == "synth":
        result = runner.invoke(app, ["synth", str(target / "out"), "--count", "2"])
    else:
        cfg = ROOT / "configs" / "demo.config"
        result = runner.invoke(app, ["augment-preview", str(cfg), "--count", "2", "--output", str(target / "g.png")])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
