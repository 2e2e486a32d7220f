"""Which files a recursive `skinseg infer` takes: photos in folders that also hold outputs are found, outputs never
are, hidden image files are mentioned once instead of vanishing, and a sub-folder that cannot be read is a failed row
instead of a silence."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from skinseg.runtime.batch import run_batch
from skinseg.runtime.inputs import discover
from skinseg.runtime.options import InferOptions
from skinseg.runtime.report import read_results
from tests.support import lesion_image, rows_of, write_png

OPTS = InferOptions(threads=1)


def test_a_folder_once_its_own_output_is_still_searched_for_photos(standin_model, tmp_path):
    photos = tmp_path / "photos"
    write_png(photos / "2024" / "a.png", lesion_image(seed=1))
    write_png(photos / "2024" / "deep" / "c.png", lesion_image(seed=3))
    write_png(photos / "2025" / "b.png", lesion_image(seed=2))
    assert run_batch([photos / "2024"], standin_model, photos / "2024", OPTS, recursive=True).ok == 2
    summary = run_batch([photos], standin_model, tmp_path / "masks", OPTS, recursive=True)
    assert (summary.ok, summary.failed) == (3, 0), read_results(tmp_path / "masks" / "results.csv")
    assert set(read_results(tmp_path / "masks" / "results.csv")) == {"2024/a.png", "2024/deep/c.png", "2025/b.png"}


def test_outputs_of_earlier_runs_are_never_inputs_at_any_depth(standin_model, tmp_path):
    src = tmp_path / "src"
    write_png(src / "a.png", lesion_image(seed=1))
    write_png(src / "sub" / "b.png", lesion_image(seed=2))
    for day in (1, 2, 3):
        summary = run_batch([src], standin_model, src / f"out-day{day}", OPTS, recursive=True, on_event=None)
        assert summary.total == 2, (day, summary)
    assert (src / "out-day1" / "sub" / "b_mask.png").is_file()  # a sub-folder of an output folder: no stamp there
    found = {str(item.rel) for item in discover([src], recursive=True, output=tmp_path / "elsewhere").items}
    assert found == {"a.png", "sub/b.png"}


def test_hidden_image_files_are_said_once(standin_model, tmp_path):
    src = tmp_path / "src"
    write_png(src / "a.png", lesion_image(seed=1))
    write_png(src / ".hidden.png", lesion_image(seed=2))
    write_png(src / "sub" / "._apple.png", lesion_image(seed=3))
    events: list[dict] = []
    summary = run_batch([src], standin_model, tmp_path / "out", OPTS, recursive=True, on_event=events.append)
    assert summary.ok == 1
    hidden = [e for e in events if e["event"] == "hidden"]
    assert len(hidden) == 1 and hidden[0]["count"] == 2 and hidden[0]["examples"][0].endswith(".hidden.png")
    done = subprocess.run(
        [sys.executable, "-m", "skinseg", "infer", src, "--model", standin_model, "-o", tmp_path / "o2", "-r"],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    said = [line for line in (done.stdout + done.stderr).splitlines() if "hidden file" in line]
    assert len(said) == 1 and ".hidden.png" in said[0] and "2 hidden" in said[0], done.stdout + done.stderr
    as_json = subprocess.run(
        [sys.executable, "-m", "skinseg", "infer", src, "--model", standin_model, "-o", tmp_path / "o3", "-r",
         "--log-format", "json"],
        capture_output=True,
        text=True,
        timeout=180,
    )  # fmt: skip
    events = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert [e["count"] for e in events if e["event"] == "hidden"] == [2]


# ------------------------------------------------------------------------------------------------- unreadable folders


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a folder whatever its mode")
def test_an_unreadable_sub_folder_is_a_failed_row_not_a_silence(model, tmp_path):
    src = tmp_path / "src"
    write_png(src / "a.png", lesion_image())
    write_png(src / "locked" / "b.png", lesion_image())
    (src / "locked").chmod(0)
    try:
        summary = run_batch([src], model, tmp_path / "out", OPTS, recursive=True)
    finally:
        (src / "locked").chmod(0o700)
    rows = rows_of(tmp_path / "out")
    assert summary.ok == 1 and summary.failed == 1
    assert rows["locked/"]["status"] == "failed" and "ermission" in rows["locked/"]["error"]


def test_an_unreadable_sub_folder_row_from_discovery(model, tmp_path, monkeypatch):
    """The same finding where the test runs as root: the folder's listing fails as it would for a user."""
    import skinseg.runtime.inputs as inputs

    src = tmp_path / "src"
    write_png(src / "a.png", lesion_image())
    write_png(src / "locked" / "b.png", lesion_image())
    real = os.scandir

    def scandir(path):
        if os.fspath(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real(path)

    monkeypatch.setattr(inputs.os, "scandir", scandir)
    summary = run_batch([src], model, tmp_path / "out", OPTS, recursive=True)
    rows = rows_of(tmp_path / "out")
    assert (summary.ok, summary.failed) == (1, 1)
    assert rows["locked/"]["status"] == "failed" and "Permission denied" in rows["locked/"]["error"]
