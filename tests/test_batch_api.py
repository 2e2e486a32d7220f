"""The Python batch API: each image's typed row as it completes; the summary at the end; leaving early stops the
batch with its reports written."""

from __future__ import annotations

import json

from skinseg import ImageRow, InferOptions, segment_folder
from skinseg.runtime.batch import iter_batch
from skinseg.runtime.report import read_results
from tests.support import lesion_image, write_png

OPTS = InferOptions(threads=1)


def test_rows_come_as_images_complete_and_match_the_report(standin_model, tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    for i in range(3):
        write_png(src / f"i{i}.png", lesion_image(seed=i))
    (src / "bad.png").write_bytes(b"not a png")
    events = []
    run = segment_folder(src, out, model=standin_model, options=OPTS, on_event=events.append)
    seen = []
    for row in run:
        assert isinstance(row, ImageRow)
        seen.append((row.path, row.status))
        done = [e["row"] for e in events if e["event"] == "image_done"]
        assert any(r is row for r in done)  # yielded once recorded (and said to on_event)
    assert sorted(seen) == [("bad.png", "failed"), ("i0.png", "ok"), ("i1.png", "ok"), ("i2.png", "ok")]
    assert (run.summary.ok, run.summary.failed) == (3, 1)
    report = read_results(out / "results.csv")
    assert {path: row["status"] for path, row in report.items()} == dict(seen)
    assert json.loads((out / "summary.json").read_text())["ok"] == 3
    again = iter_batch([src], standin_model, out, OPTS)
    assert {row.status for row in again} == {"skipped", "failed"} and again.summary.skipped == 3


def test_leaving_the_loop_early_stops_the_batch_and_writes_its_reports(standin_model, tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    for i in range(6):
        write_png(src / f"i{i}.png", lesion_image(seed=i))
    run = iter_batch([src], standin_model, out, InferOptions(threads=1, max_in_flight=1))
    for _row in run:
        break  # nothing else: the loop's end closes the batch
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stopped"] == "interrupted" and summary["interrupted"] is True
    assert run.summary is not None and (run.summary.stopped, run.summary.ok) == ("interrupted", summary["ok"])
    assert 1 <= summary["ok"] < 6 and summary["not_done"] == 6 - summary["ok"]
    rest = iter_batch([src], standin_model, out, OPTS)  # the lock was released: a rerun does the rest
    assert sorted(row.status for row in rest).count("ok") == 6 - summary["ok"]


def test_a_batch_runs_once_iterating_again_yields_nothing_and_keeps_its_summary(standin_model, tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    for i in range(2):
        write_png(src / f"i{i}.png", lesion_image(seed=i))
    run = iter_batch([src], standin_model, out, OPTS)
    assert len(list(run)) == 2
    summary, written = run.summary, (out / "summary.json").read_bytes()
    assert summary is not None and summary.ok == 2
    assert list(run) == [] and run.summary is summary  # was None: the second loop's empty return replaced it
    assert (out / "summary.json").read_bytes() == written  # nothing ran again
    left = iter_batch([src], standin_model, tmp_path / "left", InferOptions(threads=1, max_in_flight=1))
    for _row in left:
        break
    stopped = left.summary
    assert stopped is not None and stopped.stopped == "interrupted"
    assert list(left) == [] and left.summary is stopped
