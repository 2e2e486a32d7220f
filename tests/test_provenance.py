"""Which model made a mask: each results.csv row and each mask's record name the model's SHA-256 and skinseg's
version; a skipped image keeps what its mask's record says (never the version of a later run)."""

from __future__ import annotations

import csv
import hashlib

from skinseg import __version__
from skinseg.runtime.batch import InferOptions, run_batch
from skinseg.runtime.outputs import read_record, with_record
from tests.support import lesion_image, read_rows, write_png


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
