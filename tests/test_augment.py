"""Tests for skinseg.training.augment: image/mask alignment, reproducibility, photometric safety."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest

from skinseg.training.augment import (
    ARTEFACT_OPS,
    GEOMETRIC_OPS,
    PHOTOMETRIC_OPS,
    Augmenter,
    AugmentParams,
    describe_ops,
    preview_grid,
)

NO_OPS = {name: 0.0 for name in GEOMETRIC_OPS + PHOTOMETRIC_OPS}
# Strengths scaled to small test images; angles and shrinks chosen so that every draw moves pixels.
SMALL = dict(
    NO_OPS,
    angles=(30.0, 90.0, 135.0, 270.0),
    shrinks=(0.7, 0.85),
    shears=(0.2, -0.3),
    alpha=300.0,
    sigmas=(6.0, 8.0),
    distortions=(0.04,),
    barrel_centers=((0.4, 0.5), (0.6, 0.45)),
    pincushion_centers=((0.5, 0.5),),
)
SHAPES = [(96, 128), (128, 96), (112, 112)]
SEEDS = range(4)


def params(**overrides: float) -> AugmentParams:
    return AugmentParams(**{**SMALL, **overrides})


def lesion_pair(height: int, width: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Textured skin-like background with an irregular lesion whose mask is readable from the pixels.

    Red is exactly 0 outside the lesion and 255 inside, so ``red > 127`` recovers the mask even after
    bilinear resampling; green and blue carry texture everywhere.
    """
    rng = np.random.default_rng(seed)
    texture = cv2.GaussianBlur(rng.random((height, width, 2), dtype=np.float32), (0, 0), 2.0)
    texture = (texture - texture.min()) / (np.ptp(texture) + 1e-6)
    image = np.zeros((height, width, 3), np.uint8)
    image[..., 1:] = (60 + 150 * texture).astype(np.uint8)
    angles = np.linspace(0, 2 * np.pi, 90, endpoint=False)
    radius = 0.28 * min(height, width)
    wobble = sum(rng.uniform(0.04, 0.12) * np.cos(k * angles + rng.uniform(0, 6.3)) for k in (2, 3, 5))
    centre = np.array([0.45 * width, 0.55 * height])
    points = centre + (radius * (1 + wobble))[:, None] * np.stack([np.cos(angles), np.sin(angles)], -1)
    mask = np.zeros((height, width), np.uint8)
    cv2.fillPoly(mask, [np.round(points).astype(np.int32)], 255)
    image[..., 0] = mask
    return image, mask


def mask_from_image(image: np.ndarray) -> np.ndarray:
    return image[..., 0] > 127


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


