"""Colour constancy (Shades of Gray): what it corrects, what it leaves alone, and that training and the runtime
apply the same function."""

from __future__ import annotations

import numpy as np
import pytest

from skinseg.runtime.preprocess import apply_color_constancy, check_color_constancy, shades_of_gray_gains


def scene(seed: int = 0) -> np.ndarray:
    """A textured, roughly neutral scene: skin-grey background with a darker blob."""
    rng = np.random.default_rng(seed)
    image = rng.normal(150, 25, (64, 80, 1)).clip(0, 255) * np.ones(3)
    image[20:44, 25:55] *= 0.5
    return image.astype(np.uint8)


def cast(image: np.ndarray, gains: tuple[float, float, float]) -> np.ndarray:
    return np.clip(image.astype(np.float32) * np.array(gains, np.float32), 0, 255).round().astype(np.uint8)


def chromaticity(image: np.ndarray) -> np.ndarray:
    """Each pixel's colour without its brightness: ``rgb / (r + g + b)``."""
    x = image.astype(np.float64) + 1.0
    return x / x.sum(axis=-1, keepdims=True)


@pytest.mark.parametrize("gains", [(1.25, 1.0, 0.8), (0.8, 1.0, 1.2), (1.0, 0.75, 1.0)])
def test_a_colour_cast_is_removed(gains):
    """The same scene under two illuminants comes out with the same colours (Shades of Gray keeps the
    illuminant's strength, so brightness may move by a few percent); the cast moved them 5–10 times more."""
    neutral = chromaticity(apply_color_constancy(scene()))
    corrected = chromaticity(apply_color_constancy(cast(scene(), gains)))
    before = np.abs(chromaticity(cast(scene(), gains)) - chromaticity(scene())).mean()
    after = np.abs(corrected - neutral).mean()
    assert after < before / 5, (before, after)


def test_a_gray_image_is_left_alone_and_none_is_identity():
    gray = scene()
    np.testing.assert_allclose(shades_of_gray_gains(gray), 1.0, atol=1e-6)
    assert np.abs(apply_color_constancy(gray).astype(int) - gray).max() <= 1
    assert apply_color_constancy(gray, "none") is gray


def test_degenerate_images_do_not_blow_up():
    black = np.zeros((8, 8, 3), np.uint8)
    np.testing.assert_array_equal(apply_color_constancy(black), black)
    red_only = np.zeros((8, 8, 3), np.uint8)
    red_only[..., 0] = 200
    out = apply_color_constancy(red_only)
    assert out.dtype == np.uint8 and out.shape == red_only.shape  # gains are capped: no overflow, no NaN


def test_settings_are_checked():
    assert check_color_constancy("Shades_of_Gray", 6) == ("shades_of_gray", 6.0)
    with pytest.raises(ValueError, match="none, shades_of_gray"):
        check_color_constancy("grey_world", 6)
    with pytest.raises(ValueError, match="from 1 to 64"):
        check_color_constancy("shades_of_gray", 0)
    with pytest.raises(ValueError):
        shades_of_gray_gains(np.zeros((4, 4), np.uint8))


def test_training_examples_get_the_runtime_function(tmp_path):
    """Training applies exactly skinseg.runtime.preprocess at the model scale (one function, two callers)."""
    import cv2

    from skinseg.data.pairing import Pair
    from skinseg.runtime.imageio import read_image
    from skinseg.training.data import SampleSpec, load_example

    image = cast(scene(1), (1.2, 1.0, 0.85))
    cv2.imwrite(str(tmp_path / "a.png"), image[..., ::-1])
    cv2.imwrite(str(tmp_path / "a_mask.png"), np.zeros((64, 80), np.uint8))
    pair = Pair(tmp_path / "a.png", tmp_path / "a_mask.png")
    spec = SampleSpec(tile=(32, 40), color_constancy="shades_of_gray")
    got, _ = load_example(pair, spec)
    small = cv2.resize(read_image(tmp_path / "a.png"), (40, 32), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(got, apply_color_constancy(small))
    plain, _ = load_example(pair, SampleSpec(tile=(32, 40)))
    np.testing.assert_array_equal(plain, small)
