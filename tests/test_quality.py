"""The per-image quality estimate: its features, the linear estimator and its metadata, the fit and its honesty."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from skinseg.data.quality_fit import Sample, choose_threshold, cross_validate, fit, fit_model
from skinseg.runtime.errors import DataError, ModelError
from skinseg.runtime.metadata import ModelMetadata, Scale, parse_metadata
from skinseg.runtime.quality import (
    FEATURES,
    GENERIC,
    MAX_FEATURE_SIDE,
    QualityModel,
    needs_review,
    parse_quality,
    quality_features,
    review_figures,
    spearman,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def disc(size: int = 128, radius: float = 30, centre: tuple[float, float] | None = None, blur: float = 0.0):
    """A probability map of a disc: a sharp step, or a soft one (``blur``: Gaussian sigma in px)."""
    cy, cx = centre or ((size - 1) / 2, (size - 1) / 2)
    yy, xx = np.mgrid[:size, :size]
    p = ((yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2).astype(np.float32)
    if blur:
        p = cv2.GaussianBlur(p, (0, 0), blur)
    return p


# --------------------------------------------------------------------------------------------------- features


def test_features_of_a_sure_mask_and_a_doubtful_one():
    sure = quality_features(disc())
    soft = quality_features(disc(blur=6) * 0.8)
    assert set(sure) == set(FEATURES)
    assert sure["mean_prob"] > 0.99 and sure["soft_jaccard"] > 0.99 and sure["stability"] > 0.99
    assert soft["mean_prob"] < sure["mean_prob"] and soft["soft_jaccard"] < sure["soft_jaccard"]
    assert soft["uncertain"] > sure["uncertain"] + 0.5  # log10: many more unsure pixels per mask pixel
    assert soft["edge"] < sure["edge"] / 2  # a soft border
    assert soft["stability"] < 0.8
    assert sure["frame"] == 0.0 and sure["components"] == 0.0 and sure["outside"] == 0.0
    assert sure["compactness"] > 0.85 and sure["off_centre"] < 0.02
    assert sure["log_area"] == pytest.approx(math.log10(math.pi * 30**2 / 128**2), abs=0.02)


def test_features_see_the_frame_stray_blobs_and_an_off_centre_mask():
    touching = quality_features(disc(radius=40, centre=(20, 64)))
    assert touching["frame"] > 0.1 and touching["off_centre"] > 0.3
    two = np.maximum(disc(radius=20, centre=(40, 40)), disc(radius=10, centre=(100, 100)))
    kept = quality_features(two, keep_largest=True)
    assert kept["components"] == 1.0  # log2 of the 2 components above the threshold
    assert kept["outside"] > 0.1  # the blob keep-largest dropped holds probability mass
    assert quality_features(two, keep_largest=False)["outside"] == 0.0


def test_features_same_for_uint8_and_float_maps_and_bounded_for_large_maps():
    p = disc(blur=3)
    as_u8 = np.clip(p * 255 + 0.5, 0, 255).astype(np.uint8)
    a, b = quality_features(p), quality_features(as_u8)
    for name in FEATURES:
        assert a[name] == pytest.approx(b[name], abs=0.02), name
    big = cv2.resize(p, (MAX_FEATURE_SIDE * 4, MAX_FEATURE_SIDE * 4), interpolation=cv2.INTER_LINEAR)
    c, d = quality_features(big), quality_features(cv2.resize(p, (MAX_FEATURE_SIDE, MAX_FEATURE_SIDE)))
    for name in FEATURES:  # computed at MAX_FEATURE_SIDE: the cost does not grow with the map
        assert c[name] == pytest.approx(d[name], abs=0.02), name


def test_empty_mask_has_quality_zero_and_is_flagged():
    features = quality_features(np.zeros((64, 64), np.float32))
    assert features["log_area"] == -math.inf
    assert GENERIC is not None and GENERIC.estimate(features) == 0.0
    assert needs_review(GENERIC.estimate(features), GENERIC.review_below) == 1


def test_features_reject_a_bad_map():
    with pytest.raises(ValueError, match="H×W"):
        quality_features(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ValueError, match="mask has shape"):
        quality_features(np.zeros((8, 8), np.float32), mask=np.zeros((4, 4), np.uint8))


# --------------------------------------------------------------------------------------------------- estimator


def small_model(**kw) -> QualityModel:
    args = {
        "features": ("mean_prob", "uncertain"),
        "mean": (0.9, -1.0),
        "scale": (0.05, 0.3),
        "coef": (1.0, -1.0),
        "intercept": 1.0,
        "review_below": 0.7,
        "low": (0.5, -2.0),
        "high": (1.0, 0.5),
    }
    return QualityModel(**{**args, **kw})


def test_estimate_follows_the_coefficients_and_is_clipped_to_the_fitted_range():
    model = small_model()
    good = model.estimate({"mean_prob": 0.98, "uncertain": -1.5, "log_area": -1.0})
    bad = model.estimate({"mean_prob": 0.8, "uncertain": 0.0, "log_area": -1.0})
    assert 0 < bad < good < 1
    z = 1.0 + (0.98 - 0.9) / 0.05 - (-1.5 + 1.0) / 0.3
    assert good == pytest.approx(1 / (1 + math.exp(-z)))
    extreme = model.estimate({"mean_prob": 0.0, "uncertain": 9.0, "log_area": -1.0})  # clipped to low/high
    assert extreme == pytest.approx(model.estimate({"mean_prob": 0.5, "uncertain": 0.5, "log_area": -1.0}))


def test_estimator_round_trip_and_errors():
    model = small_model(fitted={"images": 3})
    assert parse_quality(json.loads(json.dumps(model.to_dict()))) == model
    assert parse_quality(None) is None
    bad = [
        ({**model.to_dict(), "coef": [1.0]}, "coef"),
        ({**model.to_dict(), "scale": [0.0, 1.0]}, "scale"),
        ({**model.to_dict(), "review_below": 1.5}, "review_below"),
        ({**model.to_dict(), "intercept": "x"}, "intercept"),
        ({k: v for k, v in model.to_dict().items() if k != "mean"}, "missing"),
        ([1, 2], "object"),
    ]
    for doc, fragment in bad:
        with pytest.raises(ValueError, match=fragment):
            parse_quality(doc)


def test_an_estimator_naming_an_unknown_feature_gives_no_estimate():
    model = small_model(features=("mean_prob", "from_the_future"))
    assert not model.usable
    assert model.estimate({"mean_prob": 0.9, "log_area": -1.0}) is None
    assert needs_review(None, 0.7) is None


def test_metadata_carries_the_estimator_and_old_models_still_load():
    meta = ModelMetadata(tile_size=(64, 64), train_scale=Scale("tile"), quality=small_model())
    again = parse_metadata(meta.to_json())
    assert again == meta and again.quality == small_model()
    old = json.loads(meta.to_json())
    del old["quality"]
    assert parse_metadata(json.dumps(old)).quality is None
    broken = {**json.loads(meta.to_json()), "quality": {"features": ["mean_prob"]}}
    with pytest.raises(ModelError, match="invalid skinseg metadata.*quality") as info:
        parse_metadata(json.dumps(broken), source="m.onnx")
    assert "\n" not in str(info.value) and "m.onnx" in str(info.value)


def test_spearman_and_review_figures():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 1, 2], [1, 2, 3]) == pytest.approx(0.8660254)  # ties share their rank
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))
    f = review_figures([0.2, 0.6, 0.9, 0.95, None], [0.1, 0.9, 0.5, 0.9, 0.3], review_below=0.7)
    assert (f["images"], f["failures"], f["flagged"], f["caught"]) == (4, 2, 2, 1)
    assert f["recall"] == 0.5 and f["precision"] == 0.5
    assert review_figures([0.9], [0.9], review_below=0.5)["recall"] is None


# --------------------------------------------------------------------------------------------------- fitting


def synthetic_samples(n: int = 160, seed: int = 0, noise: float = 0.3) -> list[Sample]:
    """Images whose true Jaccard follows two of the features (plus noise); the others are noise."""
    rng = np.random.default_rng(seed)
    samples = []
    for i in range(n):
        features = {name: float(rng.normal()) for name in FEATURES}
        features["log_area"] = float(rng.uniform(-2, -0.2))
        z = 1.2 + 1.2 * features["mean_prob"] - 0.8 * features["uncertain"] + noise * rng.normal()
        samples.append(Sample(f"s{i}", "a" if i % 2 else "b", 1 / (1 + math.exp(-z)), features))
    return samples


def test_fit_finds_the_signal_and_measures_it_out_of_sample():
    samples = synthetic_samples()
    result = fit(samples, data=["synthetic"])
    model, cv = result.model, result.cv
    coef = dict(zip(model.features, model.coef, strict=True))
    assert coef["mean_prob"] > 0.5 and coef["uncertain"] < -0.3
    assert all(abs(coef[f]) < 0.25 for f in FEATURES if f not in ("mean_prob", "uncertain", "log_area"))
    assert cv["spearman"] > 0.8 and cv["recall"] >= 0.6 and cv["precision"] > 0.5
    assert set(cv["by_source"]) == {"a", "b"}
    assert model.fitted["images"] == 160 and model.fitted["data"] == ["synthetic"]
    json.dumps(model.to_dict(), allow_nan=False)  # strict JSON: it goes into the ONNX metadata
    # the stored threshold flags the target share of failures among the out-of-fold estimates
    failed = np.array([s.jaccard < 0.65 for s in samples])
    assert np.mean(np.asarray(result.oof)[failed] < model.review_below) >= 0.6


def test_cross_validation_is_out_of_sample():
    """Features that are pure noise must not look predictive: an in-sample fit would, on 40 images."""
    rng = np.random.default_rng(3)
    samples = [
        Sample(f"s{i}", "x", float(rng.uniform(0.3, 1.0)), {f: float(rng.normal()) for f in FEATURES})
        for i in range(40)
    ]
    for s in samples:
        s.features["log_area"] = -1.0
    cv = cross_validate(samples, ridge=0.01)
    assert cv["spearman"] < 0.4
    in_sample = fit_model(samples, ridge=0.01)
    estimates = [in_sample.estimate(s.features) for s in samples]
    assert spearman(estimates, [s.jaccard for s in samples]) > cv["spearman"] + 0.2


def test_extra_samples_teach_the_fit_but_are_never_scored():
    """Out-of-fold samples from elsewhere join every fit: 30 images alone fit noise, 400 more find the signal;
    the figures still count only the 30, and weight 0 is the fit without them."""
    few = synthetic_samples(30, seed=5, noise=0.5)
    many = synthetic_samples(400, seed=6, noise=0.5)
    alone = cross_validate(few, ridge=0.1, repeats=2)
    helped = cross_validate(few, ridge=0.1, repeats=2, extra=many)
    assert helped["images"] == alone["images"] == 30 and helped["failures"] == alone["failures"]
    assert len(helped["oof"]) == 30
    assert helped["spearman"] > alone["spearman"] + 0.05
    ignored = cross_validate(few, ridge=0.1, repeats=2, extra=many, extra_weight=0.0)
    assert ignored["oof"] == pytest.approx(alone["oof"])
    with pytest.raises(ValueError, match="extra_weight"):
        fit_model(few, extra=many, extra_weight=-1)
    model = fit(few, ridge=0.1, repeats=2, extra=many).model
    assert model.fitted["images"] == 30 and model.fitted["extra_images"] == 400
    coef = dict(zip(model.features, model.coef, strict=True))
    assert coef["mean_prob"] > 0.5 and coef["uncertain"] < -0.3


def test_choose_threshold_catches_the_target_share():
    quality = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95]
    failed = [True, True, False, True, True, False, True, False, False, False]
    t = choose_threshold(quality, failed, 0.8)  # 5 failures: catch 4, the 4th lowest at 0.5, next estimate 0.6
    assert t == pytest.approx(0.55)
    assert choose_threshold(quality, failed, 1.0) == pytest.approx(0.75)
    assert choose_threshold(quality, [False] * 10) == 0.0


def test_fit_refuses_too_few_failures():
    samples = synthetic_samples(30)
    for s in samples:
        s.jaccard = 0.9
    samples[0].jaccard = 0.1
    with pytest.raises(DataError, match="failures"):
        fit(samples)


# --------------------------------------------------------------------------------------------------- in the runtime


def test_segmenter_reports_quality_from_the_model_metadata(tmp_path):
    from skinseg.runtime.segmenter import Segmenter
    from tests.onnx_standins import identity_model, metadata_json, save

    image = np.zeros((128, 128, 3), np.uint8)
    image[..., 0] = np.clip(disc() * 255, 0, 255).astype(np.uint8)  # the stand-in's probability is red / 255
    plain = save(identity_model(metadata=metadata_json((64, 64))), tmp_path / "plain.onnx")
    result = Segmenter(plain).segment(image)
    assert Segmenter(plain).quality is GENERIC
    assert result.stats["quality"] == pytest.approx(GENERIC.estimate(result.extra["quality_features"]))
    assert result.stats["review"] == int(result.stats["quality"] < GENERIC.review_below)

    own = small_model(intercept=-8.0)  # a pessimist: every mask below its review_below
    doc = json.loads(metadata_json((64, 64)))
    doc["quality"] = own.to_dict()
    fitted = save(identity_model(metadata=json.dumps(doc)), tmp_path / "fitted.onnx")
    seg = Segmenter(fitted)
    result = seg.segment(image)
    assert seg.quality == own
    assert result.stats["quality"] == pytest.approx(own.estimate(result.extra["quality_features"]))
    assert result.stats["review"] == 1
    empty = seg.segment(np.zeros((128, 128, 3), np.uint8))
    assert empty.stats["quality"] == 0.0 and empty.stats["review"] == 1


def test_embed_quality_into_an_onnx_file(tmp_path):
    pytest.importorskip("onnx")
    from skinseg.exporters.quality_fit import embed_quality
    from skinseg.runtime.segmenter import Segmenter
    from tests.onnx_standins import identity_model, metadata_json, save

    path = save(identity_model(metadata=metadata_json((64, 64))), tmp_path / "m.onnx")
    embed_quality(path, small_model())
    assert Segmenter(path).quality == small_model()
    embed_quality(path, None)
    assert Segmenter(path).quality is GENERIC
    bare = save(identity_model(), tmp_path / "bare.onnx")
    with pytest.raises(ModelError, match="no 'skinseg' metadata"):
        embed_quality(bare, small_model())


def test_run_validation_pairs_finds_the_masks(tmp_path):
    from skinseg.exporters.quality_fit import run_validation_pairs

    images, masks = tmp_path / "val" / "images", tmp_path / "val" / "masks"
    images.mkdir(parents=True)
    masks.mkdir(parents=True)
    for stem in ("a", "b", "c"):
        cv2.imwrite(str(images / f"{stem}.jpg"), np.zeros((8, 8, 3), np.uint8))
    for stem in ("a", "b"):
        cv2.imwrite(str(masks / f"{stem}_segmentation.png"), np.zeros((8, 8), np.uint8))
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.resolved.ini").write_text(
        f'[train]\nimage_datapath = ["{images}"]\nmask_datapath = ["{masks}"]\n', encoding="utf-8"
    )
    valid = [str(images / f"{s}.jpg") for s in ("a", "c")]
    (run / "split.json").write_text(json.dumps({"valid_files": valid, "train_files": []}), encoding="utf-8")
    pairs = run_validation_pairs(run)
    assert [(p.image.name, p.mask.name) for p in pairs] == [("a.jpg", "a_segmentation.png")]  # c has no mask
    assert run_validation_pairs(None) == []


def test_the_run_folder_reads_what_it_writes(tmp_path):
    """split.json and history.csv, read by export as the trainer wrote them (skinseg.data.run_folder)."""
    from skinseg.data.run_folder import RunFolder, Split
    from skinseg.runtime.errors import UsageError

    run = RunFolder(tmp_path / "run")
    run.path.mkdir()
    assert run.read_split() is None and run.split_files("valid_files") == [] and run.best_epoch_metrics() == {}
    image = tmp_path / "a.jpg"
    image.write_bytes(b"x")
    split = Split(["a"], ["b"], [str(image)], [str(image), str(tmp_path / "gone.jpg")], ["one warning"])
    run.write_split(split)
    assert run.read_split() == split
    assert set(json.loads(run.split.read_text())) == {"train", "valid", "train_files", "valid_files", "warnings"}
    assert run.split_files("valid_files") == [image]  # files that still exist
    run.split.write_text(json.dumps({"valid_files": [str(image)]}))  # keys a file lacks read as empty
    assert run.read_split() == Split(valid_files=[str(image)])
    run.split.write_text("{not json")
    with pytest.raises(UsageError, match="split.json") as info:
        run.read_split()
    assert "\n" not in str(info.value)
    run.write_history([{"epoch": 1, "loss": 0.5}, {"epoch": 2, "loss": 0.4, "val_loss": 0.3, "val_iou": 0.7}])
    run.write_history([*run.read_history(), {"epoch": 3, "loss": 0.3, "val_loss": 0.35, "val_iou": 0.75}])
    assert run.best_epoch_metrics() == {"val_loss": 0.3, "val_iou": 0.7, "epoch": 2.0}
    assert RunFolder.of_model(run.best_model) is None  # no config.resolved.ini: a model file alone
    run.config_resolved.write_text("[train]\n")
    assert RunFolder.of_model(run.best_model) == run


# --------------------------------------------------------------------------------------------------- real data


@pytest.mark.slow
@pytest.mark.skipif(not (DATA / "isic-raw").is_dir(), reason="needs ../shared/data/isic-raw")
def test_on_isic_raw_the_estimate_ranks_the_bundled_models_masks():
    """Cross-validated on the 98 isic-raw photographs: the estimate ranks masks by their Jaccard better than
    mean_prob alone, and its flag catches most failures (docs/quality.md has the full figures)."""
    from skinseg.data.pairing import pair_folders
    from skinseg.data.quality_fit import collect
    from skinseg.runtime.segmenter import Segmenter

    pairs = pair_folders(DATA / "isic-raw" / "images", DATA / "isic-raw" / "masks").pairs
    samples = collect(Segmenter(), pairs, source="isic-raw")
    assert len(samples) == len(pairs)
    cv = cross_validate(samples, repeats=3)
    baseline = cross_validate(samples, features=("mean_prob",), repeats=3)
    assert cv["spearman"] > 0.55 and cv["spearman"] > baseline["spearman"] + 0.05
    assert cv["recall"] >= 0.7 and cv["precision"] > baseline["precision"]
    # and the run-time path agrees with the features fitted on
    one = dataclasses.asdict(samples[0])
    assert set(one["features"]) == set(FEATURES)


# --------------------------------------------------------------------------------------------------- in the batch


def _photo(path: Path, radius: float, blur: float) -> Path:
    """A PNG whose red channel is the stand-in model's probability map: a disc, sharp or soft."""
    image = np.zeros((128, 128, 3), np.uint8)
    image[..., 0] = np.clip(disc(radius=radius, blur=blur) * 255, 0, 255).astype(np.uint8)
    cv2.imwrite(str(path), image[..., ::-1])
    return path