@pytest.mark.parametrize("op", [*GEOMETRIC_OPS, "all"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_geometric_ops_keep_image_and_mask_aligned(op: str, shape: tuple[int, int]) -> None:
    forced = {name: 1.0 for name in GEOMETRIC_OPS} if op == "all" else {op: 1.0}
    augment = Augmenter(params(**forced))
    image, mask = lesion_pair(*shape)
    for seed in SEEDS:
        out_image, out_mask = augment(image, mask, np.random.default_rng(seed))
        assert not np.array_equal(out_mask, mask), f"{op} did not move the mask (seed {seed})"
        assert iou(mask_from_image(out_image), out_mask > 0) >= 0.99, f"{op} misaligned (seed {seed})"


@pytest.mark.parametrize("border", ["reflect", "replicate", "constant"])
def test_alignment_holds_for_every_border_mode(border: str) -> None:
    augment = Augmenter(params(border=border, **{name: 1.0 for name in GEOMETRIC_OPS}))
    image, mask = lesion_pair(96, 128, seed=3)
    out_image, out_mask = augment(image, mask, np.random.default_rng(7))
    assert iou(mask_from_image(out_image), out_mask > 0) >= 0.99


def test_flips_and_right_angle_rotations_are_exact() -> None:
    image, mask = lesion_pair(64, 64)
    out_image, out_mask = Augmenter(params(hflip=1.0))(image, mask, np.random.default_rng(0))
    np.testing.assert_array_equal(out_image, image[:, ::-1])
    np.testing.assert_array_equal(out_mask, mask[:, ::-1])
    out_image, out_mask = Augmenter(params(rotation=1.0, angles=(90.0,)))(image, mask, np.random.default_rng(0))
    assert any(np.array_equal(out_mask, np.rot90(mask, k)) for k in (1, 3))
    assert any(np.array_equal(out_image, np.rot90(image, k)) for k in (1, 3))


@pytest.mark.parametrize("angle", [0.0, 90.0, 180.0, 270.0])
@pytest.mark.parametrize("shape", [(64, 64), (48, 64)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_pixel_permuting_shortcut_matches_the_general_warp(angle: float, shape: tuple[int, int]) -> None:
    """Flips and right-angle turns skip resampling; a hair-off angle forces warpAffine for comparison."""
    image, mask = lesion_pair(*shape)
    for seed in range(4):
        fast = Augmenter(params(hflip=0.5, vflip=0.5, rotation=1.0, angles=(angle,)))
        slow = Augmenter(params(hflip=0.5, vflip=0.5, rotation=1.0, angles=(angle + 1e-7,)))
        for got, expected in zip(
            fast(image, mask, np.random.default_rng(seed)), slow(image, mask, np.random.default_rng(seed))
        ):
            np.testing.assert_array_equal(got, expected)


def test_non_rigid_map_reproduces_the_affine_warp() -> None:
    """An identity non-rigid op sends the affine through the control-grid remap: same pixels, edges too."""
    image, mask = lesion_pair(96, 128)
    affine = dict(rotation=1.0, angles=(30.0,), shear=1.0, shrink=1.0)
    direct = Augmenter(params(**affine))(image, mask, np.random.default_rng(0))
    remapped = Augmenter(params(**affine, barrel=1.0, barrel_amount=0.0))(image, mask, np.random.default_rng(0))
    assert np.abs(direct[0].astype(int) - remapped[0].astype(int)).max() <= 1
    assert np.count_nonzero(direct[1] != remapped[1]) <= 2


def test_mask_is_neither_dilated_nor_eroded() -> None:
    image, mask = lesion_pair(128, 128)
    augment = Augmenter(params(rotation=1.0, angles=(30.0,)))
    _, rotated = augment(image, mask, np.random.default_rng(0))
    assert abs(np.count_nonzero(rotated) / np.count_nonzero(mask) - 1.0) < 0.02
    _, shrunk = Augmenter(params(shrink=1.0, shrinks=(0.5,)))(image, mask, np.random.default_rng(0))
    # the shrunk lesion, plus whatever the reflected border shows; the centre crop holds the copy
    centre = shrunk[32:96, 32:96]
    assert abs(np.count_nonzero(centre) / np.count_nonzero(mask) - 0.25) < 0.02


def test_same_seed_same_output_and_different_seeds_differ() -> None:
    augment = Augmenter(params(**{name: 1.0 for name in GEOMETRIC_OPS + PHOTOMETRIC_OPS}))
    image, mask = lesion_pair(96, 128)
    first = augment(image, mask, np.random.default_rng(42))
    second = augment(image, mask, np.random.default_rng(42))
    other = augment(image, mask, np.random.default_rng(43))
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])
    assert not np.array_equal(first[0], other[0])
    assert not np.array_equal(first[1], other[1])


@pytest.mark.parametrize("op", PHOTOMETRIC_OPS)
def test_photometric_ops_change_the_image_only(op: str) -> None:
    image, mask = lesion_pair(96, 128)
    out_image, out_mask = Augmenter(params(**{op: 1.0}))(image, mask, np.random.default_rng(1))
    np.testing.assert_array_equal(out_mask, mask)
    assert out_image.shape == image.shape and out_image.dtype == np.uint8
    assert not np.array_equal(out_image, image)


@pytest.mark.parametrize("level", [5, 250])
def test_photometric_ops_saturate_instead_of_wrapping(level: int) -> None:
    image = np.full((48, 64, 3), level, np.uint8)
    image[10:20, 10:20] = 255 - level  # an edge, so sharpening has work to do
    mask = np.zeros((48, 64), np.uint8)
    strong = params(contrast_alpha=1.5, brightness_beta=40.0, sharpen_k=2.0, noise_std=20.0)
    strong = dataclasses.replace(strong, **{name: 1.0 for name in PHOTOMETRIC_OPS})
    for seed in range(8):
        out_image, _ = Augmenter(strong)(image, mask, np.random.default_rng(seed))
        flat = out_image[30:, 30:].astype(int)  # far from the edge
        if level == 250:
            assert flat.min() > 120, "bright pixels wrapped around to dark"
        else:
            assert flat.max() < 130, "dark pixels wrapped around to bright"
    brightened, _ = Augmenter(params(brightness_contrast=1.0, contrast_alpha=1.0, brightness_beta=40.0))(
        np.full((8, 8, 3), 250, np.uint8), np.zeros((8, 8), np.uint8), np.random.default_rng(0)
    )
    assert brightened.min() >= 210  # 250 + beta in [-40, 40], clipped at 255


def test_zero_probabilities_are_identity() -> None:
    image, mask = lesion_pair(96, 128)
    out_image, out_mask = Augmenter(AugmentParams(**NO_OPS))(image, mask, np.random.default_rng(0))
    np.testing.assert_array_equal(out_image, image)
    np.testing.assert_array_equal(out_mask, mask)
    assert out_image is not image and out_mask is not mask


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_output_shapes_dtypes_and_binary_mask(shape: tuple[int, int]) -> None:
    augment = Augmenter(params(**{name: 0.5 for name in GEOMETRIC_OPS + PHOTOMETRIC_OPS}))
    image, mask = lesion_pair(*shape)
    rng = np.random.default_rng(0)
    for _ in range(6):
        out_image, out_mask = augment(image, mask, rng)
        assert out_image.shape == image.shape and out_image.dtype == np.uint8
        assert out_mask.shape == mask.shape and out_mask.dtype == np.uint8
        assert set(np.unique(out_mask)) <= {0, 255}


def test_default_params_run_and_inputs_are_validated() -> None:
    image, mask = lesion_pair(64, 80)
    out_image, out_mask = Augmenter(AugmentParams())(image, mask, np.random.default_rng(0))
    assert out_image.shape == image.shape and out_mask.shape == mask.shape
    with pytest.raises(ValueError):
        Augmenter(AugmentParams())(image[..., 0], mask, np.random.default_rng(0))
    with pytest.raises(ValueError):
        Augmenter(AugmentParams())(image, mask[:-1], np.random.default_rng(0))
    with pytest.raises(ValueError):
        AugmentParams(rotation=1.5)
    with pytest.raises(ValueError):
        AugmentParams(shrink=1.0, shrinks=())
    with pytest.raises(ValueError):
        AugmentParams(border="wrap")  # type: ignore[arg-type]


def test_config_lists_become_tuples() -> None:
    loaded = AugmentParams(angles=[90, 180], barrel_centers=[[0.3, 0.3], [0.7, 0.7]])  # type: ignore[arg-type]
    assert loaded.angles == (90, 180)
    assert loaded.barrel_centers == ((0.3, 0.3), (0.7, 0.7))
    hash(loaded)


def test_op_registry_is_documented() -> None:
    descriptions = describe_ops()
    assert tuple(descriptions) == GEOMETRIC_OPS + ARTEFACT_OPS + PHOTOMETRIC_OPS
    assert all(text for text in descriptions.values())


@pytest.mark.parametrize("op", ARTEFACT_OPS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_artefacts_draw_on_the_image_and_leave_the_mask(op: str, shape: tuple[int, int]) -> None:
    """Hair, ink, rulers, vignettes and colour casts are drawn on the image only: the lesion under them is still
    lesion, so the mask comes out unchanged; a seed reproduces the drawing exactly."""
    image, mask = lesion_pair(*shape)
    augment = Augmenter(params(**{op: 1.0}))
    for seed in range(4):
        out_image, out_mask = augment(image, mask, np.random.default_rng(seed))
        np.testing.assert_array_equal(out_mask, mask)
        assert out_image.shape == image.shape and out_image.dtype == np.uint8
        assert not np.array_equal(out_image, image)
        np.testing.assert_array_equal(out_image, augment(image, mask, np.random.default_rng(seed))[0])


def test_artefacts_look_like_what_they_imitate() -> None:
    """Hair darkens thin lines, ink is purple-blue and sits on the skin, a vignette darkens the corners only."""
    grey = np.full((128, 128, 3), 200, np.uint8)
    mask = np.zeros((128, 128), np.uint8)
    mask[40:88, 40:88] = 255
    rng = np.random.default_rng(3)
    for seed in range(6):
        haired, _ = Augmenter(params(hair=1.0))(grey, mask, np.random.default_rng(seed))
        changed = np.any(haired != grey, axis=-1)
        assert haired[changed].max() <= 200 and changed.mean() < 0.5  # darker, and thin
        inked, _ = Augmenter(params(ink=1.0))(grey, mask, np.random.default_rng(seed))
        touched = np.any(inked != grey, axis=-1)
        pixels = inked[touched].astype(int)
        assert (pixels[:, 2] > pixels[:, 1]).mean() > 0.9  # blue above green: violet to blue
        assert touched[mask == 0].mean() > touched[mask > 0].mean()  # drawn around the lesion, not on it
        dark, _ = Augmenter(params(vignette=1.0))(grey, mask, rng)
        assert dark[0, 0].max() < 120 and dark[64, 64].min() == 200


def test_artefacts_are_validated() -> None:
    with pytest.raises(ValueError):
        AugmentParams(hair=1.5)
    with pytest.raises(ValueError):
        AugmentParams(max_hairs=0)


def test_preview_grid_tiles_pairs_with_outlines() -> None:
    pairs = [lesion_pair(96, 128, seed) for seed in range(5)]
    sheet = preview_grid(pairs, columns=4, cell=64)
    assert sheet.shape == (128, 256, 3) and sheet.dtype == np.uint8
    outline = np.all(sheet == (0, 255, 0), axis=-1)
    assert outline[:64, :64].any() and outline[64:, :64].any()
    assert not sheet[64:, 64:].any()  # empty cells stay black
    with pytest.raises(ValueError):
        preview_grid([])
