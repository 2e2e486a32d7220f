"""The model metadata schema: scales, JSON round trip, and one-line errors for bad documents."""

from __future__ import annotations

import json

import pytest

from skinseg.runtime.errors import ModelError
from skinseg.runtime.metadata import ModelMetadata, Scale, parse_metadata


@pytest.mark.parametrize(
    ("text", "mode", "value"),
    [
        ("native", "native", None),
        ("tile", "tile", None),
        ("0.25", "factor", 0.25),
        ("1024", "long_side", 1024.0),
        ("short:256", "short_side", 256.0),
    ],
)
def test_scale_parse(text, mode, value):
    scale = Scale.parse(text)
    assert (scale.mode, scale.value) == (mode, value)


@pytest.mark.parametrize("text", ["big", "-1", "0", "", "short:", "short:-5", "inf", "nan", "1e9", "short:inf"])
def test_scale_parse_rejects(text):
    with pytest.raises(ValueError, match="scale"):
        Scale.parse(text)


def test_work_sizes():
    tile = (256, 256)
    assert Scale("native").work_size(4000, 3000, tile) == (4000, 3000)
    assert Scale("factor", 0.25).work_size(4000, 3000, tile) == (1000, 750)
    assert Scale("long_side", 1000).work_size(4000, 3000, tile) == (1000, 750)
    assert Scale("tile").work_size(4000, 3000, (192, 256)) == (256, 192)  # (w, h) from (h, w)
    assert Scale("short_side", 256).work_size(4000, 3000, tile) == (341, 256)
    assert Scale("short_side", 256).work_size(3000, 4000, tile) == (256, 341)
    assert str(Scale("short_side", 256)) == "short:256" and Scale.parse(str(Scale("long_side", 1024))).value == 1024
    assert Scale("tile").factor_for(4000, 3000, (256, 256)) == pytest.approx(256 / 3000)


def test_round_trip():
    meta = ModelMetadata(
        tile_size=(192, 256),
        train_scale=Scale("tile"),
        threshold=0.4,
        validation_metrics={"val_loss": 0.2},
        training_data={"train_images": 3},
    )
    again = parse_metadata(meta.to_json())
    assert again == meta


@pytest.mark.parametrize(
    ("doc", "fragment"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "JSON object"),
        (json.dumps({"format_version": 99}), "format_version 99"),
        (json.dumps({"format_version": 1, "train_scale": {"mode": "native"}}), "tile_size"),
        (json.dumps({"format_version": 1, "tile_size": [0, 5], "train_scale": {"mode": "native"}}), "tile_size"),
        (json.dumps({"format_version": 1, "tile_size": [64, 64], "train_scale": {"mode": "warp"}}), "scale mode"),
        (
            json.dumps({"format_version": 1, "tile_size": [64, 64], "train_scale": {"mode": "tile"}, "layout": "x"}),
            "layout",
        ),
        (
            json.dumps({"format_version": 1, "tile_size": [64, 64], "train_scale": {"mode": "tile"}, "threshold": 2}),
            "threshold",
        ),
    ],
)
def test_bad_metadata_is_one_clear_error(doc, fragment):
    with pytest.raises(ModelError) as info:
        parse_metadata(doc, source="m.onnx")
    message = str(info.value)
    assert message.startswith("m.onnx") and fragment in message and "\n" not in message
