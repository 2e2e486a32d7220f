"""`skinseg evaluate` and skinseg.runtime.evaluation: scores at the ground truth's resolution, reports, listed errors.

The models are tiny stand-ins: the identity model predicts the red channel / 255, so an image whose red channel
is the lesion mask is segmented perfectly, and a mask that differs from the red channel gives a known score.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from skinseg.cli import app
from skinseg.data.pairing import pair_folders
from skinseg.runtime.evaluation import CELL, CSV_COLUMNS, evaluate, grid_shape, unpaired, write_worst_png
from skinseg.runtime.imageio import write_png_atomic
from skinseg.runtime.metadata import Scale
from skinseg.runtime.metrics import METRICS

onnx_standins = pytest.importorskip("tests.onnx_standins")

runner = CliRunner()
W, H = 64, 48
BOX = (10, 30, 10, 30)  # rows y0:y1, cols x0:x1 of the red "lesion": 400 px
SHIFTED = (10, 30, 20, 40)  # the imperfect pair's truth: 200 px shared with BOX, union 600 px
ISIC = Path(__file__).resolve().parents[2] / "shared" / "data" / "isic-72"


def _box_mask(box: tuple[int, int, int, int], size: tuple[int, int] = (W, H)) -> np.ndarray:
    mask = np.zeros((size[1], size[0]), np.uint8)
    y0, y1, x0, x1 = box
    mask[y0:y1, x0:x1] = 255
    return mask


def _red_image(box: tuple[int, int, int, int], size: tuple[int, int] = (W, H)) -> np.ndarray:
    """Red 255 inside ``box``, 0 outside; green and blue carry texture the identity model ignores."""
    image = np.zeros((size[1], size[0], 3), np.uint8)
    image[..., 0] = _box_mask(box, size)
    image[..., 1] = np.arange(size[0], dtype=np.uint8)[None, :] * 3
    image[..., 2] = 90
    return image


def _add(root: Path, stem: str, box, truth_box, *, mask_name: str | None = None, mask_size=(W, H)) -> None:
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    if box is not None:
        write_png_atomic(root / "images" / f"{stem}.png", _red_image(box))
    if truth_box is not None:
        write_png_atomic(root / "masks" / (mask_name or f"{stem}_segmentation.png"), _box_mask(truth_box, mask_size))


@pytest.fixture
def model(tmp_path) -> Path:
    meta = onnx_standins.metadata_json((32, 32), Scale("native"))
    return onnx_standins.save(onnx_standins.identity_model(metadata=meta), tmp_path / "identity.onnx")


@pytest.fixture
def data(tmp_path) -> Path:
    root = tmp_path / "data"
    _add(root, "perfect", BOX, BOX)
    _add(root, "ISIC_0000002", BOX, SHIFTED, mask_name="ISIC_0000002_Segmentation.png")
    _add(root, "same_stem", BOX, BOX, mask_name="same_stem.png")
    return root


def _run(model: Path, data: Path, out: Path, *extra: str):
    args = ["evaluate", "--model", str(model), "--images", str(data / "images"), "--masks", str(data / "masks")]
    return runner.invoke(app, [*args, "--output", str(out), "--quiet", *extra])


def _rows(out: Path) -> dict[str, dict[str, str]]:
    with (out / "results.csv").open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames or ()) == CSV_COLUMNS
        return {r["stem"]: r for r in reader}


# --------------------------------------------------------------------------------------------------- CLI


def test_perfect_and_known_imperfect_scores(model, data, tmp_path):
    out = tmp_path / "eval"
    result = _run(model, data, out, "--worst", "2")
    assert result.exit_code == 0, result.output
    rows = _rows(out)
    assert set(rows) == {"perfect", "ISIC_0000002", "same_stem"}
    for stem in ("perfect", "same_stem"):
        assert float(rows[stem]["jaccard"]) == 1.0
        assert (int(rows[stem]["tp"]), int(rows[stem]["fp"]), int(rows[stem]["fn"])) == (400, 0, 0)
    imperfect = rows["ISIC_0000002"]
    assert (int(imperfect["tp"]), int(imperfect["fp"]), int(imperfect["fn"]), int(imperfect["tn"])) == (
        200,
        200,
        200,
        W * H - 600,
    )
    assert float(imperfect["jaccard"]) == pytest.approx(1 / 3, abs=1e-6)
    assert float(imperfect["dice"]) == pytest.approx(0.5, abs=1e-6)
    assert float(imperfect["thresholded_jaccard"]) == 0.0
    assert float(imperfect["sensitivity"]) == pytest.approx(0.5, abs=1e-6)
    assert (imperfect["width"], imperfect["height"], imperfect["status"], imperfect["error"]) == (
        str(W),
        str(H),
        "ok",
        "",
    )

    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    for name in METRICS:
        assert set(summary[name]) >= {"mean", "median"}
    assert summary["jaccard"]["mean"] == pytest.approx((1 + 1 + 1 / 3) / 3, abs=1e-6)
    assert summary["jaccard"]["median"] == pytest.approx(1.0)
    assert summary["n_images"] == 3 and summary["n_errors"] == 0
    assert len(summary["model"]["sha256"]) == 64
    assert summary["model"]["provider"] == "CPUExecutionProvider"
    assert summary["options"]["tile"] == [32, 32] and summary["options"]["worst"] == 2
    assert {"skinseg", "numpy", "opencv", "onnxruntime"} <= set(summary["versions"])
    assert summary["seconds_per_image"]["mean"] is not None

    worst = cv2.imread(str(out / "worst.png"))
    assert worst.shape[:2] == grid_shape(2) == (28 + CELL + 28, 2 * CELL)
    assert "jaccard" in result.output and "worst.png" in result.output


def test_unpaired_and_missized_files_are_listed_and_exit_1(model, data, tmp_path):
    _add(data, "lonely", BOX, None)  # image without a mask
    _add(data, "orphan", None, BOX)  # mask without an image
    _add(data, "small", BOX, BOX, mask_size=(W // 2, H // 2))  # mask of another size
    out = tmp_path / "eval"
    result = _run(model, data, out)
    assert result.exit_code == 1, result.output
    rows = _rows(out)
    assert {s for s, r in rows.items() if r["status"] == "ok"} == {"perfect", "ISIC_0000002", "same_stem"}
    assert rows["lonely"]["status"] == "skipped" and "no mask found" in rows["lonely"]["error"]
    assert rows["orphan"]["status"] == "skipped" and "without an image" in rows["orphan"]["error"]
    assert rows["small"]["status"] == "failed" and "mask is 32×24 but its image is 64×48" in rows["small"]["error"]
    assert rows["small"]["jaccard"] == ""
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["n_images"] == 3 and summary["n_errors"] == 3
    assert {e["stem"] for e in summary["errors"]} == {"lonely", "orphan", "small"}
    for stem in ("lonely", "orphan", "small"):
        assert stem in result.output


def test_stems_file_filters(model, data, tmp_path):
    stems = tmp_path / "heldout.txt"
    stems.write_text("# held out\nISIC_0000002  # the shifted one\n\n")
    out = tmp_path / "eval"
    result = _run(model, data, out, "--stems", str(stems))
    assert result.exit_code == 0, result.output
    assert set(_rows(out)) == {"ISIC_0000002"}


def test_listed_stem_without_files_is_an_error(model, data, tmp_path):
    stems = tmp_path / "heldout.txt"
    stems.write_text("perfect\nnowhere\n")
    out = tmp_path / "eval"
    result = _run(model, data, out, "--stems", str(stems))
    assert result.exit_code == 1
    rows = _rows(out)
    assert rows["perfect"]["status"] == "ok" and rows["nowhere"]["status"] == "skipped"


def test_scored_at_the_ground_truth_resolution(tmp_path):
    """The model works at half size; the prediction is brought back and counted at the mask's full size."""
    meta = onnx_standins.metadata_json((32, 32), Scale("factor", 0.5))
    model = onnx_standins.save(onnx_standins.identity_model(metadata=meta), tmp_path / "half.onnx")
    size = (63, 45)  # odd sides: the working size is rounded
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    write_png_atomic(root / "images" / "a.png", _red_image((8, 36, 10, 50), size))
    write_png_atomic(root / "masks" / "a_mask.png", _box_mask((8, 36, 10, 50), size))
    out = tmp_path / "eval"
    result = _run(model, root, out)
    assert result.exit_code == 0, result.output
    row = _rows(out)["a"]
    assert sum(int(row[k]) for k in ("tp", "fp", "fn", "tn")) == 63 * 45
    assert float(row["jaccard"]) > 0.85  # only the box's edges are blurred by the round trip
    assert json.loads((out / "summary.json").read_text())["options"]["scale"] == {"mode": "factor", "value": 0.5}


