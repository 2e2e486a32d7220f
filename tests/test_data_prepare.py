"""`skinseg data prepare` on small archives built like the official ones (ISIC 2017 zips, an unzipped ISIC folder,
PH2's tree): the layout the configs read, masks in 0/255 at the image's size, sizes as the recipe's data, a manifest
of what was read, and a missing archive named with its download address. Nothing is downloaded."""

from __future__ import annotations

import json
import socket
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from skinseg.cli import app
from skinseg.data import prepare as prepare_module
from skinseg.data.config import load_config, recipe_path
from skinseg.data.pairing import pair_folders
from skinseg.data.prepare import DATA_SETS, default_sets, find_archives, prepare

runner = CliRunner()


def _photo(w: int, h: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A skin-coloured photo with a dark ellipse, and its 0/255 mask."""
    rng = np.random.default_rng(seed)
    image = np.full((h, w, 3), (150, 170, 210), np.uint8) + rng.integers(0, 20, (h, w, 3), dtype=np.uint8)
    mask = np.zeros((h, w), np.uint8)
    cv2.ellipse(mask, (w // 2, h // 2), (w // 4, h // 5), 0, 0, 360, 255, -1)
    image[mask > 0] = (60, 50, 90)
    return image, mask


def _jpg(image: np.ndarray) -> bytes:
    return cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()


def _png(mask: np.ndarray) -> bytes:
    return cv2.imencode(".png", mask)[1].tobytes()


SIZES = {"ISIC_0000000": (300, 200), "ISIC_0000001": (120, 160), "ISIC_0000002": (500, 375)}


@pytest.fixture
def downloads(tmp_path):
    """ISIC 2017 training zips and the validation set already unzipped, as a user's download folder holds them."""
    folder = tmp_path / "Downloads"
    folder.mkdir()
    with (
        zipfile.ZipFile(folder / "ISIC-2017_Training_Data.zip", "w") as images,
        zipfile.ZipFile(folder / "ISIC-2017_Training_Part1_GroundTruth.zip", "w") as masks,
    ):
        for i, (stem, (w, h)) in enumerate(SIZES.items()):
            image, mask = _photo(w, h, i)
            images.writestr(f"ISIC-2017_Training_Data/{stem}.jpg", _jpg(image))
            images.writestr(f"ISIC-2017_Training_Data/{stem}_superpixels.png", _png(mask))  # not a mask
            masks.writestr(f"ISIC-2017_Training_Part1_GroundTruth/{stem}_segmentation.png", _png(mask))
        images.writestr("ISIC-2017_Training_Data/ISIC-2017_Training_Data_metadata.csv", "image_id,age\n")
        images.writestr("ISIC-2017_Training_Data/ISIC_0000009.jpg", _jpg(_photo(64, 64, 9)[0]))  # no mask
        images.writestr("__MACOSX/ISIC-2017_Training_Data/._ISIC_0000000.jpg", b"junk")
    valid_images = folder / "ISIC-2017_Validation_Data"
    valid_masks = folder / "ISIC-2017_Validation_Part1_GroundTruth"
    valid_images.mkdir()
    valid_masks.mkdir()
    for i, (stem, (w, h)) in enumerate({"ISIC_0001769": (400, 300), "ISIC_0001852": (150, 200)}.items()):
        image, mask = _photo(w, h, 10 + i)
        (valid_images / f"{stem}.jpg").write_bytes(_jpg(image))
        (valid_masks / f"{stem}_segmentation.png").write_bytes(_png(mask // 255))  # a 0/1 mask
    return folder


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("data prepare opened a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _prepare(downloads: Path, out: Path, *args: str):
    return runner.invoke(
        app,
        ["data", "prepare", "isic2017-train", "isic-raw", "--from", str(downloads), "--output", str(out), *args],
        env={"COLUMNS": "200"},
    )


def test_the_archives_become_the_layout_the_configs_read(downloads, tmp_path, no_network):
    out = tmp_path / "data"
    result = _prepare(downloads, out, "--long-side", "256", "-q")
    assert result.exit_code == 0, result.output
    train = out / "isic2017-train"
    assert sorted(p.name for p in (train / "images").iterdir()) == [f"{s}.jpg" for s in SIZES]
    assert sorted(p.name for p in (train / "masks").iterdir()) == [f"{s}.png" for s in SIZES]
    for stem, (w, h) in SIZES.items():
        image = cv2.imread(str(train / "images" / f"{stem}.jpg"))
        mask = cv2.imread(str(train / "masks" / f"{stem}.png"), cv2.IMREAD_UNCHANGED)
        assert image.shape == (256, 256, 3) and mask.shape == (256, 256)  # squashed as isic2017-train
        assert set(np.unique(mask)) == {0, 255}
        truth = cv2.resize(_photo(w, h, 0)[1], (256, 256), interpolation=cv2.INTER_AREA) >= 128
        assert abs((mask > 0).mean() - truth.mean()) < 0.01  # the lesion where it was
    raw = out / "isic-raw"
    sizes = {p.stem: cv2.imread(str(p)).shape[:2] for p in (raw / "images").iterdir()}
    assert sizes == {"ISIC_0001769": (192, 256), "ISIC_0001852": (200, 150)}  # aspect kept, long side ≤ 256
    for stem, shape in sizes.items():
        mask = cv2.imread(str(raw / "masks" / f"{stem}.png"), cv2.IMREAD_UNCHANGED)
        assert mask.shape == shape and set(np.unique(mask)) == {0, 255}  # a 0/1 mask read as 0/255


def test_the_manifest_says_what_was_read_and_what_was_left_out(downloads, tmp_path):
    out = tmp_path / "data"
    assert _prepare(downloads, out, "-q").exit_code == 0
    manifest = json.loads((out / "isic2017-train" / "manifest.json").read_text())
    assert [a["archive"] for a in manifest["archives"]] == [
        "ISIC-2017_Training_Data.zip",
        "ISIC-2017_Training_Part1_GroundTruth.zip",
    ]
    assert all(a["url"].startswith("https://isic-challenge-data.s3.amazonaws.com/2017/") for a in manifest["archives"])
    assert [p["stem"] for p in manifest["pairs"]] == list(SIZES)
    first = manifest["pairs"][0]
    assert first["image"] == "ISIC-2017_Training_Data.zip:ISIC-2017_Training_Data/ISIC_0000000.jpg"
    assert first["original_size"] == [300, 200] and first["size"] == [256, 256]
    assert manifest["left_out"] == [
        {
            "file": "ISIC-2017_Training_Data.zip:ISIC-2017_Training_Data/ISIC_0000009.jpg",
            "reason": "an image without a mask",
        }
    ]
    assert manifest["recipe"] == {"resize": "squashed", "size": [256, 256], "jpeg_quality": 95}
    assert manifest["expected_pairs"] == 2000  # the official release; this one is a test archive


def test_the_folders_pair_as_the_initialised_config_reads_them(downloads, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert _prepare(downloads, Path("data"), "-q").exit_code == 0
    assert runner.invoke(app, ["config", "init", "my.config", "--data", "data"]).exit_code == 0
    cfg = load_config(tmp_path / "my.config")
    train = pair_folders(cfg.train.image_datapath[0], cfg.train.mask_datapath[0])
    valid = pair_folders(cfg.eval.image_datapath[0], cfg.eval.mask_datapath[0])
    assert len(train.pairs) == 3 and len(valid.pairs) == 2 and not train.problems and not valid.problems


def test_a_missing_archive_is_named_with_its_download_address(downloads, tmp_path):
    (downloads / "ISIC-2017_Training_Part1_GroundTruth.zip").unlink()
    out = tmp_path / "data"
    result = _prepare(downloads, out)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "https://isic-challenge-data.s3.amazonaws.com/2017/ISIC-2017_Training_Part1_GroundTruth.zip" in result.output
    assert "https://challenge.isic-archive.com/data/" in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "1 archive(s)" in errors[0]
    assert not out.exists()  # nothing half-done


def test_a_rerun_with_the_same_archives_does_nothing_and_force_redoes_it(downloads, tmp_path):
    out = tmp_path / "data"
    assert _prepare(downloads, out, "-q").exit_code == 0
    mask = out / "isic2017-train" / "masks" / "ISIC_0000000.png"
    before = mask.stat().st_mtime_ns
    again = _prepare(downloads, out, "-q")
    assert again.exit_code == 0 and "3 of 2000 pairs up to date" in again.output
    assert mask.stat().st_mtime_ns == before
    assert "written" in _prepare(downloads, out, "-q", "--force").output


def test_files_of_an_earlier_preparation_go_and_others_stay(downloads, tmp_path):
    out = tmp_path / "data"
    assert _prepare(downloads, out, "-q").exit_code == 0
    mine = out / "isic2017-train" / "images" / "notes.txt"
    mine.write_text("kept")
    with zipfile.ZipFile(downloads / "ISIC-2017_Training_Part1_GroundTruth.zip", "a") as z:
        pass  # same archives ...
    archive = downloads / "ISIC-2017_Training_Data.zip"
    with zipfile.ZipFile(archive) as z:
        kept = {n: z.read(n) for n in z.namelist() if "ISIC_0000001" not in n}
    with zipfile.ZipFile(archive, "w") as z:  # ... but a new release without ISIC_0000001
        for n, data in kept.items():
            z.writestr(n, data)
    assert _prepare(downloads, out, "-q").exit_code == 0
    assert not (out / "isic2017-train" / "images" / "ISIC_0000001.jpg").exists()
    assert mine.read_text() == "kept"


def test_a_bad_pair_is_left_out_with_its_reason_and_the_rest_is_written(tmp_path):
    folder = tmp_path / "dl"
    images, masks = folder / "ISIC-2017_Validation_Data", folder / "ISIC-2017_Validation_Part1_GroundTruth"
    images.mkdir(parents=True)
    masks.mkdir()
    good, truth = _photo(100, 80, 1)
    (images / "ISIC_1.jpg").write_bytes(_jpg(good))
    (masks / "ISIC_1_segmentation.png").write_bytes(_png(truth))
    (images / "ISIC_2.jpg").write_bytes(b"not a jpeg at all")
    (masks / "ISIC_2_segmentation.png").write_bytes(_png(truth))
    (images / "ISIC_3.jpg").write_bytes(_jpg(good))
    (masks / "ISIC_3_segmentation.png").write_bytes(_png(truth[:40]))  # another size
    found, missing = find_archives(["isic-raw"], [folder])
    assert missing == []
    report = prepare("isic-raw", found, tmp_path / "out")
    assert report.written == 1
    reasons = {e["file"].split(":")[-1]: e["reason"] for e in report.left_out}
    assert reasons == {"ISIC_2.jpg": "cannot be decoded", "ISIC_3.jpg": "the image is 100×80 px but its mask 100×40"}


def test_ph2_as_distributed_once_extracted(tmp_path):
    root = tmp_path / "dl" / "PH2Dataset" / "PH2 Dataset images"
    for i, stem in enumerate(("IMD002", "IMD003")):
        image, mask = _photo(120, 90, i)
        for sub, name, data in (
            (f"{stem}_Dermoscopic_Image", f"{stem}.bmp", cv2.imencode(".bmp", image)[1]),
            (f"{stem}_lesion", f"{stem}_lesion.bmp", cv2.imencode(".bmp", mask)[1]),
            (f"{stem}_roi", f"{stem}_R1_Label4.bmp", cv2.imencode(".bmp", mask)[1]),  # not the lesion mask
        ):
            (root / stem / sub).mkdir(parents=True, exist_ok=True)
            (root / stem / sub / name).write_bytes(data.tobytes())
    result = runner.invoke(app, ["data", "prepare", "ph2", "--from", str(tmp_path / "dl"), "-o", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "o" / "ph2" / "masks").iterdir()) == ["IMD002.png", "IMD003.png"]


def test_a_rar_without_an_extractor_says_to_extract_it(tmp_path, monkeypatch):
    (tmp_path / "dl").mkdir()
    (tmp_path / "dl" / "PH2Dataset.rar").write_bytes(b"Rar!\x1a\x07\x00")
    monkeypatch.setattr(prepare_module.shutil, "which", lambda name: None)
    result = runner.invoke(app, ["data", "prepare", "ph2", "--from", str(tmp_path / "dl"), "-o", str(tmp_path / "o")])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
    assert "extract it" in result.output and "unrar x PH2Dataset.rar" in result.output


def test_an_unknown_set_and_the_list():
    result = runner.invoke(app, ["data", "prepare", "isic2017-trian"])
    assert result.exit_code == 2 and "did you mean isic2017-train" in result.output
    listed = runner.invoke(app, ["data", "prepare", "--list"])
    assert listed.exit_code == 0
    for data_set in DATA_SETS.values():
        assert data_set.name in listed.output and all(a.url in listed.output for a in data_set.archives)


def test_the_default_sets_are_those_the_reference_recipe_reads():
    cfg = load_config(recipe_path())
    read = {p.parent.name for p in [*cfg.train.image_datapath, *(cfg.eval.image_datapath or [])]}
    assert set(default_sets()) == read & set(DATA_SETS)


def test_a_damaged_member_of_a_zip_is_left_out_and_the_rest_written(downloads, tmp_path):
    archive = downloads / "ISIC-2017_Training_Data.zip"
    with zipfile.ZipFile(archive) as z:
        info = z.getinfo("ISIC-2017_Training_Data/ISIC_0000001.jpg")
        start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    data = bytearray(archive.read_bytes())
    data[start + 200 : start + 260] = b"x" * 60  # a download damaged in the middle of one member
    archive.write_bytes(bytes(data))
    result = _prepare(downloads, tmp_path / "data", "-q")
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "data" / "isic2017-train" / "manifest.json").read_text())
    assert [p["stem"] for p in manifest["pairs"]] == ["ISIC_0000000", "ISIC_0000002"]
    damaged = [e for e in manifest["left_out"] if "ISIC_0000001" in e["file"]]
    assert len(damaged) == 1 and "damaged in the archive" in damaged[0]["reason"]
    assert "2 of 2000 pairs written" in result.output and "is the archive complete?" in result.output
