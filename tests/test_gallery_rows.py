"""The gallery's rows: each links to the input, the mask and the overlay; failed and flagged images come first; the
overlay's colour and opacity are options (photographs with green stickers), recorded only when not the default."""

from __future__ import annotations

import re
from urllib.parse import unquote, urlparse

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from skinseg.cli import app
from skinseg.runtime.batch import run_batch
from skinseg.runtime.gallery import flags
from skinseg.runtime.options import InferOptions
from tests.support import lesion_image, write_png

runner = CliRunner()


def _targets(page: str, out):
    found = []
    for href in re.findall(r'href="([^"]+)"', page):
        found.append(urlparse(href).path if href.startswith("file:") else str(out / unquote(href)))
    return [unquote(t) for t in found]


def test_each_row_links_its_input_mask_and_overlay(tmp_path, standin_model):
    src, out = tmp_path / "in", tmp_path / "out"
    write_png(src / "a b.png", lesion_image())
    run_batch([src], standin_model, out, InferOptions(threads=1))
    page = (out / "index.html").read_text()
    targets = _targets(page, out)
    assert str(src / "a b.png") in targets  # the input, where it is
    assert str(out / "a b_mask.png") in targets and str(out / "a b_overlay.jpg") in targets
    assert all(__import__("os").path.exists(t) for t in targets)
    assert re.search(r">input</a>.*>mask</a>.*>overlay</a>", page)


def test_a_failed_row_links_its_input_only(tmp_path, standin_model):
    """dup.jpg and dup.png share output names: dup.png's failed row linked dup.jpg's mask and overlay as its own."""
    src, out = tmp_path / "in", tmp_path / "out"
    write_png(src / "dup.png", lesion_image(seed=1))
    (src / "dup.jpg").write_bytes(cv2.imencode(".jpg", lesion_image(seed=2))[1].tobytes())
    run_batch([src], standin_model, out, InferOptions(threads=1))
    page = (out / "index.html").read_text()
    failed = re.search(r'<tr class="failed-row">.*?</tr>', page, re.S)
    assert failed is not None and "dup.png" in failed.group(0)
    assert ">input</a>" in failed.group(0) and ">mask</a>" not in failed.group(0)
    assert ">overlay</a>" not in failed.group(0)


def test_an_input_inside_the_output_folder_is_linked_relatively(tmp_path, standin_model):
    folder = tmp_path / "photos"
    write_png(folder / "a.png", lesion_image())
    run_batch([folder], standin_model, folder, InferOptions(threads=1))
    assert 'href="a.png">input</a>' in (folder / "index.html").read_text()


def test_failed_then_flagged_images_come_first(tmp_path, standin_model):
    src, out = tmp_path / "in", tmp_path / "out"
    write_png(src / "a_plain.png", lesion_image(seed=1))
    empty = lesion_image(seed=2)
    empty[..., 0] = 50  # no red: the stand-in model finds no lesion
    write_png(src / "b_empty.png", empty)
    full = lesion_image(seed=3)
    full[..., 0] = 230  # all red: the mask fills the photo
    write_png(src / "c_full.png", full)
    (src / "z_broken.png").write_bytes(b"\x89PNG broken")
    run_batch([src], standin_model, out, InferOptions(threads=1))
    page = (out / "index.html").read_text()
    order = [page.index(f'class="name">{n}') for n in ("z_broken.png", "b_empty.png", "c_full.png", "a_plain.png")]
    assert order == sorted(order)
    assert "no lesion found" in page and "the mask fills 100% of the photo" in page
    assert "2 flagged" in page  # in the folder's totals


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        ({"status": "ok", "area_px": 0, "area_fraction": 0.0}, ["no lesion found"]),
        ({"status": "ok", "area_px": 5, "area_fraction": 0.02, "mean_prob": 0.55},
         ["low confidence (mean probability 0.55)"]),
        (
            {"status": "ok", "area_px": 5, "area_fraction": 0.5, "width": 100, "height": 80,
             "bbox_x": 0, "bbox_y": 0, "bbox_w": 100, "bbox_h": 60},
            ["the mask touches 3 sides of the photo"],
        ),
        ({"status": "ok", "area_px": 5, "area_fraction": 0.1, "mean_prob": 0.95}, []),
        ({"status": "skipped", "area_px": "5", "area_fraction": "0.1", "review": "True", "quality": "0.4"},
         ["the quality estimate asks for a review (0.40)"]),
        ({"status": "failed", "area_px": None}, []),
    ],
)  # fmt: skip
def test_flags(row, expected):
    assert flags(row) == expected


def test_overlay_colour_and_opacity(tmp_path, standin_model):
    src = tmp_path / "in"
    write_png(src / "a.png", lesion_image())
    out = tmp_path / "out"
    first = runner.invoke(app, ["infer", str(src), "-o", str(out), "--model", str(standin_model), "-q"])
    assert first.exit_code == 0
    green = cv2.imread(str(out / "a_overlay.jpg"))[40, 66]  # inside the disk, BGR
    second = runner.invoke(
        app,
        ["infer", str(src), "-o", str(out), "--model", str(standin_model), "-q", "--overlay-color", "magenta",
         "--overlay-opacity", "1"],
    )  # fmt: skip
    assert second.exit_code == 0 and "1 ok" in second.output  # other options: redone, not skipped
    magenta = cv2.imread(str(out / "a_overlay.jpg"))[40, 66]
    assert np.allclose(green, (30, 138, 138), atol=25)  # 40% green over the red disk (230, 60, 50), BGR
    assert np.allclose(magenta, (255, 0, 255), atol=40)  # solid magenta (BGR), a solid fill at opacity 1


def test_the_default_overlay_style_leaves_the_outputs_settings_as_they_were():
    """Outputs made before the options existed stay up to date: the defaults are not in the settings digest."""
    plain = InferOptions()
    assert "overlay_color" not in plain.output_settings()
    styled = InferOptions(overlay_color=(255, 0, 255))
    assert styled.output_settings()["overlay_color"] == [255, 0, 255] and styled.settings("x") != plain.settings("x")


@pytest.mark.parametrize(
    "args", [["--overlay-color", "chartreuse"], ["--overlay-color", "#12345"], ["--overlay-opacity", "2"]]
)
def test_bad_overlay_options_are_one_line(tmp_path, standin_model, args):
    result = runner.invoke(
        app, ["infer", str(tmp_path), "-o", str(tmp_path / "o"), "--model", str(standin_model), *args]
    )
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("size", [(1600, 1067), (1024, 768), (2400, 1600), (300, 200)])
def test_every_thumbnail_has_the_same_long_side(tmp_path, size):
    """A 1600 px overlay was decoded at 1/8 (200 px) and shown smaller than a 1024 px one (240 px)."""
    import base64

    from skinseg.runtime.gallery import THUMB_SIDE, thumbnail_uri

    rng = np.random.default_rng(0)
    picture = rng.integers(0, 255, (size[1], size[0], 3), np.uint8)  # noise: a large file, as photos are
    path = tmp_path / "o.jpg"
    path.write_bytes(cv2.imencode(".jpg", picture, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes())
    uri = thumbnail_uri(path)
    assert uri is not None
    thumb = cv2.imdecode(np.frombuffer(base64.b64decode(uri.split(",", 1)[1]), np.uint8), cv2.IMREAD_COLOR)
    assert max(thumb.shape[:2]) == min(THUMB_SIDE, max(size))