def test_infer_reports_quality_and_review_and_the_threshold_can_be_moved(tmp_path):
    from skinseg.runtime.batch import run_batch
    from skinseg.runtime.options import InferOptions
    from skinseg.runtime.report import read_results
    from tests.onnx_standins import identity_model, metadata_json, save

    doc = json.loads(metadata_json((64, 64)))
    doc["quality"] = small_model(review_below=0.5).to_dict()
    model = save(identity_model(metadata=json.dumps(doc)), tmp_path / "m.onnx")
    photos = tmp_path / "in"
    photos.mkdir()
    _photo(photos / "sharp.png", 30, 0)
    _photo(photos / "soft.png", 30, 8)
    out = tmp_path / "out"
    summary = run_batch([photos], model, out, InferOptions())
    rows = read_results(out / "results.csv")
    sharp, soft = rows["sharp.png"], rows["soft.png"]
    assert 0 <= soft["quality"] < sharp["quality"] <= 1
    assert (sharp["review"], soft["review"]) == (0, 1)  # the soft one is below the model's 0.5
    assert summary.review == 1 and json.loads((out / "summary.json").read_text())["review"] == 1
    # a rerun with another threshold redoes no image, and judges the recorded estimates again
    summary = run_batch([photos], model, out, InferOptions(review_below=0.9999))
    rows = read_results(out / "results.csv")
    assert summary.skipped == 2 and summary.review == 2
    assert rows["sharp.png"]["quality"] == sharp["quality"] and rows["sharp.png"]["review"] == 1
    summary = run_batch([photos], model, out, InferOptions(review_below=0.0))
    assert summary.review == 0 and read_results(out / "results.csv")["soft.png"]["review"] == 0


