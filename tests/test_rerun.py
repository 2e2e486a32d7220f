"""Reruns of `skinseg infer` into an existing output folder: the settings stamp and rows of deleted inputs."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import cv2
import numpy as np

from skinseg.runtime.batch import run_batch
from skinseg.runtime.imageio import file_sha256
from skinseg.runtime.job import process_image
from skinseg.runtime.options import InferOptions
from skinseg.runtime.outputs import SETTINGS_NAME, remove_stale_temps, stamp_settings
from tests.onnx_standins import affine_model, metadata_json, save
from tests.support import lesion_image, read_rows, write_png

OPTS = InferOptions(threads=1)
HIGH = InferOptions(threads=1, threshold=0.95)  # above the lesion's red (230/255): empty masks


def sources(folder: Path, n: int = 3) -> Path:
    for i in range(n):
        write_png(folder / f"img{i}.png", lesion_image(seed=i))
    return folder


def mask(out: Path, stem: str) -> np.ndarray:
    return cv2.imread(str(out / f"{stem}_mask.png"), cv2.IMREAD_GRAYSCALE) > 127


def events_of(kind: str):
    seen: list[dict] = []
    return seen, lambda event: seen.append(event) if event["event"] == kind else None


# ------------------------------------------------------------------------------------------------ settings stamp


def test_threshold_change_redoes_every_image(model, tmp_path):
    src, out = sources(tmp_path / "src"), tmp_path / "out"
    changed, on_event = events_of("settings_changed")
    first = run_batch([src], model, out, OPTS, on_event=on_event)
    assert (first.ok, first.skipped) == (3, 0) and mask(out, "img0").any()
    assert changed == []  # a new folder's first stamp is no news
    stamp = json.loads((out / SETTINGS_NAME).read_text())
    assert stamp["model_sha256"] == file_sha256(model) and stamp["options"]["threshold"] is None
    assert "since" in stamp and "threads" not in stamp["options"]

    same = run_batch([src], model, out, InferOptions(threads=2, batch_size=1), on_event=on_event)
    assert (same.ok, same.skipped) == (0, 3) and changed == []  # speed options are no change

    again = run_batch([src], model, out, HIGH, on_event=on_event)
    assert (again.ok, again.skipped, again.failed) == (3, 0, 0)
    assert not mask(out, "img0").any()
    assert len(changed) == 1 and changed[0]["previous"]["options"]["threshold"] is None
    assert changed[0]["current"]["options"]["threshold"] == 0.95
    assert json.loads((out / "summary.json").read_text())["options"]["threshold"] == 0.95
    assert all(r["status"] == "ok" and r["area_px"] == "0" for r in read_rows(out).values())

    third = run_batch([src], model, out, HIGH, on_event=on_event)
    assert (third.ok, third.skipped) == (0, 3) and len(changed) == 1


def test_model_change_redoes_every_image(model, tmp_path):
    src, out = sources(tmp_path / "src"), tmp_path / "out"
    assert run_batch([src], model, out, OPTS).ok == 3
    other = save(affine_model(bias=-0.5, metadata=metadata_json((64, 64))), tmp_path / "other.onnx")
    summary = run_batch([src], other, out, OPTS)
    assert (summary.ok, summary.skipped) == (3, 0) and not mask(out, "img1").any()
    assert json.loads((out / SETTINGS_NAME).read_text())["model_sha256"] == file_sha256(other)
    assert json.loads((out / "summary.json").read_text())["model_sha256"] == file_sha256(other)


def test_saving_more_outputs_counts_as_a_change(model, tmp_path):
    src, out = sources(tmp_path / "src", 2), tmp_path / "out"
    run_batch([src], model, out, OPTS)
    with_prob = run_batch([src], model, out, InferOptions(threads=1, save_prob=True))
    assert with_prob.ok == 2 and (out / "img0_prob.png").is_file()


def test_run_killed_after_a_settings_change_redoes_only_the_old_masks(model, tmp_path):
    src, out = sources(tmp_path / "src", 4), tmp_path / "out"
    run_batch([src], model, out, OPTS)
    # What a run with the new threshold leaves when killed after its first two images:
    high = dataclasses.replace(HIGH, model_sha256=file_sha256(model))
    stamp_settings(out, file_sha256(model), HIGH.output_settings())
    for name in ("img0.png", "img1.png"):
        assert process_image(model, src / name, high, out, name)["status"] == "ok"
    changed, on_event = events_of("settings_changed")
    rerun = run_batch([src], model, out, HIGH, on_event=on_event)
    assert (rerun.ok, rerun.skipped, rerun.failed) == (2, 2, 0) and changed == []
    assert not any(mask(out, f"img{i}").any() for i in range(4))


def strip_records(folder: Path) -> None:
    """Rewrite every output without its skinseg record, as an older skinseg wrote them."""
    for path in folder.glob("*_mask.png"):
        cv2.imwrite(str(path), cv2.imread(str(path), cv2.IMREAD_UNCHANGED))


def test_folder_without_a_stamp_is_redone_once(model, tmp_path):
    src, out = sources(tmp_path / "src", 2), tmp_path / "out"
    run_batch([src], model, out, OPTS)
    (out / SETTINGS_NAME).unlink()  # as an older skinseg left it: no stamp, outputs without records
    strip_records(out)
    changed, on_event = events_of("settings_changed")
    assert run_batch([src], model, out, OPTS, on_event=on_event).ok == 2
    assert len(changed) == 1 and changed[0]["previous"] is None and (out / SETTINGS_NAME).is_file()
    assert run_batch([src], model, out, OPTS).skipped == 2


def test_unreadable_stamp_changes_nothing_and_overwrite_still_redoes(model, tmp_path):
    """Each output records its own settings: a damaged folder stamp does not make a rerun redo everything."""
    src, out = sources(tmp_path / "src", 2), tmp_path / "out"
    run_batch([src], model, out, OPTS)
    (out / SETTINGS_NAME).write_text("{not json")
    assert run_batch([src], model, out, OPTS).skipped == 2
    assert run_batch([src], model, out, InferOptions(threads=1, overwrite=True)).ok == 2


def test_stale_stamp_temp_file_is_removed(tmp_path):
    tmp = tmp_path / f".{SETTINGS_NAME}.0123abcd.tmp"
    tmp.write_text("{")
    assert remove_stale_temps(tmp_path) == 1 and not tmp.exists()


# ------------------------------------------------------------------------------------------------ deleted inputs


def test_deleted_input_loses_its_row(model, tmp_path):
    src, out = sources(tmp_path / "src", 2), tmp_path / "out"
    (src / "broken.png").write_bytes(b"not a png")
    first = run_batch([src], model, out, OPTS)
    assert first.failed == 1 and read_rows(out)["broken.png"]["status"] == "failed"

    (src / "broken.png").unlink()
    (src / "img1.png").unlink()
    rerun = run_batch([src], model, out, OPTS)
    assert (rerun.ok, rerun.skipped, rerun.failed) == (0, 1, 0)
    assert set(read_rows(out)) == {"img0.png"}
    assert "broken.png" not in (out / "index.html").read_text(encoding="utf-8")


def test_input_outside_this_runs_sources_keeps_its_row(model, tmp_path):
    out = tmp_path / "out"
    a = write_png(tmp_path / "a" / "one.png", lesion_image(seed=1))
    b = write_png(tmp_path / "b" / "two.png", lesion_image(seed=2))
    run_batch([a], model, out, OPTS)
    run_batch([b], model, out, OPTS)
    rows = read_rows(out)
    assert set(rows) == {"one.png", "two.png"} and rows["one.png"]["input"] == os.fspath(a)

    a.unlink()  # now it is gone and not part of the run: its row goes; two.png's stays
    run_batch([b], model, out, OPTS)
    assert set(read_rows(out)) == {"two.png"}
