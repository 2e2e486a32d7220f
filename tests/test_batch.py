"""The batch runner (skinseg.runtime.batch) with a stand-in ONNX model whose mask is ``red > 127``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path, PurePosixPath

import cv2
import numpy as np
import pytest

from skinseg.runtime.batch import run_batch
from skinseg.runtime.errors import ImageError, ModelError, UsageError
from skinseg.runtime.inputs import discover_inputs
from skinseg.runtime.job import process_image
from skinseg.runtime.options import InferOptions
from skinseg.runtime.outputs import output_lock, output_paths
from skinseg.runtime.report import CSV_FIELDS
from tests.onnx_standins import metadata_json, odd_input_model, save
from tests.support import lesion_image, png_bit_depth, read_rows, write_png

ROOT = Path(__file__).resolve().parents[1]
OPTS = InferOptions(threads=1)


# --------------------------------------------------------------------------------------------------- one image


def test_process_image_writes_every_output_and_a_correct_row(model, tmp_path):
    rgb = lesion_image()
    src = write_png(tmp_path / "in" / "lesion.png", rgb)
    out = tmp_path / "out"
    options = InferOptions(threads=1, save_prob=True, contours=True)
    row = process_image(model, src, options, out, PurePosixPath("sub/lesion.png"))

    expected = np.where(rgb[..., 0] > 127, 255, 0)
    mask_path = out / "sub" / "lesion_mask.png"
    assert png_bit_depth(mask_path) == 1
    mask = cv2.imread(str(mask_path), cv2.IMREAD_UNCHANGED)
    assert mask.shape == (90, 120) and set(np.unique(mask)) == {0, 255}
    np.testing.assert_array_equal(mask, expected)
    overlay = cv2.imread(str(out / "sub" / "lesion_overlay.jpg"))
    assert overlay.shape == (90, 120, 3)
    prob = cv2.imread(str(out / "sub" / "lesion_prob.png"), cv2.IMREAD_UNCHANGED)
    assert prob.dtype == np.uint8 and png_bit_depth(out / "sub" / "lesion_prob.png") == 8
    np.testing.assert_array_equal(prob, rgb[..., 0])
    polygons = json.loads((out / "sub" / "lesion_contours.json").read_text())
    assert polygons["width"] == 120 and len(polygons["polygons"]) == 1

    ys, xs = np.nonzero(expected)
    assert set(row) == set(CSV_FIELDS)
    assert row["status"] == "ok" and row["error"] == "" and row["path"] == "sub/lesion.png"
    assert (row["width"], row["height"]) == (120, 90)
    assert row["area_px"] == len(xs) and row["area_fraction"] == pytest.approx(len(xs) / (120 * 90))
    assert [row["bbox_x"], row["bbox_y"], row["bbox_w"], row["bbox_h"]] == [
        xs.min(),
        ys.min(),
        xs.max() - xs.min() + 1,
        ys.max() - ys.min() + 1,
    ]
    assert row["n_components"] == 1 and row["mean_prob"] == pytest.approx(230 / 255, abs=1e-3)
    assert row["seconds"] > 0


def test_process_image_optional_outputs_off_and_skip(model, tmp_path):
    src = write_png(tmp_path / "a.png", lesion_image())
    out = tmp_path / "out"
    assert process_image(model, src, OPTS, out, "a.png")["status"] == "ok"
    assert sorted(p.name for p in out.iterdir()) == ["a_mask.png", "a_overlay.jpg"]
    assert process_image(model, src, OPTS, out, "a.png")["status"] == "skipped"
    assert process_image(model, src, InferOptions(threads=1, overwrite=True), out, "a.png")["status"] == "ok"
    # Asking for an output that does not exist yet makes the image out of date.
    assert process_image(model, src, InferOptions(threads=1, save_prob=True), out, "a.png")["status"] == "ok"


def test_process_image_fails_one_image_not_the_caller(model, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg at all")
    row = process_image(model, bad, OPTS, tmp_path / "out", "bad.jpg")
    assert row["status"] == "failed" and "bad.jpg" in row["error"] and "\n" not in row["error"]
    assert not (tmp_path / "out" / "bad_mask.png").exists()


def test_bad_model_raises_before_writing(tmp_path):
    src = write_png(tmp_path / "a.png", lesion_image())
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00garbage")
    odd = save(odd_input_model([1, 10], metadata=metadata_json()), tmp_path / "odd.onnx")
    for bad in (junk, odd):
        with pytest.raises(ModelError, match=bad.name):
            run_batch([src], bad, tmp_path / "out", OPTS)
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------------------- path safety


@pytest.mark.parametrize("rel", ["../escape.png", "a/../../escape.png", "/etc/escape.png"])
def test_output_paths_refuse_to_leave_the_output(tmp_path, rel):
    with pytest.raises(ImageError, match="outside output|without '..'"):
        output_paths(tmp_path / "out", rel, OPTS)


def test_symlinked_output_folder_leading_out_is_refused(model, tmp_path):
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (out / "sub").symlink_to(elsewhere, target_is_directory=True)
    src = write_png(tmp_path / "a.png", lesion_image())
    row = process_image(model, src, OPTS, out, "sub/a.png")
    assert row["status"] == "failed" and "outside output=" in row["error"]
    assert list(elsewhere.iterdir()) == []


def test_discovery_mirrors_folders_and_survives_symlink_loops(tmp_path):
    src = tmp_path / "src"
    for rel in ["a.JPG", "b.Png", "x/c.tiff", "x/y/d.webp", "x/y/e.BMP", "x/notes.txt", ".hidden/f.png", ".g.png"]:
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(b"")
    (src / "x" / "y" / "loop").symlink_to(src, target_is_directory=True)
    (src / "x" / "self").symlink_to(src / "x", target_is_directory=True)

    flat = [str(i.rel) for i in discover_inputs([src])]
    assert flat == ["a.JPG", "b.Png"]
    deep = [str(i.rel) for i in discover_inputs([src], recursive=True)]
    assert deep == ["a.JPG", "b.Png", "x/c.tiff", "x/y/d.webp", "x/y/e.BMP"]
    globbed = [str(i.rel) for i in discover_inputs([f"{src}/x/*/*.webp", str(src / "a.JPG")])]
    assert globbed == ["a.JPG", "y/d.webp"]
    with pytest.raises(UsageError, match="no such file or folder"):
        discover_inputs([src / "missing"])
    with pytest.raises(UsageError, match="not a supported image"):
        discover_inputs([src / "x" / "notes.txt"])


def test_discovery_names_every_image_entry_once_and_a_missing_glob_folder_is_an_error(tmp_path):
    """Image-named symlink loops are inputs (their read says why), not dropped; a file and a link to it keep the
    file's name; a glob whose fixed folder is missing (an unmounted share) is a usage error, not "no images"."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "plain.jpg").write_bytes(b"")
    (src / "a_link.jpg").symlink_to(src / "plain.jpg")
    (src / "loop1.jpg").symlink_to(src / "loop2.jpg")
    (src / "loop2.jpg").symlink_to(src / "loop1.jpg")
    assert [str(i.rel) for i in discover_inputs([src])] == ["loop1.jpg", "loop2.jpg", "plain.jpg"]
    assert [str(i.rel) for i in discover_inputs([f"{src}/*.jpg"])] == ["loop1.jpg", "loop2.jpg", "plain.jpg"]
    with pytest.raises(UsageError, match="no such folder .*is the share mounted"):
        discover_inputs([f"{tmp_path}/not_mounted/*.jpg"])
    assert discover_inputs([f"{src}/*.png"]) == []  # an existing folder without matches: nothing new