def test_review_below_out_of_range_is_a_usage_error(tmp_path):
    from skinseg.runtime.errors import UsageError
    from skinseg.runtime.options import InferOptions

    with pytest.raises(UsageError, match="review_below must be a Jaccard within"):
        InferOptions(review_below=1.5).check()


def _fake_run(tmp_path: Path, n: int, wrong_every: int, grow: float = 2.5) -> Path:
    """A run directory whose validation photos are discs (the stand-in's probability) with expert masks; every
    ``wrong_every``-th mask is a disc elsewhere (a failure of the model), the softer photos' masks a larger disc
    (``grow`` px per px of blur)."""
    images, masks = tmp_path / "val" / "images", tmp_path / "val" / "masks"
    images.mkdir(parents=True)
    masks.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for i in range(n):
        blur = float(rng.uniform(0, 8))
        _photo(images / f"v{i:02d}.png", 30, blur)
        truth = disc(radius=30 + grow * blur, centre=(40, 40) if wrong_every and i % wrong_every == 0 else None)
        cv2.imwrite(str(masks / f"v{i:02d}.png"), (truth > 0.5).astype(np.uint8) * 255)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.resolved.ini").write_text(
        f'[eval]\nimage_datapath = ["{images}"]\nmask_datapath = ["{masks}"]\n', encoding="utf-8"
    )
    valid = sorted(str(p) for p in images.iterdir())
    (run / "split.json").write_text(json.dumps({"valid_files": valid, "train_files": []}), encoding="utf-8")
    return run


