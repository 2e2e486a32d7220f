"""Soak: 500 small images in one run_batch; memory does not grow with the number of images processed.

About 5–10 s on two cores, so it runs with the default suite (not marked slow).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from skinseg.runtime.batch import run_batch
from skinseg.runtime.options import InferOptions
from tests.onnx_standins import identity_model, metadata_json, save
from tests.support import lesion_image, write_png

N_IMAGES = 500
EARLY = 50
MAX_GROWTH_MB = 50


def rss_mb() -> float:
    """Resident set size of this process now (VmRSS in /proc/self/status), in MB."""
    text = Path("/proc/self/status").read_text()
    return int(re.search(r"^VmRSS:\s+(\d+) kB", text, re.M).group(1)) / 1024


def test_rss_after_500_images_is_within_50_mb_of_rss_after_50(tmp_path):
    src = tmp_path / "src"
    for i in range(N_IMAGES):
        write_png(src / f"{i // 100:02d}" / f"img{i:03d}.png", lesion_image(48, 64, seed=i))
    model = save(identity_model(metadata=metadata_json((64, 64))), tmp_path / "m.onnx")
    samples: dict[int, float] = {}

    def on_event(event: dict) -> None:
        if event["event"] == "image_done":
            samples[event["done"]] = rss_mb()

    options = InferOptions(threads=1, save_prob=True, contours=True)
    summary = run_batch([src], model, tmp_path / "out", options, recursive=True, on_event=on_event)

    assert (summary.ok, summary.failed) == (N_IMAGES, 0)
    assert len(samples) == N_IMAGES
    growth = samples[N_IMAGES] - samples[EARLY]
    late = np.array([samples[d] for d in range(N_IMAGES - 50, N_IMAGES + 1)])
    assert growth < MAX_GROWTH_MB, f"RSS grew by {growth:.1f} MB from image {EARLY} to {N_IMAGES}"
    assert late.max() - samples[EARLY] < MAX_GROWTH_MB, f"RSS peaked {late.max() - samples[EARLY]:.1f} MB above"
    assert len(list((tmp_path / "out").rglob("*_mask.png"))) == N_IMAGES