def test_usage_errors(model, data, tmp_path):
    assert _run(tmp_path / "nope.onnx", data, tmp_path / "o").exit_code == 2
    assert _run(tmp_path / "model.pt", data, tmp_path / "o").exit_code == 2
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n")
    assert _run(model, data, tmp_path / "o", "--stems", str(empty)).exit_code == 2
    result = _run(model, tmp_path / "missing", tmp_path / "o")
    assert result.exit_code == 2 and "folder not found" in result.output


def test_keras_model_without_tensorflow_says_how_to_install(monkeypatch, data, tmp_path):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorflow" else real(name, *a))
    keras_file = tmp_path / "m.keras"
    keras_file.write_bytes(b"not read")
    result = _run(keras_file, data, tmp_path / "o")
    assert result.exit_code == 2
    assert "pip install 'skinseg-edge[train]'" in result.output and len(result.output.strip().splitlines()) == 1


# --------------------------------------------------------------------------------------------------- core


def test_evaluate_core_with_a_plain_function(data, tmp_path):
    report = pair_folders(data / "images", data / "masks")
    events = []

    def predict_box(path: Path) -> np.ndarray:
        return _box_mask(BOX)

    result = evaluate(predict_box, report.pairs, skipped=[unpaired("x", "x: no mask")], worst=5, on_event=events.append)
    assert [e["done"] for e in events] == [1, 2, 3]
    assert [r.stem for r in result.rows] == ["ISIC_0000002", "perfect", "same_stem", "x"]
    assert len(result.scored) == 3 and len(result.errors) == 1
    assert [row.stem for row, _ in result.worst] == ["ISIC_0000002", "perfect", "same_stem"]  # worst first
    summary = result.summary()
    assert summary["pooled"]["jaccard"] == pytest.approx((400 + 400 + 200) / (400 + 400 + 600))
    assert write_worst_png(tmp_path / "w.png", result)
    assert cv2.imread(str(tmp_path / "w.png")).shape[:2] == grid_shape(3)


