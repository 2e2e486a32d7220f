"""A model whose metadata has a field of the wrong type is a one-line model error everywhere it is read, never an
AttributeError: `infer --model` (exit 2) and `export --check` (an error finding, exit 1)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from skinseg.runtime.errors import ModelError
from skinseg.runtime.metadata import parse_metadata
from tests.onnx_standins import identity_model, metadata_json, save
from tests.support import lesion_image, write_png

BAD_FIELDS = [
    ({"validation_metrics": [0.8, 0.7]}, "validation_metrics must be an object"),
    ({"validation_metrics": "0.8"}, "validation_metrics must be an object"),
    ({"validation_metrics": {"val_jaccard": "high"}}, "'val_jaccard' must be a number"),
    ({"training_data": ["a"]}, "training_data must be an object"),
    ({"export_options": "int8"}, "export_options must be an object"),
    ({"class_names": "lesion"}, "class_names must be a list"),
    ({"class_names": [1, 2]}, "class_names must be a list"),
]


def bad_model(tmp_path, change: dict):
    text = json.dumps({**json.loads(metadata_json((64, 64))), **change})
    return save(identity_model(metadata=text), tmp_path / "bad.onnx")


@pytest.mark.parametrize(("change", "words"), BAD_FIELDS)
def test_a_field_of_the_wrong_type_is_a_model_error(change, words):
    text = json.dumps({**json.loads(metadata_json((64, 64))), **change})
    with pytest.raises(ModelError, match=words) as caught:
        parse_metadata(text, source="m.onnx")
    assert "re-export" in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("change", [{"validation_metrics": [0.8]}, {"validation_metrics": "x"}])
def test_infer_and_export_check_say_it_in_one_line(tmp_path, change):
    model = bad_model(tmp_path, change)
    write_png(tmp_path / "src" / "a.png", lesion_image())
    infer = subprocess.run(
        [sys.executable, "-m", "skinseg", "infer", tmp_path / "src", "--model", model, "-o", tmp_path / "out"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert infer.returncode == 2, infer.stderr
    assert len(infer.stderr.strip().splitlines()) == 1 and "validation_metrics" in infer.stderr, infer.stderr
    pytest.importorskip("onnx")
    check = subprocess.run(
        [sys.executable, "-m", "skinseg", "export", "--check", model], capture_output=True, text=True, timeout=120
    )
    assert check.returncode == 1 and "Traceback" not in check.stderr, check.stderr
    assert "ERROR" in check.stderr and "validation_metrics must be an object" in check.stderr
