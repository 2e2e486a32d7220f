"""Bad model files: one clear error each, from `skinseg infer` (exit 2, one line, no traceback, nothing written)
and from `skinseg export --check` (exit 1, an ERROR line naming the problem, no traceback); metadata out of range
and a model whose output swaps height and width are refused when the model loads; a `.keras` file given to infer
says to export it. No TensorFlow needed.

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
import onnx
import pytest
from onnx import TensorProto, helper
from typer.testing import CliRunner

from skinseg.cli import app
from skinseg.runtime.errors import ModelError
from skinseg.runtime.segmenter import Segmenter
from tests.onnx_standins import IR_VERSION, OPSET, _finish, identity_model, metadata_json, odd_input_model, save
from tests.support import block_image, invoke, lesion_image, png_bytes, write_png

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


# ------------------------------------------------------------------------------- metadata and outputs checked at load


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


def test_a_keras_model_given_to_infer_says_to_export_it(tmp_path):
    keras_file = tmp_path / "best_model.keras"
    keras_file.write_bytes(b"PK\x03\x04 not really")
    write_png(tmp_path / "src" / "a.png", lesion_image())
    result = invoke("infer", tmp_path / "src", "--model", keras_file, "--output", tmp_path / "out")
    assert result.exit_code == 2 and "skinseg export" in result.output
    assert not (tmp_path / "out").exists()


def test_a_keras_model_given_to_export_check_says_to_export_it(tmp_path):
    keras_file = tmp_path / "best_model.keras"
    keras_file.write_bytes(b"PK\x03\x04 not really")
    result = runner.invoke(app, ["export", "--check", str(keras_file)])
    errors = [line for line in result.stderr.splitlines() if line.startswith("ERROR")]
    assert result.exit_code == 1 and errors and "a Keras model, not ONNX; export it first" in errors[0], errors