def test_no_scored_image_means_no_picture(tmp_path):
    result = evaluate(lambda p: np.zeros((1, 1), np.uint8), [], skipped=[unpaired("x", "x: no mask")], worst=4)
    assert result.summary()["jaccard"] == {"mean": None, "median": None, "min": None, "max": None}
    assert not write_worst_png(tmp_path / "w.png", result)
    assert not (tmp_path / "w.png").exists()


def test_grid_shape_wraps_rows():
    assert grid_shape(1) == (28 + CELL + 28, CELL)
    assert grid_shape(5) == (28 + 2 * (CELL + 28), 4 * CELL)


# --------------------------------------------------------------------------------------------------- Keras


@pytest.mark.train
def test_keras_model_scores_like_its_onnx_export(data, tmp_path):
    pytest.importorskip("tensorflow")
    keras = pytest.importorskip("keras")
    pytest.importorskip("tf2onnx")
    from skinseg.exporters import export_onnx
    from skinseg.exporters.from_run import build_metadata

    image = keras.Input((32, 32, 3), name="image")
    x = keras.layers.Rescaling(1 / 255)(image)
    mask = keras.layers.Conv2D(1, 3, padding="same", activation="sigmoid", name="mask")(x)
    net = keras.Model(image, mask)
    kernel = np.zeros((3, 3, 3, 1), np.float32)
    kernel[:, :, 0, 0] = 10 / 9  # sigmoid(10·blur(red) − 5): a soft red detector
    net.get_layer("mask").set_weights([kernel, np.array([-5.0], np.float32)])
    keras_path = tmp_path / "tiny.keras"
    net.save(keras_path)
    onnx_path = tmp_path / "tiny.onnx"
    export_onnx(keras_path, onnx_path, metadata=build_metadata(net, None))  # what `skinseg export` writes

    scores = {}
    for path in (keras_path, onnx_path):
        out = tmp_path / path.suffix[1:]
        result = _run(path, data, out)
        assert result.exit_code == 0, result.output
        scores[path.suffix] = {s: float(r["jaccard"]) for s, r in _rows(out).items()}
        summary = json.loads((out / "summary.json").read_text())
        assert summary["options"]["tile"] == [32, 32] and summary["options"]["scale"]["mode"] == "short_side"
        assert summary["model"]["provider"] == ("keras" if path == keras_path else "CPUExecutionProvider")
    assert scores[".keras"].keys() == scores[".onnx"].keys()
    for stem, value in scores[".keras"].items():
        assert value == pytest.approx(scores[".onnx"][stem], abs=0.01)
    assert 0.2 < scores[".keras"]["ISIC_0000002"] < 0.6  # a real, imperfect score, not a trivial 0 or 1


# --------------------------------------------------------------------------------------------------- real data


@pytest.mark.skipif(not ISIC.is_dir(), reason="../shared/data/isic-72 is not available")
def test_isic_pairing_headers_only():
    """The real ISIC folder pairs completely (mask names in both letter cases); nothing is segmented."""
    report = pair_folders(ISIC / "images", ISIC / "masks")
    assert report.pairs and not report.images_without_mask and not report.ambiguous