def test_a_recursive_glob_does_not_read_an_earlier_runs_outputs(model, tmp_path):
    src = tmp_path / "rec"
    write_png(src / "sub" / "x.png", lesion_image())
    assert run_batch([src], model, src / "out", OPTS, recursive=True).ok == 1
    assert (src / "out" / "sub" / "x_overlay.jpg").is_file()
    for pattern in (f"{src}/**/*.*", f"{src}/**/*", f"{src}/*"):  # files, and folders walked from a match
        found = [str(i.rel) for i in discover_inputs([pattern], recursive=True, output=tmp_path / "g")]
        assert sorted(set(found)) == ["sub/x.png"], (pattern, found)


def test_outputs_inside_the_source_are_not_inputs(model, tmp_path):
    src = tmp_path / "src"
    write_png(src / "a.png", lesion_image())
    summary = run_batch([src], model, src / "masks", OPTS, recursive=True)
    assert summary.ok == 1
    again = run_batch([src], model, src / "masks", OPTS, recursive=True)
    assert (again.ok, again.skipped, again.total) == (0, 1, 1)


def test_same_output_name_fails_the_second_image(model, tmp_path):
    src = tmp_path / "src"
    write_png(src / "a.png", lesion_image())
    (src / "a.jpg").write_bytes(cv2.imencode(".jpg", lesion_image(seed=1))[1].tobytes())
    summary = run_batch([src], model, tmp_path / "out", OPTS)
    rows = read_rows(tmp_path / "out")
    assert (summary.ok, summary.failed) == (1, 1) and summary.exit_code == 1
    assert rows["a.jpg"]["status"] == "ok"
    assert rows["a.png"]["status"] == "failed" and "would overwrite those of" in rows["a.png"]["error"]
    again = run_batch([src], model, tmp_path / "out", OPTS)  # the next night: the same clash, said but not failed
    assert (again.failed, again.failed_before, again.skipped, again.exit_code) == (0, 1, 1, 0)
    assert read_rows(tmp_path / "out")["a.png"]["status"] == "failed"
    assert run_batch([src], model, tmp_path / "out", InferOptions(threads=1, retry_failed=True)).failed == 1


