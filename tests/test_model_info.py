"""`skinseg model info [MODEL]`: the model's file hash, export and training metadata, tile, scale, the defaults it
runs with and the figures of its card (only when the card describes that very file); `Segmenter()` with no model
is the bundled one, as `skinseg infer` without --model."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from skinseg import Segmenter
from skinseg.cli import app
from skinseg.runtime.card import card_path, read_card
from skinseg.runtime.model_cache import default_model_path

ROOT = Path(__file__).resolve().parents[1]
MODELS = sorted((ROOT / "runtime" / "models").glob("*.onnx"))
runner = CliRunner()


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_info_of_the_bundled_model():
    result = runner.invoke(app, ["model", "info"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    bundled = default_model_path()
    assert f"sha256      {_sha(bundled)}" in result.output and "(bundled)" in result.output
    assert "tile        128×128 px; trained at scale tile" in result.output
    assert "keep largest yes" in result.output and "flips (TTA) no" in result.output
    assert "training    2000 images (isic2017-train/images)" in result.output
    assert "mean Jaccard 0.786" in result.output and "thresholded Jaccard 0.72" in result.output
    assert "native: 0.1674" in result.output  # the measured loss at other scales


def test_info_as_json_of_a_model_given_by_path(tmp_path):
    copy = tmp_path / "clinic.onnx"
    shutil.copy(default_model_path(), copy)
    shutil.copy(card_path(default_model_path()), card_path(copy))  # its own card, beside it under its name
    result = runner.invoke(app, ["model", "info", str(copy), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["sha256"] == _sha(copy) and info["bundled"] is False
    assert info["metadata"]["tile_size"] == [128, 128]
    assert info["defaults"]["scale"] == "tile" and info["defaults"]["keep_largest"] is True
    assert info["card"]["figures"]["mean_jaccard"] == 0.786


def test_a_card_of_another_file_is_not_shown(standin_model, tmp_path):
    model = tmp_path / "m.onnx"
    shutil.copy(standin_model, model)
    shutil.copy(card_path(default_model_path()), card_path(model))  # the bundled model's card beside another file
    result = runner.invoke(app, ["model", "info", str(model)], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    assert "0.786" not in result.output and "m.card.json describes another file" in result.output
    assert read_card(model, _sha(model)) is None


def test_a_model_without_metadata_and_a_missing_file(tmp_path):
    from tests.onnx_standins import identity_model, save

    bare = save(identity_model(metadata=None), tmp_path / "bare.onnx")
    result = runner.invoke(app, ["model", "info", str(bare)])
    assert result.exit_code == 0 and "metadata    none" in result.output
    missing = runner.invoke(app, ["model", "info", str(tmp_path / "nope.onnx")])
    assert (
        missing.exit_code == 2 and len(missing.output.strip().splitlines()) == 1 and "file not found" in missing.output
    )


@pytest.mark.parametrize("model", MODELS, ids=lambda p: p.name)
def test_every_bundled_model_has_a_card_of_its_own_file_with_the_model_cards_figures(model):
    card = read_card(model, _sha(model))
    assert card is not None, f"{card_path(model).name} is missing or describes another file (update it with the model)"
    row = next(
        line for line in (ROOT / "MODEL_CARD.md").read_text().splitlines() if line.startswith(f"| `{model.name}`")
    )
    cells = [c.strip(" *`") for c in row.split("|")[2:-1]]
    keys = ["mean_jaccard", "median_jaccard", "thresholded_jaccard", "dice", "sensitivity", "specificity"]
    assert [float(c) for c in cells[:6]] == [card.figures[k] for k in keys]
    strategies = (ROOT / "docs" / "strategies.md").read_text()
    for figure in card.scale_figures:  # each is a row of docs/strategies.md
        assert re.search(rf"\| {figure.mean_jaccard:.4f} \|", strategies), figure


def test_segmenter_without_a_model_is_the_bundled_one_as_infer_uses():
    seg = Segmenter()
    assert seg.model_path == default_model_path() and seg.tile == (128, 128) and str(seg.scale) == "tile"
