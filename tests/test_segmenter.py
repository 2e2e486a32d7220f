"""Segmenter end to end with stand-in ONNX models (mask = red / 255), its model checks, its tile cap and its
one-line messages."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from skinseg.runtime.defaults import DEFAULT_FILL_HOLES, DEFAULT_KEEP_LARGEST
from skinseg.runtime.errors import ImageError, ModelError, UsageError
from skinseg.runtime.metadata import Scale
from skinseg.runtime.segmenter import Segmenter
from tests.onnx_standins import affine_model, identity_model, metadata_json, odd_input_model, save
from tests.support import jpeg_bytes

ROOT = Path(__file__).resolve().parents[1]
PLAIN = {"keep_largest": False, "fill_holes": False, "threads": 1}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("models")
    return {
        "nhwc": save(identity_model(metadata=metadata_json((64, 64))), d / "nhwc.onnx"),
        "nchw": save(identity_model(layout="nchw", metadata=metadata_json((64, 64), layout="nchw")), d / "nchw.onnx"),
        "bare": save(identity_model(), d / "bare.onnx"),
        "half": save(identity_model(metadata=metadata_json((32, 32), Scale("factor", 0.5))), d / "half.onnx"),
        "quarter": save(identity_model(metadata=metadata_json((32, 32), Scale("factor", 0.25))), d / "q.onnx"),
        "fixed": save(identity_model(metadata=metadata_json((48, 48)), spatial=(48, 48), batch=1), d / "fixed.onnx"),
    }


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (200, 300, 3), dtype=np.uint8)


def smooth(h: int, w: int) -> np.ndarray:
    """A gentle gradient: resizing it changes values by at most a grey level or two."""
    y, x = np.mgrid[0:h, 0:w]
    red = 40 + 170 * (x / w) * (0.5 + 0.5 * y / h)
    return np.stack([red, np.full_like(red, 90), 255 - red], axis=-1).round().astype(np.uint8)


@pytest.mark.parametrize("layout", ["nhwc", "nchw"])
def test_identity_at_native_scale_is_exact(models, image, layout):
    seg = Segmenter(models[layout], **PLAIN)
    assert seg.layout == layout and seg.provider == "CPUExecutionProvider" and seg.tile == (64, 64)
    result = seg.segment(image)
    assert result.prob.dtype == np.uint8 and result.prob.shape == (200, 300)
    np.testing.assert_array_equal(result.prob, image[..., 0])
    np.testing.assert_array_equal(result.mask, np.where(image[..., 0] > 127.5, 255, 0))
    assert result.scale_factor == 1.0 and result.working_size == (300, 200) and result.tiles > 1
    assert result.stats["area_px"] == int((image[..., 0] >= 128).sum())
    assert result.provider == "CPUExecutionProvider" and result.seconds > 0


def test_scaled_model_returns_full_size(models):
    img = smooth(203, 301)
    calls = []
    result = Segmenter(models["half"], **PLAIN).segment(img, on_tile=lambda d, t: calls.append((d, t)))
    assert result.mask.shape == (203, 301) and result.working_size == (150, 102)
    assert np.abs(result.prob.astype(int) - img[..., 0]).max() <= 3
    assert calls[-1][0] == calls[-1][1] == result.tiles


def test_segment_file_is_what_infer_and_evaluate_segment(models, tmp_path):
    """The API, `skinseg infer` and `skinseg evaluate` segment the same pixels: the file decoded whole."""
    from skinseg.runtime.imageio import read_image

    img = smooth(240, 320)
    path = tmp_path / "photo.jpg"
    path.write_bytes(jpeg_bytes(img))
    seg = Segmenter(models["quarter"], **PLAIN)
    result = seg.segment_file(path)
    assert result.mask.shape == (240, 320) and result.working_size == (80, 60)
    np.testing.assert_array_equal(result.prob, seg.segment(read_image(path)).prob)
    assert np.abs(result.prob.astype(int) - img[..., 0]).mean() < 3

    path.write_bytes(jpeg_bytes(img, orientation=6))  # turned 90°: the mask follows the displayed photo
    turned = seg.segment_file(path)
    assert turned.mask.shape == (320, 240)
    assert np.abs(turned.prob.astype(int) - np.rot90(img, -1)[..., 0]).mean() < 3
    with pytest.raises(ImageError, match="not found"):
        seg.segment_file(tmp_path / "missing.png")


def test_an_absurd_working_size_fails_the_image_not_the_machine(models):
    seg = Segmenter(models["nhwc"], threads=1, scale="short:256")
    with pytest.raises(ImageError, match="smaller scale"):
        seg.segment(np.zeros((1, 3000, 3), np.uint8))  # a strip: 256 × 768,000 px of work
    assert seg.segment(np.zeros((150, 200, 3), np.uint8)).mask.shape == (150, 200)  # upscaling a small photo is fine


def test_a_tile_the_model_cannot_take_is_a_usage_error(models):
    from skinseg.runtime.model_cache import default_model_path

    with pytest.raises(UsageError, match="tile must be"):
        Segmenter(models["nhwc"], tile=100000)
    with pytest.raises(UsageError, match="7×7 tiles.*multiple of"):  # a UNet with 4 poolings needs multiples of 16
        Segmenter(default_model_path(), tile=7, threads=1)


def test_postprocessing_options(models):
    img = np.zeros((80, 80, 3), np.uint8)
    img[10:50, 10:50, 0] = 255
    img[25:30, 25:30, 0] = 0  # hole
    img[65:70, 65:70, 0] = 255  # speck
    seg = Segmenter(models["nhwc"], threads=1)
    assert (seg.keep_largest, seg.fill_holes) == (DEFAULT_KEEP_LARGEST, DEFAULT_FILL_HOLES) == (False, True)
    result = seg.segment(img)
    assert result.stats["n_components"] == 2 and result.stats["area_px"] == 40 * 40 + 5 * 5  # hole filled
    both = Segmenter(models["nhwc"], threads=1, keep_largest=True, fill_holes=True).segment(img)
    assert both.stats["n_components"] == 1 and both.stats["area_px"] == 40 * 40


def test_model_without_metadata_needs_tile_and_scale(models, image):
    with pytest.raises(ModelError, match="no skinseg metadata.*tile=256 scale=0.25") as info:
        Segmenter(models["bare"])
    assert "\n" not in str(info.value)
    with pytest.raises(ModelError, match="no skinseg metadata"):
        Segmenter(models["bare"], tile=64)
    seg = Segmenter(models["bare"], tile=64, scale="native", **PLAIN)
    assert seg.metadata is None and seg.threshold == 0.5
    np.testing.assert_array_equal(seg.segment(image).prob, image[..., 0])


def test_metadata_threshold_colour_order_and_value_range(tmp_path, image):
    path = save(identity_model(metadata=metadata_json(threshold=0.8)), tmp_path / "t.onnx")
    seg = Segmenter(path, **PLAIN)
    assert seg.threshold == 0.8
    assert (seg.segment(image).mask > 0).sum() == (image[..., 0] > 204).sum()
    assert Segmenter(path, threshold=0.3, **PLAIN).threshold == 0.3

    bgr = save(identity_model(metadata=metadata_json(color_order="bgr")), tmp_path / "bgr.onnx")
    np.testing.assert_array_equal(Segmenter(bgr, **PLAIN).segment(image).prob, image[..., 2])

    unit = save(
        affine_model(weights=(1.0, 0.0, 0.0), metadata=metadata_json(value_range=[0.0, 1.0])),
        tmp_path / "unit.onnx",
    )
    np.testing.assert_array_equal(Segmenter(unit, **PLAIN).segment(image).prob, image[..., 0])


def test_fixed_size_model(models, image):
    seg = Segmenter(models["fixed"], batch_size=4, **PLAIN)
    assert seg.batch_size == 1
    np.testing.assert_array_equal(seg.segment(image).prob, image[..., 0])
    with pytest.raises(ModelError, match="fixed at 48 px but the tile is 64×64; use tile=48"):
        Segmenter(models["fixed"], tile=64)


def test_fixed_batch_of_two_pads_the_last_batch(tmp_path, image):
    path = save(identity_model(metadata=metadata_json((64, 64)), batch=2), tmp_path / "b2.onnx")
    seg = Segmenter(path, **PLAIN)
    assert seg.batch_size == 2
    np.testing.assert_array_equal(seg.segment(image[:100, :130]).prob, image[:100, :130, 0])


@pytest.mark.parametrize(
    ("shape", "match"),
    [
        (["N", "H", "W"], "rank 3.*4-D image batch"),
        (["N", "H", "W", 4], "3-channel"),
        (["N", 1, "H", "W"], "3-channel"),
        (["N", "C", "H", "W"], "3-channel"),
    ],
)
def test_wrong_input_shapes(tmp_path, shape, match):
    path = save(odd_input_model(shape), tmp_path / "odd.onnx")
    with pytest.raises(ModelError, match=match) as info:
        Segmenter(path, tile=64, scale="native")
    assert "odd.onnx" in str(info.value) and "\n" not in str(info.value)


def test_bad_model_files(tmp_path, models):
    text = tmp_path / "notes.onnx"
    text.write_text("this is not a model\n")
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(models["nhwc"].read_bytes()[:150])
    for path in (text, cut):
        with pytest.raises(ModelError, match="not a loadable ONNX model") as info:
            Segmenter(path)
        assert path.name in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ModelError, match="file not found"):
        Segmenter(tmp_path / "nope.onnx")
    with pytest.raises(ModelError, match="is a directory"):
        Segmenter(tmp_path)


def test_bad_metadata_and_options(tmp_path, models):
    broken = save(identity_model(metadata="{not json"), tmp_path / "broken.onnx")
    with pytest.raises(ModelError, match="broken.onnx: skinseg metadata is not valid JSON"):
        Segmenter(broken)
    future = save(identity_model(metadata=json.dumps({"format_version": 99})), tmp_path / "f.onnx")
    with pytest.raises(ModelError, match="format_version 99"):
        Segmenter(future)
    for kwargs, match in [
        ({"overlap": 1.0}, "^overlap must"),
        ({"batch_size": 0}, "^batch_size must"),
        ({"threads": 0}, "^threads must"),
        ({"threshold": 2.0}, "^threshold must"),
        ({"scale": "big"}, "^scale: "),
        ({"tile": (0, 5)}, "^tile must"),
        ({"device": "gpu"}, "^device='gpu'"),
    ]:
        with pytest.raises(UsageError, match=match):
            Segmenter(models["nhwc"], **kwargs)


def test_bad_image_arrays(models):
    seg = Segmenter(models["nhwc"], **PLAIN)
    with pytest.raises(ImageError, match="uint8"):
        seg.segment(np.zeros((10, 10, 3), np.float32))
    with pytest.raises(ImageError, match="H×W×3"):
        seg.segment(np.zeros((10, 10, 2), np.uint8))
    gray = np.full((20, 20), 200, np.uint8)
    np.testing.assert_array_equal(seg.segment(gray).prob, gray)


def test_runtime_never_imports_tensorflow(models, tmp_path):
    script = textwrap.dedent(
        f"""
        import sys
        import numpy as np
        import skinseg.runtime
        from skinseg.runtime.segmenter import Segmenter
        from skinseg.runtime.tiling import tiled_predict
        seg = Segmenter({str(models["nhwc"])!r}, threads=1)
        seg.segment(np.zeros((70, 90, 3), np.uint8))
        tiled_predict(np.zeros((9, 9, 3)), lambda b: b[..., 0], tile=4)
        bad = sorted(m for m in ("tensorflow", "keras", "tf2onnx", "onnx") if m in sys.modules)
        print("IMPORTED:", bad)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120, check=True
    )
    assert "IMPORTED: []" in out.stdout, out.stdout + out.stderr