def test_a_newcomer_of_the_same_stem_fails_and_the_earlier_photo_keeps_its_outputs(model, tmp_path):
    """a.png segmented yesterday, a.jpg (another photo) arrives today: a.jpg sorts first, but a.png owns the outputs."""
    src, out = tmp_path / "src", tmp_path / "out"
    write_png(src / "a.png", lesion_image(seed=0))
    assert run_batch([src], model, out, OPTS).ok == 1
    mask = (out / "a_mask.png").read_bytes()
    (src / "a.jpg").write_bytes(cv2.imencode(".jpg", lesion_image(seed=1))[1].tobytes())
    summary = run_batch([src], model, out, OPTS)
    rows = read_rows(out)
    assert (summary.ok, summary.skipped, summary.failed) == (0, 1, 1)
    assert rows["a.png"]["status"] == "skipped"
    assert rows["a.jpg"]["status"] == "failed" and "would overwrite those of" in rows["a.jpg"]["error"]
    assert (out / "a_mask.png").read_bytes() == mask


def test_another_photo_of_the_same_name_from_another_folder_does_not_replace_a_mask(model, tmp_path):
    """Cameras restart at IMG_0001: day2/a.png is another photo than day1/a.png, both segmented into one folder.
    The second fails with a line naming the first and the fixes; the first photo again is up to date; the same photo
    moved is up to date; --overwrite replaces the mask; the same path with new content is redone."""
    out = tmp_path / "out"
    day1 = write_png(tmp_path / "day1" / "a.png", lesion_image(seed=0))
    day2 = write_png(tmp_path / "day2" / "a.png", lesion_image(seed=1))
    assert run_batch([day1.parent], model, out, OPTS).ok == 1
    mask = (out / "a_mask.png").read_bytes()

    summary = run_batch([day2.parent], model, out, OPTS)
    error = read_rows(out)["a.png"]["error"]
    assert summary.failed == 1 and (out / "a_mask.png").read_bytes() == mask
    assert error.startswith("a_mask.png holds the mask of another photo of the same name")
    assert "overwrite" in error and str(tmp_path / "day1") in error
    assert run_batch([day1.parent], model, out, OPTS).skipped == 1

    moved = tmp_path / "moved"
    day1.parent.rename(moved)
    assert run_batch([moved], model, out, OPTS).skipped == 1  # the same content: nothing to do
    assert run_batch([moved], model, out, InferOptions(threads=1, threshold=0.6)).ok == 1  # moved, redone: the same
    mask = (out / "a_mask.png").read_bytes()

    assert run_batch([day2.parent], model, out, InferOptions(threads=1, overwrite=True)).ok == 1
    replaced = (out / "a_mask.png").read_bytes()
    assert replaced != mask
    write_png(day2, lesion_image(seed=2))  # the same path, new content: redone
    assert run_batch([day2.parent], model, out, OPTS).ok == 1
    assert (out / "a_mask.png").read_bytes() != replaced


# --------------------------------------------------------------------------------------------------- batches


