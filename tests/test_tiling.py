"""Tiling: plan, extract, blend. An identity predictor must give back its input exactly."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from skinseg.runtime.tiling import GaussianWeights, Stitcher, TileSpec, extract_tiles, plan_tiles, tiled_predict
from tests.onnx_standins import affine_model, identity_model


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (511, 237, 3), dtype=np.uint8)


def red(batch: np.ndarray) -> np.ndarray:
    return batch[..., 0] / 255.0


def session_fn(model) -> callable:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return lambda batch: session.run(None, {"image": batch})[0]


@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5])
@pytest.mark.parametrize("tile", [(64, 48), (100, 100), (600, 300)], ids=["64x48", "100", "larger"])
def test_identity_is_exact(image, tile, overlap):
    prob = tiled_predict(image, red, tile=tile, overlap=overlap, batch_size=3)
    assert prob.dtype == np.float32 and prob.shape == image.shape[:2]
    np.testing.assert_allclose(prob, image[..., 0] / 255.0, atol=1e-6)


@pytest.mark.parametrize("layout_overlap", [0.0, 0.25])
def test_onnx_identity_and_affine_standins(image, layout_overlap):
    ident = tiled_predict(image, session_fn(identity_model()), tile=(64, 64), overlap=layout_overlap, batch_size=5)
    np.testing.assert_allclose(ident, image[..., 0] / 255.0, atol=1e-6)
    affine = tiled_predict(
        image,
        session_fn(affine_model(weights=(2.0, 0.0, 0.0), bias=1.0)),
        tile=(64, 64),
        overlap=layout_overlap,
        batch_size=5,
    )
    np.testing.assert_allclose(affine, 2.0 * image[..., 0] + 1.0, rtol=1e-6, atol=1e-3)


def test_affine_numpy_predictor_on_gray_image():
    gray = np.random.default_rng(1).random((37, 53), dtype=np.float32)
    prob = tiled_predict(gray, lambda b: 2 * b + 1, tile=16, overlap=0.3, batch_size=7)
    np.testing.assert_allclose(prob, 2 * gray + 1, atol=1e-5)


def test_one_pixel_image():
    img = np.full((1, 1, 3), 200, np.uint8)
    np.testing.assert_allclose(tiled_predict(img, red, tile=8), [[200 / 255]], atol=1e-6)


def test_plan_covers_image_with_flush_last_tile():
    specs = plan_tiles(511, 237, (64, 48), 0.25)
    ys = sorted({s.y for s in specs})
    xs = sorted({s.x for s in specs})
    assert ys[0] == 0 and ys[-1] == 511 - 64 and np.diff(ys[:-1]).tolist() == [48] * (len(ys) - 2)
    assert xs[-1] == 237 - 48 and np.diff(xs[:-1]).tolist() == [36] * (len(xs) - 2)
    covered = np.zeros((511, 237), int)
    for s in specs:
        assert (s.h, s.w) == (64, 48) and not s.padded
        covered[s.y : s.y + s.h, s.x : s.x + s.w] += 1
    assert covered.min() >= 1


def test_plan_small_image_is_one_padded_tile():
    assert plan_tiles(30, 20, 64, 0.5) == [TileSpec(0, 0, 30, 20, 64, 64)]
    batch = extract_tiles(np.arange(30 * 20, dtype=np.float32).reshape(30, 20), plan_tiles(30, 20, 64))
    assert batch.shape == (1, 64, 64)
    assert batch[0, 30, 0] == batch[0, 28, 0]  # reflected, not zero-filled


@pytest.mark.parametrize("overlap", [-0.1, 1.0, 1.5, float("nan")])
def test_bad_overlap_is_named(overlap):
    with pytest.raises(ValueError, match=r"overlap must be .*\[0, 1\).*got"):
        plan_tiles(100, 100, 32, overlap)


@pytest.mark.parametrize("tile", [0, (32, 0), (32,), "32"])
def test_bad_tile_is_named(tile):
    with pytest.raises((ValueError, TypeError), match="tile"):
        plan_tiles(100, 100, tile)


def test_gaussian_weights():
    w = GaussianWeights((64, 48)).array
    assert w.shape == (64, 48) and w.dtype == np.float32
    assert w.max() == pytest.approx(1.0) and w.min() >= 1e-3
    np.testing.assert_allclose(w, w[::-1, ::-1])
    assert not w.flags.writeable


def test_stitcher_finalize_twice_and_add_after():
    st = Stitcher(4, 4)
    st.add(np.ones((1, 4, 4), np.float32), [TileSpec(0, 0, 4, 4, 4, 4)])
    first = st.finalize()
    assert st.finalize() is first
    np.testing.assert_array_equal(first, 1.0)
    with pytest.raises(RuntimeError, match="after finalize"):
        st.add(np.ones((1, 4, 4), np.float32), [TileSpec(0, 0, 4, 4, 4, 4)])


def test_progress_and_bad_predictor_shape(image):
    calls = []
    tiled_predict(image, red, tile=128, batch_size=4, on_tile=lambda d, t: calls.append((d, t)))
    total = len(plan_tiles(511, 237, 128, 0.25))
    assert calls[-1] == (total, total) and [d for d, _ in calls] == sorted(d for d, _ in calls)
    with pytest.raises(ValueError, match="predict_fn returned shape"):
        tiled_predict(image, lambda b: b[:, :10, :10, 0], tile=128)


def test_flip_tta_averages_the_four_flips_and_undoes_them():
    """An equivariant model gives the same map with flips; a model that sees only the left half is averaged with
    its mirror images, so every pixel ends up the mean of the four flipped predictions."""
    from skinseg.runtime.tiling import flip_tta

    rng = np.random.default_rng(0)
    batch = rng.uniform(0, 255, (3, 16, 24, 3)).astype(np.float32)
    calls = []

    def red(b):
        calls.append(len(b))
        return b[..., 0] / 255.0

    np.testing.assert_allclose(flip_tta(red)(batch), batch[..., 0] / 255.0, rtol=1e-6)
    assert calls == [12]  # the four variants in one call

    def left_only(b):
        out = np.zeros(b.shape[:3], np.float32)
        out[:, :, :12] = 1.0
        return out

    averaged = flip_tta(left_only)(batch)
    np.testing.assert_allclose(averaged, 0.5)  # left half from two variants, right half from the other two