def test_export_fits_the_estimator_on_the_runs_validation_images(tmp_path):
    pytest.importorskip("onnx")
    from skinseg.exporters.quality_fit import fit_run_quality
    from skinseg.runtime.segmenter import Segmenter
    from tests.onnx_standins import identity_model, metadata_json, save

    model = save(identity_model(metadata=metadata_json((64, 64))), tmp_path / "model.onnx")
    report = fit_run_quality(model, _fake_run(tmp_path / "a", 36, wrong_every=4))
    assert report.model is not None and "fitted on the validation images" in report.message
    assert Segmenter(model).quality == report.model
    assert report.model.fitted["images"] == 36 and report.model.fitted["failures"] >= 9

    healthy = save(identity_model(metadata=metadata_json((64, 64))), tmp_path / "healthy.onnx")
    report = fit_run_quality(healthy, _fake_run(tmp_path / "b", 12, wrong_every=0, grow=0))
    assert report.model is None and "failures" in report.message and "generic" in report.message
    assert Segmenter(healthy).quality is GENERIC
    assert fit_run_quality(healthy, None).model is None


def test_evaluate_reports_the_estimate_beside_the_truth(tmp_path):
    from skinseg.data.evaluate import evaluate_folders
    from skinseg.runtime.segmenter import Segmenter
    from tests.onnx_standins import identity_model, metadata_json, save

    run = _fake_run(tmp_path, 16, wrong_every=4)
    model = save(identity_model(metadata=metadata_json((64, 64))), tmp_path / "m.onnx")
    images, masks = tmp_path / "val" / "images", tmp_path / "val" / "masks"
    done = evaluate_folders(Segmenter(model), images=images, masks=masks, output=run / "ev", model_path=model)
    rows = done.result.scored
    assert len(rows) == 16 and all(0 <= r.quality <= 1 and r.review in (0, 1) for r in rows)
    q = done.summary["quality"]
    assert q["review_below"] == pytest.approx(GENERIC.review_below, abs=1e-4)
    assert q["failures"] == sum(r.scores["jaccard"] < 0.65 for r in rows) >= 4
    assert q["flagged"] == sum(r.review for r in rows)
    assert q["spearman"] == pytest.approx(spearman([r.quality for r in rows], [r.scores["jaccard"] for r in rows]))
    header = (run / "ev" / "results.csv").read_text().splitlines()[0].split(",")
    assert "quality" in header and "review" in header
    everything = evaluate_folders(
        Segmenter(model), images=images, masks=masks, output=run / "ev2", model_path=model, review_below=1.0
    )
    assert everything.summary["quality"]["flagged"] == 16 and everything.summary["quality"]["recall"] == 1.0


