"""The batch's index.html gallery: every image listed with working relative links; file names escaped."""

from __future__ import annotations

import re
from urllib.parse import unquote

from skinseg.runtime.batch import run_batch
from skinseg.runtime.options import InferOptions
from tests.onnx_standins import identity_model, metadata_json, save
from tests.support import lesion_image, write_png


def test_gallery_links_every_image_and_escapes_names(tmp_path):
    model = save(identity_model(metadata=metadata_json((64, 64))), tmp_path / "m.onnx")
    src = tmp_path / "in put"
    write_png(src / "a.png", lesion_image())
    write_png(src / "sub" / "<b>x.png", lesion_image(seed=1))
    (src / "broken.png").write_bytes(b"\x89PNG not really")
    out = tmp_path / "out"
    summary = run_batch([src], model, out, InferOptions(threads=1), recursive=True)
    assert summary.ok == 2 and summary.failed == 1
    page = (out / "index.html").read_text(encoding="utf-8")
    assert "<b>x" not in page and "&lt;b&gt;x" in page  # a file name cannot inject markup
    assert "failed" in page and "broken.png" in page
    assert len(re.findall(r'src="data:image/jpeg;base64,', page)) == 2  # thumbnails embedded, no originals
    assert len(page) < 200_000
    links = {link for link in re.findall(r'href="([^"]+)"', page) if not link.startswith("file:")}
    assert len(links) == 4  # each good image's overlay and mask (inputs outside the folder: file: links)
    moved = tmp_path / "moved"
    out.rename(moved)  # the page still works where the folder goes
    for link in links:
        assert not link.startswith(("/", "..")), link
        target = (moved / unquote(link)).resolve()
        assert target.is_file() and moved in target.parents, link
    assert "lesion area" in page
