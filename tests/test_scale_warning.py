"""A --scale far from the one the model was trained at is warned of, naming the loss measured there (the model's
card); near scales are not."""

from __future__ import annotations

import pytest

from skinseg import Segmenter
from skinseg.runtime.metadata import Scale
from tests.onnx_standins import identity_model, metadata_json, save


@pytest.fixture(scope="module")
def bundled():
    return {scale: Segmenter(scale=scale) for scale in ("native", "short:256", "0.5", "short:128", "tile", "160")}


def test_native_with_the_bundled_model_names_the_measured_loss(bundled):
    text = bundled["native"].scale_warning(1600, 1200)
    assert text is not None and "\n" not in text
    assert "1600×1200 px, 10.8× finer than skinseg_default.onnx was trained at (scale tile: 128×128 px)" in text
    assert "mean Jaccard fell from 0.784 to 0.167" in text and "64× as long" in text
    assert "leave scale out" in text


def test_the_nearest_measured_scale_is_named(bundled):
    assert "scale=short:256, its mean Jaccard fell from 0.784 to 0.288" in bundled["short:256"].scale_warning(
        1600, 1200
    )
    assert "scale=native" in bundled["0.5"].scale_warning(1600, 1200)  # 5.4×: nearer native (10.8×) than 2.3×


def test_scales_near_the_models_own_are_not_warned_of(bundled):
    for scale in ("tile", "short:128", "160"):
        assert bundled[scale].scale_warning(1600, 1200) is None, scale
    assert Segmenter().scale_warning(1600, 1200) is None  # the model's own


def test_a_model_without_a_card_gets_the_warning_without_figures(tmp_path):
    model = save(identity_model(metadata=metadata_json((64, 64), Scale("factor", 0.25))), tmp_path / "m.onnx")
    coarse = Segmenter(model, scale="0.05").scale_warning(2000, 1000)
    assert coarse is not None and "5.0× coarser than m.onnx was trained at (scale 0.25: 500×250 px)" in coarse
    assert "expect wrong masks" in coarse and "Jaccard" not in coarse
    assert Segmenter(model, scale="0.4").scale_warning(2000, 1000) is None
    assert Segmenter(model, tile=64, scale="native").scale_warning(2000, 1000) is not None  # 4× finer


def test_infer_warns_once_per_run(tmp_path):
    from typer.testing import CliRunner

    from skinseg.cli import app
    from tests.support import lesion_image, write_png

    src = tmp_path / "in"
    for i in range(2):
        write_png(src / f"p{i}.png", lesion_image(480, 640, seed=i))
    runner = CliRunner()
    far = runner.invoke(app, ["infer", str(src), "-o", str(tmp_path / "a"), "--scale", "native", "-q"])
    assert far.exit_code == 0, far.output
    warnings = [line for line in far.output.splitlines() if "warning:" in line]
    assert len(warnings) == 1 and "--scale native segments a 640×480 photo" in warnings[0]
    assert "0.784 to 0.167" in warnings[0]
    own = runner.invoke(app, ["infer", str(src), "-o", str(tmp_path / "b"), "-q"])
    assert own.exit_code == 0 and "warning" not in own.output