def test_run_batch_events_reports_and_merge(model, tmp_path):
    src = tmp_path / "src"
    for rel in ["a.png", "x/b.png", "x/y/c.png"]:
        write_png(src / rel, lesion_image(seed=len(rel)))
    out = tmp_path / "out"
    events: list[dict] = []
    summary = run_batch([src], model, out, OPTS, recursive=True, on_event=events.append)

    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and events[0]["total"] == 3 and kinds[-1] == "summary"
    assert kinds.count("image_start") == 3 and kinds.count("image_done") == 3 and "tiles" in kinds
    assert (summary.ok, summary.failed, summary.skipped, summary.exit_code) == (3, 0, 0, 0)
    for rel in ["a", "x/b", "x/y/c"]:
        assert (out / f"{rel}_mask.png").is_file() and (out / f"{rel}_overlay.jpg").is_file()
    rows = read_rows(out)
    assert list(rows) == ["a.png", "x/b.png", "x/y/c.png"] and all(r["status"] == "ok" for r in rows.values())
    data = json.loads((out / "summary.json").read_text())
    assert data["ok"] == 3 and data["provider"] == "CPUExecutionProvider" and len(data["model_sha256"]) == 64
    assert set(data["versions"]) == {"skinseg", "onnxruntime", "numpy", "opencv"}
    assert data["megapixels_per_second"] > 0 and data["options"]["overlap"] == 0.25

    # Rerun on one file: the other rows stay, the skipped one keeps its data.
    first = rows["a.png"]
    again = run_batch([src / "a.png"], model, out, OPTS)
    assert (again.skipped, again.total) == (1, 1)
    rows = read_rows(out)
    assert len(rows) == 3 and rows["a.png"]["status"] == "skipped"
    assert rows["a.png"]["area_px"] == first["area_px"] and rows["a.png"]["seconds"] == first["seconds"]

    # Without the previous report, a skipped row is rebuilt from the mask on disk.
    (out / "results.csv").unlink()
    run_batch([src / "a.png"], model, out, OPTS)
    assert read_rows(out)["a.png"]["area_px"] == first["area_px"]


def test_rerun_skips_by_content_overwrite_redoes_and_a_changed_photo_reprocesses(model, tmp_path):
    """Up to date means: the same content as when it was segmented (issue 12, finding 9), whatever the dates say.
    A touched file, or one dated in the future, is not redone on every run; another photo copied over it with its
    old date (``cp -p``) is."""
    src = tmp_path / "src"
    paths = [write_png(src / f"i{i}.png", lesion_image(seed=i)) for i in range(3)]
    out = tmp_path / "out"
    assert run_batch([src], model, out, OPTS).ok == 3
    mask = out / "i0_mask.png"
    stamp = mask.stat().st_mtime_ns
    second = run_batch([src], model, out, OPTS)
    assert (second.ok, second.skipped) == (0, 3) and mask.stat().st_mtime_ns == stamp
    future = time.time() + 60
    os.utime(paths[1], (future, future))
    third = run_batch([src], model, out, OPTS)
    assert (third.ok, third.skipped) == (0, 3)  # touched, same content: up to date
    assert run_batch([src], model, out, OPTS).skipped == 3  # and not redone on every run either
    old = paths[2].stat()
    write_png(paths[2], lesion_image(seed=7))
    os.utime(paths[2], ns=(old.st_atime_ns, old.st_mtime_ns))  # cp -p: another photo, the old date
    fourth = run_batch([src], model, out, OPTS)
    assert (fourth.ok, fourth.skipped) == (1, 2) and read_rows(out)["i2.png"]["status"] == "ok"
    redo = run_batch([src], model, out, InferOptions(threads=1, overwrite=True))
    assert (redo.ok, redo.skipped) == (3, 0)


def test_stale_temp_files_are_removed(model, tmp_path):
    src = write_png(tmp_path / "a.png", lesion_image())
    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    stale = [out / ".a_mask.png.0123abcd.tmp", out / "sub" / ".results.csv.deadbeef.tmp"]
    for p in stale:
        p.write_bytes(b"half")
    keep = out / ".user.0123abcd.tmp"
    keep.write_bytes(b"not ours")
    run_batch([src], model, out, OPTS)
    assert not any(p.exists() for p in stale) and keep.exists()


