"""results.csv says what is on disk: rows of skipped images come from their masks' records, whatever an older report
said, and rows are kept or dropped by where their inputs are, whatever the current folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from skinseg.runtime.batch import run_batch
from skinseg.runtime.options import InferOptions
from skinseg.runtime.outputs import read_record
from skinseg.runtime.report import read_results
from tests.support import lesion_image, photos, write_png

OPTS = InferOptions(threads=1)
HIGH = InferOptions(threads=1, threshold=0.95)  # above the lesion's red (230/255): empty masks


def recorded(out: Path, stem: str) -> dict:
    return read_record(out / f"{stem}_mask.png")


def test_a_report_older_than_the_masks_is_rebuilt_from_their_records(standin_model, tmp_path):
    """A run killed before its checkpoint leaves results.csv of the run before it; the next run's skipped rows
    must carry what the masks on disk hold (their area and settings), not the older report's."""
    src, out = photos(tmp_path / "src"), tmp_path / "out"
    run_batch([src], standin_model, out, HIGH)
    stale = (out / "results.csv").read_bytes()
    assert all(row["area_px"] == 0 for row in read_results(out / "results.csv").values())
    run_batch([src], standin_model, out, OPTS)  # redoes all three with the default threshold ...
    (out / "results.csv").write_bytes(stale)  # ... and is killed before its report is written

    summary = run_batch([src], standin_model, out, OPTS)
    assert summary.skipped == 3
    rows = read_results(out / "results.csv")
    for i in range(3):
        record = recorded(out, f"p{i:03d}")
        row = rows[f"p{i:03d}.png"]
        assert row["status"] == "skipped"
        assert row["area_px"] == record["row"]["area_px"] > 0
        assert row["settings"] == record["settings"] and row["fingerprint"] == record["input"]
    assert run_batch([src], standin_model, out, OPTS).skipped == 3  # and it stays right
    assert {k: r["area_px"] for k, r in read_results(out / "results.csv").items()} == {
        k: r["area_px"] for k, r in rows.items()
    }


def test_a_replaced_input_never_keeps_the_old_photos_row(standin_model, tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    write_png(src / "a.png", lesion_image(90, 120, seed=1))
    run_batch([src], standin_model, out, OPTS)
    stale = (out / "results.csv").read_bytes()
    write_png(src / "a.png", lesion_image(200, 150, seed=2))  # another photo at the same path
    run_batch([src], standin_model, out, OPTS)
    (out / "results.csv").write_bytes(stale)  # killed before the report
    assert run_batch([src], standin_model, out, OPTS).skipped == 1
    row = read_results(out / "results.csv")["a.png"]
    assert (row["width"], row["height"]) == (150, 200)


def cli(*args: object, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "skinseg", *map(str, args)], capture_output=True, text=True, timeout=180, cwd=cwd
    )


def test_rows_are_kept_whatever_folder_the_next_run_starts_in(standin_model, tmp_path):
    """cron runs from $HOME: a row written by a run started elsewhere is not dropped while its input exists."""
    data, out = tmp_path / "data", tmp_path / "out"
    write_png(data / "cwdA" / "a.png", lesion_image(seed=1))
    write_png(data / "cwdB" / "b.png", lesion_image(seed=2))
    first = cli("infer", "cwdA/a.png", "--model", standin_model, "-o", out, "--threads", "1", cwd=data)
    assert first.returncode == 0, first.stderr
    second = cli("infer", data / "cwdB" / "b.png", "--model", standin_model, "-o", out, "--threads", "1", cwd=Path("/"))
    assert second.returncode == 0, second.stderr
    rows = read_results(out / "results.csv")
    assert set(rows) == {"a.png", "b.png"}
    assert rows["a.png"]["input"] == str(data / "cwdA" / "a.png")  # recorded where it is, not as typed
    os.unlink(data / "cwdA" / "a.png")  # deleted inputs still go, whatever the folder
    third = cli("infer", data / "cwdB" / "b.png", "--model", standin_model, "-o", out, "--threads", "1", cwd=tmp_path)
    assert third.returncode == 0, third.stderr
    assert set(read_results(out / "results.csv")) == {"b.png"}
