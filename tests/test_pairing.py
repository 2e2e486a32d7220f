"""Pairing images with masks, and stem-grouped splits; on the real data when ../shared/data exists."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from skinseg.data.pairing import (
    check_readable,
    mask_key,
    pair_folders,
    pair_many,
    split_by_stem,
)
from skinseg.runtime.errors import DataError

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _touch_image(path: Path, size=(8, 6)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.zeros((size[1], size[0], 3), np.uint8))


@pytest.mark.parametrize(
    ("name", "stem"),
    [
        ("ISIC_1_segmentation.png", "ISIC_1"),
        ("ISIC_1_Segmentation.png", "ISIC_1"),
        ("IMD002_lesion.bmp", "IMD002"),
        ("a_mask.png", "a"),
        ("plain.png", "plain"),
        ("x_SEGMENTATION.PNG", "x"),
    ],
)
def test_mask_key(name, stem):
    assert mask_key(Path(name)) == stem


def test_pairing_reports_every_unpaired_file(tmp_path):
    for stem in ("a", "b", "c"):
        _touch_image(tmp_path / "images" / f"{stem}.JPG")
    _touch_image(tmp_path / "masks" / "a_Segmentation.png")
    _touch_image(tmp_path / "masks" / "b_mask.png")
    _touch_image(tmp_path / "masks" / "orphan_segmentation.png")
    report = pair_folders(tmp_path / "images", tmp_path / "masks")
    assert [p.stem for p in report.pairs] == ["a", "b"]
    assert [p.name for p in report.images_without_mask] == ["c.JPG"]
    assert [p.name for p in report.masks_without_image] == ["orphan_segmentation.png"]
    with pytest.raises(DataError, match="2 unusable file"):
        pair_many([(tmp_path / "images", tmp_path / "masks")])
    pairs, warnings = pair_many([(tmp_path / "images", tmp_path / "masks")], skip_bad=True)
    assert len(pairs) == 2 and len(warnings) == 2


def test_missized_and_unreadable_masks_are_listed(tmp_path):
    _touch_image(tmp_path / "images" / "a.png", (8, 6))
    _touch_image(tmp_path / "masks" / "a_mask.png", (4, 3))
    _touch_image(tmp_path / "images" / "b.png", (8, 6))
    (tmp_path / "masks" / "b_mask.png").write_bytes(b"not a png")
    pairs, _ = pair_many([(tmp_path / "images", tmp_path / "masks")])
    with pytest.raises(DataError) as info:
        check_readable(pairs)
    assert "a_mask.png: mask is 4×3 but its image is 8×6" in str(info.value)
    assert "b_mask.png" in str(info.value)
    good, problems = check_readable(pairs, skip_bad=True)
    assert good == [] and len(problems) == 2


def test_split_is_seeded_by_stem_and_keeps_copies_together(tmp_path):
    from skinseg.data.pairing import Pair

    pairs = [Pair(Path(f"{d}/s{i}.jpg"), Path(f"{d}/s{i}.png")) for d in ("x", "y") for i in range(200)]
    train, valid = split_by_stem(pairs, valid_ratio=0.2, seed=1)
    assert {p.stem for p in train}.isdisjoint({p.stem for p in valid})
    assert 0.1 < len(valid) / len(pairs) < 0.3
    assert split_by_stem(list(reversed(pairs)), valid_ratio=0.2, seed=1)[1] == sorted(
        valid, key=lambda p: pairs.index(p), reverse=True
    ) or {p.stem for p in split_by_stem(list(reversed(pairs)), valid_ratio=0.2, seed=1)[1]} == {p.stem for p in valid}
    assert {p.stem for p in split_by_stem(pairs, valid_ratio=0.2, seed=2)[1]} != {p.stem for p in valid}


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data is not present")
@pytest.mark.parametrize(
    ("folder", "count"), [("isic-72", 72), ("isic-256", 477), ("isic2017-train", 2000), ("isic-raw", 98)]
)
def test_real_data_pairs_completely(folder, count):
    report = pair_folders(SHARED / folder / "images", SHARED / folder / "masks")
    assert report.problems == []
    assert len(report.pairs) == count
    good, problems = check_readable(report.pairs[:20])
    assert problems == [] and len(good) == 20


def test_two_images_of_one_stem_are_reported_not_both_paired(tmp_path):
    """a.png and a.jpg beside one mask a.png: both were paired with it (scored twice, or trained on a wrong mask)."""
    for name in ("a.png", "a.jpg", "b.png"):
        _touch_image(tmp_path / "images" / name)
    for name in ("a.png", "b_mask.png"):
        _touch_image(tmp_path / "masks" / name)
    report = pair_folders(tmp_path / "images", tmp_path / "masks")
    assert [p.stem for p in report.pairs] == ["b"]
    assert [s.image.name for s in report.shared_stems] == ["a.jpg", "a.png"]
    assert report.masks_without_image == [] and report.ambiguous == []
    assert str(report.shared_stems[0]).endswith("the stem a has several images (a.jpg, a.png) for one mask (a.png); "
                                                "keep one image or rename the others")  # fmt: skip
    with pytest.raises(DataError, match="2 unusable file.*several images"):
        pair_many([(tmp_path / "images", tmp_path / "masks")])
    same = tmp_path / "both"  # one folder of images and masks
    for name in ("c.png", "c.jpg", "c_segmentation.png", "d.png", "d_mask.png"):
        _touch_image(same / name)
    report = pair_folders(same, same)
    assert [(p.image.name, p.mask.name) for p in report.pairs] == [("d.png", "d_mask.png")]
    assert [s.image.name for s in report.shared_stems] == ["c.jpg", "c.png"]


def test_excluded_files_are_neither_images_nor_masks(tmp_path):
    for name in ("a.png", "worst.png"):
        _touch_image(tmp_path / "images" / name)
        _touch_image(tmp_path / "masks" / name)
    report = pair_folders(tmp_path / "images", tmp_path / "masks", exclude=[tmp_path / "masks" / "worst.png"])
    assert [p.stem for p in report.pairs] == ["a"]
    assert [p.name for p in report.images_without_mask] == ["worst.png"] and report.masks_without_image == []