def test_colour_constancy_in_the_metadata_is_applied_before_the_model(tmp_path):
    """A model trained with Shades of Gray gets it at inference: the identity model then returns the corrected red."""
    from skinseg.runtime.preprocess import apply_color_constancy

    img = smooth(120, 160)
    img[..., 1] = (img[..., 1] * 0.7).astype(np.uint8)  # a green-poor cast
    meta = metadata_json(color_constancy={"method": "shades_of_gray", "p": 6})
    seg = Segmenter(save(identity_model(metadata=meta), tmp_path / "sog.onnx"), **PLAIN)
    assert seg.color_constancy == {"method": "shades_of_gray", "p": 6.0}
    np.testing.assert_array_equal(seg.segment(img).prob, apply_color_constancy(img)[..., 0])
    plain = Segmenter(save(identity_model(metadata=metadata_json()), tmp_path / "plain.onnx"), **PLAIN)
    np.testing.assert_array_equal(plain.segment(img).prob, img[..., 0])
    with pytest.raises(ModelError, match="color_constancy"):
        Segmenter(save(identity_model(metadata=metadata_json(color_constancy={"method": "x"})), tmp_path / "b.onnx"))


def test_tta_and_postprocessing_follow_the_model_unless_given(tmp_path, image):
    """The metadata's recommendations are the defaults; an option given wins; flips of an identity are exact."""
    meta = metadata_json(tta=True, keep_largest=True, fill_holes=False)
    path = save(identity_model(metadata=meta), tmp_path / "rec.onnx")
    seg = Segmenter(path, threads=1)
    assert (seg.tta, seg.keep_largest, seg.fill_holes) == (True, True, False)
    assert seg.settings()["tta"] is True
    given = Segmenter(path, threads=1, tta=False, keep_largest=False, fill_holes=True)
    assert (given.tta, given.keep_largest, given.fill_holes) == (False, False, True)
    np.testing.assert_array_equal(
        Segmenter(path, tta=True, **PLAIN).segment(image).prob, Segmenter(path, tta=False, **PLAIN).segment(image).prob
    )
    with pytest.raises(ModelError, match="tta must be"):
        Segmenter(save(identity_model(metadata=metadata_json(tta="yes")), tmp_path / "bad.onnx"))


