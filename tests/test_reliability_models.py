"""Bad model files: one clear error each, from `skinseg infer` (exit 2, one line, no traceback, nothing written)
and from `skinseg export --check` (exit 1, an ERROR line naming the problem, no traceback). No TensorFlow needed.

Already covered elsewhere: a text file and a [1, 10] input via `skinseg infer`
(``tests/test_infer_cli.py::test_usage_errors_exit_2``); the same problems at the Segmenter level
(``tests/test_segmenter.py::test_bad_model_files``, ``test_wrong_input_shapes``, ``test_bad_metadata_and_options``);
truncated/noise/metadata-less exports in ``check_model``
(``tests/test_export.py::test_check_model_reports_broken_files``,
needs TensorFlow).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper
from typer.testing import CliRunner

from skinseg.cli import app
from tests.onnx_standins import _finish, identity_model, metadata_json, odd_input_model, save
from tests.support import block_image, png_bytes

runner = CliRunner()


def float_output_model(shape: list, out_type: int = TensorProto.FLOAT) -> object:
    """An image-shaped input whose output is cast to another type (here: a float64 'probability')."""
    graph = helper.make_graph(
        [helper.make_node("Cast", ["image"], ["mask"], to=out_type)],
        "cast",
        [helper.make_tensor_value_info("image", TensorProto.UINT16, shape)],
        [helper.make_tensor_value_info("mask", out_type, shape)],
    )
    return _finish(graph, metadata_json((64, 64)))


# name -> (how to make the file, fragment the infer error must contain, fragment the check ERROR must contain)
CASES = {
    "not_onnx": (
        lambda p: p.write_text("this is a README, not a model\n"),
        "not a loadable ONNX model",
        "not a readable",
    ),
    "random_bytes": (
        lambda p: p.write_bytes(np.random.default_rng(3).bytes(5000)),
        "not a loadable ONNX model",
        "not a readable ONNX",
    ),
    "truncated": (
        lambda p: p.write_bytes(identity_model(metadata=metadata_json()).SerializeToString()[:120]),
        "not a loadable ONNX model",
        "not a readable ONNX",
    ),
    "empty": (lambda p: p.write_bytes(b""), "not a loadable ONNX model", "empty"),
    "rank3_input": (
        lambda p: save(odd_input_model(["N", "H", "W"], metadata=metadata_json()), p),
        "rank 3",
        "must be a 4-D NHWC 3-channel image",
    ),
    "four_channels": (
        lambda p: save(odd_input_model(["N", "H", "W", 4], metadata=metadata_json()), p),
        "3-channel",
        "must be a 4-D NHWC 3-channel image",
    ),
    "nchw_one_channel": (
        lambda p: save(odd_input_model(["N", 1, "H", "W"], metadata=metadata_json(layout="nchw")), p),
        "3-channel",
        "must be a 4-D NCHW 3-channel image",
    ),
    "uint16_input": (
        lambda p: save(float_output_model(["N", "H", "W", 3]), p),
        "tensor(uint16)",
        "must be float32",
    ),
    "invalid_json_metadata": (
        lambda p: save(identity_model(metadata='{"format_version": 1, "tile_size": [64, 64'), p),
        "skinseg metadata is not valid JSON",
        "skinseg metadata is not valid JSON",
    ),
    "metadata_not_an_object": (
        lambda p: save(identity_model(metadata="[1, 2, 3]"), p),
        "must be a JSON object",
        "must be a JSON object",
    ),
    "unknown_version": (
        lambda p: save(identity_model(metadata=metadata_json(format_version=2)), p),
        "format_version 2 is not supported",
        "format_version 2 is not supported",
    ),
    "version_as_string": (
        lambda p: save(identity_model(metadata=metadata_json(format_version="1")), p),
        "format_version '1' is not supported",
        "format_version '1' is not supported",
    ),
}


@pytest.fixture
def image(tmp_path) -> Path:
    path = tmp_path / "a.png"
    path.write_bytes(png_bytes(block_image()))
    return path


def make(tmp_path: Path, case: str) -> Path:
    path = tmp_path / f"{case}.onnx"
    CASES[case][0](path)
    return path


@pytest.mark.parametrize("case", CASES)
def test_infer_with_a_bad_model_is_one_line_exit_2(case, tmp_path, image):
    model = make(tmp_path, case)
    out = tmp_path / "out"
    result = runner.invoke(app, ["infer", str(image), "--model", str(model), "--output", str(out), "--threads", "1"])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    message = " ".join(result.stderr.split())
    assert model.name in message and CASES[case][1] in message, message
    assert "Traceback" not in result.output and result.stdout == ""
    assert not out.exists()  # the model is checked before the output folder is touched


@pytest.mark.parametrize("case", CASES)
def test_export_check_names_the_problem(case, tmp_path):
    model = make(tmp_path, case)
    result = runner.invoke(app, ["export", "--check", str(model)])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("ERROR")]
    assert errors, result.output
    assert model.name in errors[0] and CASES[case][2] in errors[0], errors


@pytest.mark.parametrize("case", ["rank3_input", "four_channels"])
def test_export_check_gives_one_error_for_a_bad_input(case, tmp_path):
    result = runner.invoke(app, ["export", "--check", str(make(tmp_path, case))])
    errors = [line for line in result.stderr.splitlines() if line.startswith("ERROR")]
    assert len(errors) == 1, errors


def test_a_good_model_passes_both(tmp_path, image):
    """The control: the same helpers with a valid model succeed (so the failures above are the model's)."""
    model = save(identity_model(metadata=metadata_json((64, 64))), tmp_path / "good.onnx")
    checked = runner.invoke(app, ["export", "--check", str(model)])
    assert checked.exit_code == 0 and "ERROR" not in checked.output, checked.output
    result = runner.invoke(app, ["infer", str(image), "--model", str(model), "--output", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "o" / "summary.json").read_text())["ok"] == 1
