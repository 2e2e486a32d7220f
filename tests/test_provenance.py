"""Which model made a mask: each results.csv row and each mask's record name the model's SHA-256 and skinseg's
version; a skipped image keeps what its mask's record says (never the version of a later run); a model replaced
mid-run changes nothing in that run."""

from __future__ import annotations

import csv
import hashlib
import os

import cv2

from skinseg import __version__
from skinseg.runtime.batch import run_batch
from skinseg.runtime.options import InferOptions
from skinseg.runtime.outputs import read_record, with_record
from tests.onnx_standins import identity_model, metadata_json, save
from tests.support import (
    lesion_image,
    read_rows,
    write_png,
)


def test_rows_and_mask_records_name_the_model_and_the_version(tmp_path, standin_model):
    src, out = tmp_path / "in", tmp_path / "out"
    write_png(src / "a.png", lesion_image())
    (src / "bad.png").write_bytes(b"not an image")
    sha = hashlib.sha256(standin_model.read_bytes()).hexdigest()
    run_batch([src], standin_model, out, InferOptions(threads=1))
    rows = read_rows(out)
    assert rows["a.png"]["model_sha256"] == sha and rows["a.png"]["skinseg_version"] == __version__
    assert rows["bad.png"]["model_sha256"] == sha  # the run's model, for a failure too
    record = read_record(out / "a_mask.png")
    assert record["row"]["model_sha256"] == sha and record["row"]["skinseg_version"] == __version__
    run_batch([src], standin_model, out, InferOptions(threads=1))  # skipped: from the mask's record
    again = read_rows(out)["a.png"]
    assert again["status"] == "skipped" and again["model_sha256"] == sha and again["skinseg_version"] == __version__


def test_a_mask_made_before_versions_were_recorded_does_not_claim_this_version(tmp_path, standin_model):
    src, out = tmp_path / "in", tmp_path / "out"
    write_png(src / "a.png", lesion_image())
    run_batch([src], standin_model, out, InferOptions(threads=1))
    mask = out / "a_mask.png"
    record = read_record(mask)
    for key in ("model_sha256", "skinseg_version"):
        del record["row"][key]
    plain = mask.read_bytes()
    cut = plain.index(b"tEXt") - 4  # drop the record chunk, put the old-style record back
    end = cut + 12 + int.from_bytes(plain[cut : cut + 4], "big")
    mask.write_bytes(with_record(plain[:cut] + plain[end:], {k: v for k, v in record.items() if k != "v"}))
    with open(out / "results.csv", newline="") as f:  # and the report of that older version, without the columns
        old = [{k: v for k, v in r.items() if k not in ("model_sha256", "skinseg_version")} for r in csv.DictReader(f)]
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(old[0]))
        writer.writeheader()
        writer.writerows(old)
    run_batch([src], standin_model, out, InferOptions(threads=1))
    row = read_rows(out)["a.png"]
    assert row["status"] == "skipped" and row["skinseg_version"] == ""  # unknown: not this run's version
    assert row["model_sha256"] == hashlib.sha256(standin_model.read_bytes()).hexdigest()


# ------------------------------------------------------------------------------------------- a model replaced mid-run


def test_a_model_replaced_mid_run_changes_nothing_in_that_run(model, tmp_path, monkeypatch):
    import skinseg.runtime.job as batch

    src = tmp_path / "src"
    for i in range(5):
        write_png(src / f"i{i}.png", lesion_image(seed=i))
    live = tmp_path / "live.onnx"
    live.write_bytes(model.read_bytes())
    other = save(identity_model(metadata=metadata_json((64, 64), threshold=0.99)), tmp_path / "other.onnx")
    real = batch.process_image
    calls = [0]

    def swap_after_two(*args, **kwargs):
        calls[0] += 1
        if calls[0] == 3:
            os.replace(other, live)  # an atomic mv over --model mid-run
        return real(*args, **kwargs)

    monkeypatch.setattr(batch, "process_image", swap_after_two)
    summary = run_batch([src], live, tmp_path / "out", InferOptions(threads=1, max_in_flight=1))
    assert summary.ok == 5
    masks = [cv2.imread(str(tmp_path / "out" / f"i{i}_mask.png"), cv2.IMREAD_GRAYSCALE) for i in range(5)]
    assert all((m > 0).sum() == (masks[0] > 0).sum() > 0 for m in masks)  # all from the first model
    assert summary.model_sha256 == hashlib.sha256(model.read_bytes()).hexdigest()
