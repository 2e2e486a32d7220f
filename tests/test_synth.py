"""Tests for the synthetic dermoscopy generator (small images only: the whole file runs in seconds)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from skinseg.data.synth import parse_size, synthesize, write_dataset
from skinseg.runtime.errors import UsageError

SEEDS = range(8)


def _make(seed: int, width: int = 128, height: int = 96) -> tuple[np.ndarray, np.ndarray]:
    return synthesize(width, height, np.random.default_rng(seed))


@pytest.mark.parametrize(("width", "height"), [(128, 96), (96, 64), (64, 160), (32, 32)])
def test_shapes_dtypes_and_values(width: int, height: int) -> None:
    image, mask = _make(0, width, height)
    assert image.shape == (height, width, 3)
    assert mask.shape == (height, width)
    assert image.dtype == np.uint8
    assert mask.dtype == np.uint8
    assert set(np.unique(mask).tolist()) == {0, 255}


@pytest.mark.parametrize("seed", SEEDS)
def test_lesion_covers_part_of_the_image(seed: int) -> None:
    _, mask = _make(seed)
    fraction = float(np.count_nonzero(mask)) / mask.size
    assert 0.03 < fraction < 0.75


@pytest.mark.parametrize("seed", SEEDS)
def test_mask_marks_the_darker_painted_lesion(seed: int) -> None:
    image, mask = _make(seed, 160, 120)
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float64)
    # Compare with the skin just around the lesion, leaving out hair and vignette (near-black pixels).
    ring = cv2.dilate(mask, np.ones((15, 15), np.uint8)) > mask
    lesion = mask > 0
    skin = ring & (gray > 40)
    assert gray[lesion].mean() < gray[skin].mean() - 5


def test_mask_edge_is_an_image_edge() -> None:
    """Across the mask outline the image changes more than elsewhere: the mask marks what was painted."""
    diffs = []
    for seed in SEEDS:
        image, mask = _make(seed, 160, 120)
        gray = cv2.GaussianBlur(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), (3, 3), 0).astype(np.float32)
        magnitude = np.hypot(cv2.Sobel(gray, cv2.CV_32F, 1, 0), cv2.Sobel(gray, cv2.CV_32F, 0, 1))
        outline = cv2.morphologyEx(mask, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0
        diffs.append(magnitude[outline].mean() / magnitude[~outline].mean())
    assert np.median(diffs) > 1.5


def test_same_seed_same_arrays() -> None:
    first, second = _make(7), _make(7)
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])


def test_different_seeds_differ() -> None:
    (image_a, mask_a), (image_b, mask_b) = _make(1), _make(2)
    assert not np.array_equal(image_a, image_b)
    assert not np.array_equal(mask_a, mask_b)


def test_synthesize_rejects_tiny_sizes() -> None:
    with pytest.raises(ValueError, match="10x64"):
        synthesize(10, 64, np.random.default_rng(0))


def test_write_dataset_layout(tmp_path: Path) -> None:
    calls: list[tuple[int, int]] = []
    pairs = write_dataset(tmp_path, count=3, size=(96, 64), seed=5, on_progress=lambda *a: calls.append(a))
    assert calls == [(1, 3), (2, 3), (3, 3)]
    assert [(p.relative_to(tmp_path).as_posix(), q.relative_to(tmp_path).as_posix()) for p, q in pairs] == [
        (f"images/synth_{i:05d}.jpg", f"masks/synth_{i:05d}_mask.png") for i in range(3)
    ]
    assert sorted(p.name for p in tmp_path.rglob("*")) == sorted(
        ["images", "masks"] + [p.name for pair in pairs for p in pair]
    )  # no leftover temporary files
    for image_path, mask_path in pairs:
        image = cv2.imread(str(image_path), cv2.IMREAD_UNCHANGED)
        mask = cv2.imread(str(mask_path), cv2.IMREAD_UNCHANGED)
        assert image.shape == (64, 96, 3)
        assert mask.shape == (64, 96)
        assert mask.dtype == np.uint8
        assert set(np.unique(mask).tolist()) == {0, 255}


def test_write_dataset_is_deterministic_and_matches_synthesize(tmp_path: Path) -> None:
    first = write_dataset(tmp_path / "a", count=2, size=(96, 64), seed=11)
    second = write_dataset(tmp_path / "b", count=3, size=(96, 64), seed=11)
    for (image_a, mask_a), (image_b, mask_b) in zip(first, second[:2], strict=True):
        assert image_a.read_bytes() == image_b.read_bytes()
        assert mask_a.read_bytes() == mask_b.read_bytes()
    other = write_dataset(tmp_path / "c", count=1, size=(96, 64), seed=12)
    assert other[0][1].read_bytes() != first[0][1].read_bytes()
    # The saved JPEG is the RGB image in BGR order: colours survive a round trip.
    rng = np.random.default_rng(np.random.SeedSequence(11, spawn_key=(0,)))
    image, mask = synthesize(96, 64, rng)
    decoded = cv2.cvtColor(cv2.imread(str(first[0][0])), cv2.COLOR_BGR2RGB)
    assert np.abs(decoded.astype(int) - image).mean() < 4
    np.testing.assert_array_equal(cv2.imread(str(first[0][1]), cv2.IMREAD_UNCHANGED), mask)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [({"count": 0}, "count must"), ({"seed": -1}, "seed must"), ({"size": (16, 64)}, "WxH")],
)
def test_write_dataset_rejects_bad_arguments(tmp_path: Path, kwargs: dict, fragment: str) -> None:
    arguments = {"count": 1, "size": (64, 64), "seed": 0} | kwargs
    with pytest.raises(UsageError, match=fragment):
        write_dataset(tmp_path, **arguments)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("640x480", (640, 480)), ("96X64", (96, 64)), (" 6600x4400 ", (6600, 4400)), ("32x20000", (32, 20000))],
)
def test_parse_size_good(text: str, expected: tuple[int, int]) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["640", "640x", "x480", "640*480", "-640x480", "64.5x48", "axb", "", "1x2x3"])
def test_parse_size_bad_form(text: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_size(text)
    message = str(info.value)
    assert repr(text) in message
    assert "WxH" in message
    assert "\n" not in message


@pytest.mark.parametrize("text", ["31x480", "640x31", "20001x480", "0x0"])
def test_parse_size_out_of_range(text: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_size(text)
    message = str(info.value)
    assert repr(text) in message
    assert "32" in message and "20000" in message
    assert "WxH" in message
