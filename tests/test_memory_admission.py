"""Memory and threads a run may take: images in flight are bounded by --memory-limit, the model's working memory
counts (a tile too large for --memory-limit is refused in one line before any work), the working scale counts, and
--max-in-flight and --threads are capped (with a note)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest

import skinseg.runtime.model_cache as model_cache
import skinseg.runtime.runners as runners
from skinseg.runtime.batch import run_batch
from skinseg.runtime.errors import UsageError
from skinseg.runtime.job import estimate_memory
from skinseg.runtime.options import InferOptions
from skinseg.runtime.segmenter import Segmenter
from tests.onnx_standins import identity_model, metadata_json, save
from tests.support import lesion_image, run_cli, write_png

OPTS = InferOptions(threads=1)


@pytest.fixture
def no_full_tile_probe(monkeypatch):
    """Fail the test if the segmenter runs its first full-size tile: a refusal must come before it."""

    def probe(self, name):
        raise AssertionError(f"the {self.tile} probe ran")

    monkeypatch.setattr(Segmenter, "_probe", probe)


def test_a_model_whose_own_tile_cannot_fit_is_refused_before_any_work(tmp_path, no_full_tile_probe):
    model = save(identity_model(metadata=metadata_json((4096, 4096))), tmp_path / "huge-tile.onnx")
    write_png(tmp_path / "src" / "a.png", lesion_image())
    start = time.perf_counter()
    with pytest.raises(UsageError, match=r"4096×4096 \(metadata\).*more than memory_limit=200 MiB.*smaller tile") as e:
        run_batch([tmp_path / "src"], model, tmp_path / "out", InferOptions(threads=1, memory_limit=200 << 20))
    assert time.perf_counter() - start < 10 and "\n" not in str(e.value)
    assert not (tmp_path / "out").exists()


def test_a_tile_option_that_cannot_fit_is_refused_in_one_line(standin_model, tmp_path, no_full_tile_probe):
    write_png(tmp_path / "src" / "a.png", lesion_image())
    done = subprocess.run(
        [sys.executable, "-m", "skinseg", "infer", tmp_path / "src", "--model", standin_model, "-o", tmp_path / "out",
         "--tile", "4096", "--memory-limit", "256M"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "--tile 4096" in done.stderr, done.stderr
    assert not (tmp_path / "out").exists()


def test_batches_of_tiles_count_as_many_tiles(standin_model, tmp_path, no_full_tile_probe):
    write_png(tmp_path / "src" / "a.png", lesion_image())
    options = InferOptions(threads=1, tile=1024, batch_size=16, memory_limit=200 << 20)
    with pytest.raises(UsageError, match="in batches of 16.*or batch_size"):
        run_batch([tmp_path / "src"], standin_model, tmp_path / "out", options)


def test_the_working_scale_counts_in_an_images_memory():
    """With --scale native a 24 MP photo is worked on at 24 MP: its blending maps alone are 190 MB."""
    reduced = estimate_memory(6000, 4000, OPTS, work=(1024, 683))
    native = estimate_memory(6000, 4000, OPTS, work=(6000, 4000))
    assert native - reduced >= 14 * (24_000_000 - 1024 * 683)


def test_the_model_memory_leaves_less_room_for_images(standin_model, tmp_path, monkeypatch, images_in_flight):
    src = tmp_path / "src"
    for i in range(6):
        write_png(src / f"i{i}.png", lesion_image(seed=i))
    one = estimate_memory(120, 90, OPTS, work=(120, 90))
    limit = 20 * one
    monkeypatch.setattr(model_cache, "model_memory", lambda backend, options: limit - one)  # room for one image
    monkeypatch.setattr(model_cache.MODELS, "_entries", {})  # measured afresh, and forgotten after this test
    summary = run_batch([src], standin_model, tmp_path / "out", InferOptions(threads=1, memory_limit=limit,
                                                                              max_in_flight=3))  # fmt: skip
    assert summary.ok == 6 and images_in_flight.peak == 1


def test_max_in_flight_is_capped_and_threads_start_as_needed(standin_model, tmp_path):
    src = tmp_path / "src"
    for i in range(3):
        write_png(src / f"i{i}.png", lesion_image(seed=i))
    before = threading.active_count()
    seen = []
    summary = run_batch(
        [src], standin_model, tmp_path / "out", InferOptions(threads=1, max_in_flight=99_999_999_999),
        on_event=lambda e: seen.append(threading.active_count()),
    )  # fmt: skip
    assert summary.ok == 3
    assert max(seen) - before <= 3 + 2  # one worker per image at most, not one per allowed slot


def test_the_command_line_caps_max_in_flight_with_a_note(standin_model, tmp_path):
    write_png(tmp_path / "src" / "a.png", lesion_image())
    done = subprocess.run(
        [sys.executable, "-m", "skinseg", "infer", tmp_path / "src", "--model", standin_model, "-o", tmp_path / "out",
         "--max-in-flight", "100000", "--quiet"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"--max-in-flight 100000 is more than {runners.MAX_IN_FLIGHT}" in done.stderr
    assert "Traceback" not in done.stderr


# --------------------------------------------------------------------------------------------------- images in flight


def test_images_in_flight_are_bounded_by_the_memory_limit(model, tmp_path, images_in_flight):
    """With room for one image at a time, no two are ever worked on together; with room for several, they are."""
    src = tmp_path / "src"
    for i in range(6):
        write_png(src / f"i{i}.png", lesion_image(seed=i))
    one = estimate_memory(120, 90, OPTS)
    run_batch([src], model, tmp_path / "o1", InferOptions(threads=1, memory_limit=one, max_in_flight=4))
    assert images_in_flight.peak == 1
    images_in_flight.reset(crowd=3)  # each image waits for three to be in flight: no race with their finishing
    run_batch([src], model, tmp_path / "o2", InferOptions(threads=1, memory_limit=10 * one, max_in_flight=3))
    assert images_in_flight.peak == 3
    assert estimate_memory(15000, 16000, OPTS) > 4 * 240_000_000  # a 240 MP photo counts for what it needs


def test_more_threads_than_cores_are_capped_with_a_note(model, tmp_path):
    write_png(tmp_path / "src" / "a.png", lesion_image())
    result = run_cli("infer", tmp_path / "src", "--model", model, "--output", tmp_path / "out", "--threads", "1000")
    assert result.returncode == 0, result.stderr
    assert f"--threads 1000 is more than this machine's {os.cpu_count()} cores" in result.stderr
