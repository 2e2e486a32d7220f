"""`skinseg infer` under cron: --quiet prints only this run's new and failed images, warnings and the summary;
--log-file appends the full timestamped log; summary.json, the summary line and the gallery's header say both this
run's counts and the folder's totals. Every log line starts with its time, counts read right ("1 image"), and an
empty folder (a quiet night) is exit 0 with one line."""

from __future__ import annotations

import json
import re

from typer.testing import CliRunner

from skinseg.cli import app
from tests.support import lesion_image, run_cli, write_png

runner = CliRunner()
STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ ")


def _folder(tmp_path, n=3):
    src = tmp_path / "photos"
    for i in range(n):
        write_png(src / f"p{i}.png", lesion_image(seed=i))
    (src / "broken.png").write_bytes(b"\x89PNG not really")
    return src


def _infer(src, out, model, *extra):
    return runner.invoke(app, ["infer", str(src), "-o", str(out), "--model", str(model), "--threads", "1", *extra])


def test_a_quiet_rerun_lists_nothing_that_was_not_new(tmp_path, standin_model):
    src, out, log = _folder(tmp_path), tmp_path / "out", tmp_path / "night.log"
    first = _infer(src, out, standin_model, "--quiet", "--log-file", str(log))
    assert first.exit_code == 1  # broken.png
    lines = first.output.strip().splitlines()
    assert sum(" ok " in line for line in lines) == 3 and sum("failed  broken.png" in line for line in lines) == 1
    assert not any(line.split(" ", 1)[1].startswith("segmenting") for line in lines)  # the log has it
    (src / "new.png").write_bytes(write_png(tmp_path / "x.png", lesion_image(seed=9)).read_bytes())
    second = _infer(src, out, standin_model, "--quiet", "--log-file", str(log))
    assert second.exit_code == 0
    lines = second.output.strip().splitlines()
    assert len(lines) == 2, lines  # the new image and the summary; no line per skipped or failed-before image
    assert "ok      new.png" in lines[0] and "3 skipped" in lines[1] and "1 failed before" in lines[1]
    third = _infer(src, out, standin_model, "--quiet")
    assert len(third.output.strip().splitlines()) == 1  # a night with nothing new: one line


def test_the_log_file_keeps_every_line_with_its_time_across_runs(tmp_path, standin_model):
    src, out, log = _folder(tmp_path, 2), tmp_path / "out", tmp_path / "logs" / "skinseg.log"
    log.parent.mkdir()
    _infer(src, out, standin_model, "--quiet", "--log-file", str(log))
    _infer(src, out, standin_model, "--quiet", "--log-file", str(log))
    lines = log.read_text().splitlines()
    assert all(STAMP.match(line) for line in lines), lines
    assert sum("segmenting 3 images" in line for line in lines) == 2  # appended, not replaced
    assert sum("skipped p0.png" in line for line in lines) == 1 and sum("ok      p0.png" in line for line in lines) == 1
    assert sum("broken.png" in line and "not retried" in line for line in lines) == 1


def test_a_log_file_that_cannot_be_opened_stops_the_run_before_any_work(tmp_path, standin_model):
    src, out = _folder(tmp_path, 1), tmp_path / "out"
    result = _infer(src, out, standin_model, "--log-file", str(tmp_path / "no" / "such" / "dir" / "x.log"))
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1 and "--log-file" in result.output
    assert not out.exists()


def test_summary_json_the_summary_line_and_the_gallery_say_the_run_and_the_folder(tmp_path, standin_model):
    src, out = _folder(tmp_path), tmp_path / "out"
    _infer(src, out, standin_model, "-q")
    again = _infer(src, out, standin_model, "-q")
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["ok"], summary["skipped"], summary["failed_before"]) == (0, 3, 1)  # this run
    assert summary["folder"] == {"images": 4, "segmented": 3, "failed": 1, "flagged": 0}  # the folder
    assert "the folder holds 4 images: 3 segmented, 1 failed" in again.output
    page = (out / "index.html").read_text()
    assert "This run: 0 ok, 0 failed, 1 failed before, 3 skipped" in page
    assert "This folder holds 4 image(s) over all runs: 3 segmented (0 flagged), 1 failed" in page


def test_json_logs_follow_quiet_too(tmp_path, standin_model):
    src, out = _folder(tmp_path, 2), tmp_path / "out"
    _infer(src, out, standin_model, "-q", "--log-format", "json")
    again = _infer(src, out, standin_model, "-q", "--log-format", "json")
    events = [json.loads(line)["event"] for line in again.output.strip().splitlines()]
    assert events == ["summary"]


def test_an_empty_folder_is_exit_0_with_one_line_and_a_missing_one_exit_2(model, tmp_path):
    (tmp_path / "empty").mkdir()
    result = run_cli("infer", tmp_path / "empty", "--model", model, "--output", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    assert "no images in" in result.stdout + result.stderr
    assert len((result.stdout + result.stderr).strip().splitlines()) == 1
    missing = run_cli("infer", tmp_path / "nowhere", "--model", model, "--output", tmp_path / "out")
    assert missing.returncode == 2 and "no such file or folder" in missing.stderr


def test_log_lines_carry_timestamps_and_counts_read_right(model, tmp_path):
    write_png(tmp_path / "src" / "a.png", lesion_image())
    first = run_cli("infer", tmp_path / "src", "--model", model, "--output", tmp_path / "out")
    text = first.stdout + first.stderr
    assert "1 image " in text and "1 images" not in text
    lines = [line for line in text.splitlines() if line.strip()]
    assert all(line[:4].isdigit() and line[10] == "T" for line in lines), lines
    again = run_cli("infer", tmp_path / "src", "--model", model, "--output", tmp_path / "out", "--log-format", "json")
    events = [json.loads(line) for line in again.stdout.splitlines() if line.strip()]
    assert events and all("T" in e["time"] for e in events)
    assert "MP/s" not in again.stdout + again.stderr  # nothing was processed: no speed to report
