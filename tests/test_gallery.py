"""The batch's index.html gallery: every image listed with working relative links; file names escaped."""

from __future__ import annotations

import re
from urllib.parse import unquote

from skinseg.runtime.batch import InferOptions, run_batch
from tests.onnx_standins import identity_model, metadata_json, save
from tests.test_batch import lesion_image, write_png


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
    links = set(re.findall(r'src="([^"]+)"', page))
    assert len(links) == 4  # input and overlay of each good image
    for link in links:
        target = (out / unquote(link.replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">"))).resolve()
        assert target.is_file(), link
    assert "lesion area" in page