def test_gallery_shows_masks_to_review_first_lowest_estimate_first_and_marked(tmp_path):
    from skinseg.runtime.gallery import write_gallery

    def row(name: str, quality: float, review: int) -> dict:
        return {
            "path": name, "status": "ok", "area_px": 100, "area_fraction": 0.2, "width": 100, "height": 100,
            "bbox_x": 30, "bbox_y": 30, "bbox_w": 40, "bbox_h": 40, "mean_prob": 0.95, "quality": quality,
            "review": review,
        }  # fmt: skip

    rows = [row("a.jpg", 0.91, 0), row("b.jpg", 0.62, 1), row("c.jpg", 0.35, 1), row("d.jpg", 0.88, 0)]
    page = write_gallery(tmp_path, [(r, None) for r in rows]).read_text(encoding="utf-8")
    order = [page.index(f">{n}<") for n in ("c.jpg", "b.jpg", "a.jpg")]
    assert order == sorted(order)  # flagged first, the lowest estimate first
    assert page.count("the quality estimate asks for a review") == 2 and "estimated Jaccard 0.35" in page
    assert "estimated Jaccard 0.91" in page  # every image shows its estimate


def test_model_info_names_the_estimator(tmp_path):
    from skinseg.commands.model import _lines, model_info
    from tests.onnx_standins import identity_model, metadata_json, save

    doc = json.loads(metadata_json((64, 64)))
    doc["quality"] = small_model(fitted={"images": 40, "failures": 9, "cross_validated": {"spearman": 0.7}}).to_dict()
    own = save(identity_model(metadata=json.dumps(doc)), tmp_path / "own.onnx")
    plain = save(identity_model(metadata=metadata_json((64, 64))), tmp_path / "plain.onnx")
    line = next(x for x in _lines(model_info(own)) if x.startswith("quality"))
    assert "its own estimator: review below 0.700; fitted on 40 images (9 failures)" in line and "spearman 0.70" in line
    line = next(x for x in _lines(model_info(plain)) if x.startswith("quality"))
    assert "generic estimator (the model carries none)" in line
