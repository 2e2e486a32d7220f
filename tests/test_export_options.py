"""`skinseg export`: options that cannot work are refused before the conversion, and a failed export leaves no file
(and the files of an earlier export as they were). The conversion is stood in for: no TensorFlow needed."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("onnx")

import skinseg.exporters.from_run as from_run  # noqa: E402
import skinseg.exporters.keras_to_onnx as keras_to_onnx  # noqa: E402
import skinseg.exporters.quantize as quantize  # noqa: E402
from skinseg.runtime.errors import UsageError  # noqa: E402
from skinseg.runtime.metadata import ModelMetadata, Scale  # noqa: E402
from tests.support import lesion_image, write_png  # noqa: E402


def files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def test_int8_without_calibration_images_is_refused_before_converting(tmp_path, monkeypatch):
    model = tmp_path / "X.keras"
    model.write_bytes(b"PK\x03\x04 stand-in")

    def never(*args, **kwargs):
        raise AssertionError("the model was loaded for conversion")

    monkeypatch.setattr(keras_to_onnx, "load_keras_model", never)
    with pytest.raises(UsageError, match="int8 needs calibration images"):
        from_run.export_run(model, output=tmp_path / "X.onnx", quantize=["int8"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="holds no images"):
        from_run.export_run(model, output=tmp_path / "X.onnx", quantize=["int8"], calibration=tmp_path / "empty")
    with pytest.raises(UsageError, match="choose int8 or fp16"):
        from_run.export_run(model, output=tmp_path / "X.onnx", quantize=["int4"])
    assert files(tmp_path) == {"X.keras", "empty"}


@pytest.fixture
def stand_in_conversion(monkeypatch):
    """The Keras load and conversion stood in for: export_onnx writes a small file where it is told."""

    def load(path):
        return SimpleNamespace(), ""

    def export(model, output, **kwargs):
        Path(output).write_bytes(b"new fp32")
        return SimpleNamespace(path=Path(output), max_abs_diff=0.0, check_images=0, size_bytes=8, opset=17,
                               warnings=[])  # fmt: skip

    monkeypatch.setattr(keras_to_onnx, "load_keras_model", load)
    monkeypatch.setattr(keras_to_onnx, "export_onnx", export)
    monkeypatch.setattr(from_run, "build_metadata", lambda model, run_dir: ModelMetadata((64, 64), Scale("native")))


def test_a_variant_that_fails_leaves_no_file_and_the_earlier_ones_as_they_were(
    tmp_path, monkeypatch, stand_in_conversion
):
    model = tmp_path / "X.keras"
    model.write_bytes(b"PK\x03\x04 stand-in")
    write_png(tmp_path / "calib" / "a.png", lesion_image())
    (tmp_path / "X.fp32.onnx").write_bytes(b"earlier fp32")

    def boom(*args, **kwargs):
        raise RuntimeError("quantization failed")

    monkeypatch.setattr(quantize, "quantize_int8", boom)
    with pytest.raises(RuntimeError, match="quantization failed"):
        from_run.export_run(
            model, output=tmp_path / "X.onnx", quantize=["int8"], calibration=tmp_path / "calib", fit_quality=False
        )
    assert files(tmp_path) == {"X.keras", "calib", "X.fp32.onnx"}  # no new file, no temporary one
    assert (tmp_path / "X.fp32.onnx").read_bytes() == b"earlier fp32"


def test_a_successful_export_puts_every_file_in_place(tmp_path, monkeypatch, stand_in_conversion):
    model = tmp_path / "X.keras"
    model.write_bytes(b"PK\x03\x04 stand-in")

    def fp16(src, out):
        Path(out).write_bytes(b"fp16 of " + Path(src).read_bytes())

    monkeypatch.setattr(quantize, "convert_fp16", fp16)
    compare = {"cand_size_mb": 0.1, "speedup": 1.0, "mean_iou": 1.0, "max_abs_diff": 0.0}
    monkeypatch.setattr(quantize, "compare_models", lambda *a, **k: compare)
    for stale in (".X.onnx.999999999-deadbeef.tmp", "..X.onnx.999999999-deadbeef.tmp.999999999-cafebabe.tmp"):
        (tmp_path / stale).write_bytes(b"left by a killed export")
    result = from_run.export_run(model, output=tmp_path / "X.onnx", quantize=["fp16"], fit_quality=False)
    assert result.fp32_path == tmp_path / "X.fp32.onnx" and result.variants[0].path == tmp_path / "X.onnx"
    assert (tmp_path / "X.onnx").read_bytes() == b"fp16 of new fp32"
    assert files(tmp_path) == {"X.keras", "X.fp32.onnx", "X.onnx"}