def test_lock_refuses_a_second_run_and_wait_waits(model, tmp_path):
    src = write_png(tmp_path / "a.png", lesion_image())
    out = tmp_path / "out"
    out.mkdir()
    with output_lock(out), pytest.raises(UsageError, match="another skinseg infer .*is writing to this output"):
        run_batch([src], model, out, OPTS)

    events: list[dict] = []
    held, release, released_at = threading.Event(), threading.Event(), []

    def hold() -> None:
        with output_lock(out):
            held.set()
            release.wait(60)
        released_at.append(time.perf_counter())

    def on_event(event: dict) -> None:
        events.append(event)
        if event["event"] == "waiting":  # the run is waiting for the lock: only now let it go
            release.set()

    holder = threading.Thread(target=hold)
    holder.start()
    assert held.wait(60)
    summary = run_batch([src], model, out, OPTS, wait=True, on_event=on_event)
    finished = time.perf_counter()
    holder.join()
    assert summary.ok == 1 and released_at and finished >= released_at[0]  # it waited for the lock to go
    assert events[0]["event"] == "waiting"


def test_no_inputs_is_an_empty_run_and_unwritable_output_a_usage_error(model, tmp_path):
    (tmp_path / "empty").mkdir()
    empty = run_batch([tmp_path / "empty"], model, tmp_path / "out", OPTS)  # cron on a quiet night: no error
    assert (empty.total, empty.exit_code) == (0, 0) and not (tmp_path / "out").exists()
    with pytest.raises(UsageError, match="no such file or folder"):
        run_batch([tmp_path / "missing"], model, tmp_path / "out", OPTS)
    src = write_png(tmp_path / "a.png", lesion_image())
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(UsageError, match="not a folder"):
        run_batch([src], model, a_file, OPTS)
    with pytest.raises(UsageError, match="cannot be created or written"):
        run_batch([src], model, a_file / "below", OPTS)


def test_runtime_batch_never_imports_tensorflow(model, tmp_path):
    src = write_png(tmp_path / "in" / "a.png", lesion_image())
    code = textwrap.dedent(
        f"""
        import sys
        from skinseg.runtime.batch import run_batch
        from skinseg.runtime.options import InferOptions
        summary = run_batch([{str(src)!r}], {str(model)!r}, {str(tmp_path / "out")!r}, InferOptions(threads=1))
        assert summary.ok == 1, summary
        heavy = [m for m in ("tensorflow", "keras", "tf2onnx") if m in sys.modules]
        assert not heavy, heavy
        print("clean")
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "clean" in proc.stdout


# --------------------------------------------------------------------------------------------------- a real model


@pytest.mark.train
def test_real_model_tiled_agrees_with_whole_image(tmp_path):
    pytest.importorskip("tensorflow")
    keras = pytest.importorskip("keras")
    import onnxruntime as ort

    from skinseg.data.synth import synthesize
    from skinseg.exporters.keras_to_onnx import export_onnx
    from skinseg.runtime.metadata import ModelMetadata, Scale
    from skinseg.training.model import build_unet

    rng = np.random.default_rng(0)
    pairs = [synthesize(64, 64, rng) for _ in range(32)]
    x = np.stack([p[0] for p in pairs]).astype(np.float32)
    y = np.stack([p[1] for p in pairs])[..., None].astype(np.float32) / 255.0
    keras.utils.set_random_seed(0)
    net = build_unet(image_height=64, image_width=64, base_filters=4, num_layers=3, seed=0)
    net.compile(optimizer=keras.optimizers.Adam(0.01), loss="binary_crossentropy")
    net.fit(x, y, batch_size=8, epochs=15, verbose=0)
    path = tmp_path / "unet.onnx"
    export_onnx(net, path, metadata=ModelMetadata(tile_size=(64, 64), train_scale=Scale("native")))

    image, truth = synthesize(64, 64, np.random.default_rng(99))
    src = write_png(tmp_path / "in.png", image)
    options = InferOptions(threads=1, keep_largest=False, fill_holes=False)
    row = process_image(path, src, options, tmp_path / "out", "in.png")
    assert row["status"] == "ok", row["error"]
    tiled = cv2.imread(str(tmp_path / "out" / "in_mask.png"), cv2.IMREAD_GRAYSCALE) > 127

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    whole = session.run(None, {name: image[None].astype(np.float32)})[0].reshape(64, 64) > 0.5
    assert 0.02 < whole.mean() < 0.98, "the model should segment something, not everything"
    iou = (tiled & whole).sum() / max(1, (tiled | whole).sum())
    assert iou >= 0.99
    truth_iou = (whole & (truth > 0)).sum() / max(1, (whole | (truth > 0)).sum())
    assert truth_iou > 0.3