def test_timings_cover_the_phases(models, tmp_path):
    """Each phase is recorded as data in the result (what the benchmark reads), and they add up to the total."""
    from skinseg.runtime.segmenter import PHASES

    path = tmp_path / "photo.jpg"
    path.write_bytes(jpeg_bytes(smooth(240, 320)))
    result = Segmenter(models["quarter"], **PLAIN).segment_file(path)
    assert tuple(result.timings) == PHASES and all(v >= 0 for v in result.timings.values())
    assert result.timings["decode"] > 0 and result.timings["model"] > 0
    assert sum(result.timings.values()) <= result.seconds * 1.01 + 1e-3


def test_a_backend_other_than_onnx_runs_the_same_pipeline(models, image):
    """Any object with the Backend attributes plugs in: here one that returns the green channel."""
    from skinseg.runtime.segmenter import OnnxBackend

    class Green:
        model_path = models["nhwc"]
        metadata = OnnxBackend(models["nhwc"], threads=1).metadata
        fixed_tile = (None, None)
        fixed_batch = None
        provider = "green"

        def predict(self, batch):
            return batch[..., 1] / 255.0

    seg = Segmenter(Green(), **PLAIN)
    assert seg.provider == "green" and seg.tile == (64, 64)
    np.testing.assert_array_equal(seg.segment(image).prob, image[..., 1])


# ------------------------------------------------------------------------------------------------- tiles and messages


def test_a_tile_larger_than_the_working_image_is_capped(model):
    seg = Segmenter(model, tile=4000, scale="native")
    assert seg._tile_for((100, 90)) == (128, 128)  # the working image rounded up to 64 px, never below the model's
    assert seg._tile_for((5000, 5000)) == (4000, 4000)  # a large image keeps the tile asked for


def test_an_out_of_memory_message_is_kept_whole():
    from skinseg.runtime.errors import one_line

    raw = "[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Failed to allocate memory for requested buffer of size 98765"
    said = one_line(RuntimeError(raw + " " + "x" * 400 + "\nstack"))
    assert said == "out of memory: use a smaller tile or batch_size, or free memory"
    long = " ".join(["word"] * 200)
    assert one_line(RuntimeError(long)).endswith("word …") and len(one_line(RuntimeError(long))) <= 300
