"""Crashes, concurrent runs, unwritable folders and full disks lose nothing.

- `skinseg infer` SIGKILLed after 1 (and, slow, 10 and 20) of 30 images: every file under its final name is already
  complete, and a rerun ends byte-identical to an uninterrupted run with no temporary files left;
- two runs on one output folder: the second exits 2 at once (or waits with --wait), outputs are not corrupted;
- an output folder that cannot be written (as root too) is exit 2; a full disk fails one image cleanly;
- `skinseg export` and training checkpoints SIGKILLed mid-write keep the previous file intact (TensorFlow, slow).

Already covered elsewhere: an in-process lock holder (``tests/test_infer_cli.py::test_locked_output_exits_2``,
``tests/test_batch.py::test_lock_refuses_a_second_run_and_wait_waits``); an output path below a regular file
(``test_batch.py::test_no_inputs_is_an_empty_run_and_unwritable_output_a_usage_error``); ``os.replace`` failing in
the atomic writer (``tests/test_imageio.py::test_atomic_writes_leave_no_temp_files``); Ctrl-C and SIGTERM
(``tests/test_interrupts.py``).
"""

from __future__ import annotations

import csv
import errno
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from skinseg.runtime import imageio as runtime_imageio
from skinseg.runtime.batch import run_batch
from skinseg.runtime.errors import SkinsegError
from skinseg.runtime.options import InferOptions
from tests.onnx_standins import identity_model, metadata_json, save
from tests.support import outputs, png_bit_depth, smooth_image, wait_for, write_png

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
N_IMAGES = 30
INFER_ARGS = ("--threads", "1", "--save-prob", "--contours", "--quiet")
STABLE_COLUMNS = ("width", "height", "area_px", "area_fraction", "bbox_x", "bbox_y", "bbox_w", "bbox_h", "mean_prob")


def skinseg(*args: object) -> list[str]:
    return [sys.executable, "-m", "skinseg", *map(str, args)]


def start(*args: object, stderr: object = subprocess.DEVNULL) -> subprocess.Popen:
    return subprocess.Popen(skinseg(*args), cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=stderr)


def run(*args: object, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(skinseg(*args), cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)


def kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)


def masks(folder: Path) -> int:
    return sum(1 for _ in folder.glob("*_mask.png"))


def stray_files(folder: Path) -> list[str]:
    """Temporary or hidden files left under ``folder`` (the lock and the settings stamp are meant to stay)."""
    return sorted(
        str(p.relative_to(folder))
        for p in folder.rglob("*")
        if p.is_file()
        and (".tmp" in p.name or p.name.startswith("."))
        and p.name not in (".skinseg.lock", ".skinseg-settings.json")
    )


def report(folder: Path) -> dict[str, dict[str, str]]:
    with open(folder / "results.csv", newline="", encoding="utf-8") as f:
        return {r["path"]: {k: r[k] for k in ("status", *STABLE_COLUMNS)} for r in csv.DictReader(f)}


def assert_same_results(out: Path, reference: Path) -> None:
    got, want = report(out), report(reference)
    assert set(got) == set(want)
    for path, row in got.items():
        assert row["status"] in ("ok", "skipped"), (path, row)
        assert {k: row[k] for k in STABLE_COLUMNS} == {k: want[path][k] for k in STABLE_COLUMNS}, path


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(source folder of 30 images, model, output of an uninterrupted run)."""
    root = tmp_path_factory.mktemp("crash")
    for i in range(N_IMAGES):
        write_png(root / "src" / f"img{i:02d}.png", smooth_image(720, 960, i % 12))
    model = save(identity_model(metadata=metadata_json((64, 64))), root / "m.onnx")
    reference = root / "reference"
    done = run("infer", root / "src", "--model", model, "--output", reference, *INFER_ARGS)
    assert done.returncode == 0, done.stderr
    assert len(outputs(reference)) == 4 * N_IMAGES
    return root / "src", model, reference


# ------------------------------------------------------------------------------------------------ infer: SIGKILL


# One kill point in the default suite; the later ones (the same behaviour, tens of seconds each) with the slow tests.
@pytest.mark.parametrize(
    "after", [1, pytest.param(10, marks=pytest.mark.slow), pytest.param(20, marks=pytest.mark.slow)]
)
def test_infer_killed_mid_batch_resumes_to_identical_outputs(dataset, tmp_path, after):
    src, model, reference = dataset
    out = tmp_path / "out"
    proc = start("infer", src, "--model", model, "--output", out, *INFER_ARGS)
    reached = wait_for(lambda: masks(out) >= after, proc, timeout=120)
    running = proc.poll() is None
    kill(proc)
    done = masks(out)
    assert reached and running and done < N_IMAGES, f"the kill should land mid-batch ({done} masks, after={after})"

    # Atomic outputs: whatever exists under a final name is already complete and correct.
    want = outputs(reference)
    partial = outputs(out)
    assert partial and all(data == want[name] for name, data in partial.items())

    rerun = run("infer", src, "--model", model, "--output", out, *INFER_ARGS)
    assert rerun.returncode == 0, rerun.stderr
    summary = rerun.stdout.strip().splitlines()[-1]
    assert f"{N_IMAGES} images:" in summary and f"{N_IMAGES - done} ok, 0 failed, {done} skipped" in summary, summary
    assert outputs(out) == want and len(want) == 4 * N_IMAGES
    assert png_bit_depth(out / "img00_mask.png") == 1  # the resumed masks are written as every mask is
    assert stray_files(out) == []
    assert_same_results(out, reference)


# ------------------------------------------------------------------------------------------------ concurrency


def test_second_run_on_the_same_output_exits_2_and_wait_waits(dataset, tmp_path):
    src, model, reference = dataset
    out = tmp_path / "out"
    lock = out / ".skinseg.lock"
    first = start("infer", src, "--model", model, "--output", out, *INFER_ARGS)
    try:
        holding = wait_for(lambda: lock.is_file() and lock.read_text().strip() == str(first.pid), first, timeout=60)
        assert holding, "the first run should take the lock"
        first.send_signal(signal.SIGSTOP)  # freeze it while it holds the lock: no race with its finishing

        began = time.monotonic()
        second = run("infer", src, "--model", model, "--output", out, *INFER_ARGS, timeout=60)
        assert second.returncode == 2, second.stdout + second.stderr
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and f"another skinseg infer (pid {first.pid})" in lines[0] and "--wait" in lines[0]
        assert "Traceback" not in second.stderr and time.monotonic() - began < 30

        log = tmp_path / "waiter.log"
        with open(log, "wb") as f:
            waiter = start("infer", src, "--model", model, "--output", out, *INFER_ARGS, "--wait", stderr=f)
        assert wait_for(lambda: "waiting for another skinseg run" in log.read_text(errors="replace"), waiter, 60)
        assert waiter.poll() is None
    finally:
        first.send_signal(signal.SIGCONT)
    assert first.wait(120) == 0
    assert waiter.wait(120) == 0, log.read_text()
    assert outputs(out) == outputs(reference)
    assert stray_files(out) == []
    assert_same_results(out, reference)


# ------------------------------------------------------------------------------------------------ folders and space


@pytest.mark.parametrize("output", ["/proc/skinseg-test-out", "/proc/self", "/proc/self/status/sub"])
def test_output_folder_that_cannot_be_written_is_exit_2(dataset, output):
    src, model, _ = dataset
    result = run("infer", src / "img00.png", "--model", model, "--output", output, *INFER_ARGS, timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and output in lines[0] and "Traceback" not in result.stderr, result.stderr
    assert "cannot be created or written" in lines[0] or "not a folder" in lines[0]


class _FullDisk:
    """A file object that writes half of what it is given, then fails with ENOSPC."""

    def __init__(self, real):
        self._real = real

    def write(self, data) -> int:
        self._real.write(bytes(data)[: len(data) // 2])
        self._real.flush()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name):
        return getattr(self._real, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._real.close()


def full_disk_for(monkeypatch, predicate: Callable[[str], bool]) -> None:
    """Make the atomic writer's temporary file for any path matching ``predicate`` hit a full disk."""
    real_fdopen = os.fdopen

    def fdopen(fd, *args, **kwargs):
        f = real_fdopen(fd, *args, **kwargs)
        target = os.readlink(f"/proc/self/fd/{fd}")
        return _FullDisk(f) if predicate(os.path.basename(target)) else f

    monkeypatch.setattr(runtime_imageio.os, "fdopen", fdopen)


def test_full_disk_stops_the_batch_cleanly_and_a_rerun_completes_it(dataset, tmp_path, monkeypatch):
    """The disk fills while the 2nd image is written: that image fails with the reason, the batch stops instead of
    decoding and segmenting every remaining image only to fail writing it (issue 12), nothing half-written stays,
    and once space is freed a rerun does exactly what is missing."""
    src, model, reference = dataset
    out = tmp_path / "out"
    full_disk_for(monkeypatch, lambda name: name.startswith(".img01_mask.png."))  # the 2nd image's last output
    summary = run_batch([src], model, out, InferOptions(threads=1, save_prob=True, contours=True, max_in_flight=1))
    assert summary.failed == 1 and summary.stopped == "disk full" and summary.exit_code == 1
    assert summary.ok + summary.failed + summary.not_done == N_IMAGES and summary.not_done >= N_IMAGES - 3
    rows = report(out)
    with open(out / "results.csv", newline="", encoding="utf-8") as f:
        errors = {r["path"]: r["error"] for r in csv.DictReader(f)}
    assert rows["img01.png"]["status"] == "failed" and "disk is full" in errors["img01.png"]
    assert all(r["status"] == "ok" for p, r in rows.items() if p != "img01.png")
    assert not (out / "img01_mask.png").exists() and stray_files(out) == []

    monkeypatch.undo()  # space is freed: a rerun completes what is missing and redoes nothing else
    again = run_batch([src], model, out, InferOptions(threads=1, save_prob=True, contours=True))
    assert (again.ok, again.skipped, again.failed) == (N_IMAGES - summary.ok, summary.ok, 0)
    assert outputs(out) == outputs(reference)


def test_full_disk_for_the_report_is_a_clear_error_with_masks_kept(dataset, tmp_path, monkeypatch):
    src, model, _ = dataset
    out = tmp_path / "out"
    full_disk_for(monkeypatch, lambda name: name.startswith(".results.csv."))
    with pytest.raises(SkinsegError, match="cannot write results.csv.*masks are written") as info:
        run_batch([src / "img00.png", src / "img01.png"], model, out, InferOptions(threads=1))
    assert "\n" not in str(info.value)
    assert (out / "img00_mask.png").is_file() and (out / "img01_mask.png").is_file()
    assert not (out / "results.csv").exists() and stray_files(out) == []


# ------------------------------------------------------------------------------------------------ TensorFlow: export


def keras_check(code: str, timeout: float = 300) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.fixture(scope="module")
def keras_model(tmp_path_factory) -> Path:
    pytest.importorskip("tensorflow")
    path = tmp_path_factory.mktemp("keras") / "tiny.keras"
    keras_check(
        "from skinseg.training.model import build_unet\n"
        "m = build_unet(image_height=64, image_width=64, base_filters=4, num_layers=2, seed=0)\n"
        f"m.save({str(path)!r})\n"
    )
    return path


def export_temps(folder: Path) -> list[Path]:
    return sorted(folder.glob(".model.onnx.*.tmp"))


def assert_loads_with_metadata(path: Path, tile: int) -> None:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert f'"tile_size": [{tile}, {tile}]' in session.get_modelmeta().custom_metadata_map["skinseg"]


@pytest.mark.slow
@pytest.mark.train
def test_export_killed_mid_write_keeps_the_previous_model(keras_model, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    target = out / "model.onnx"
    save(identity_model(metadata=metadata_json((32, 32))), target)
    previous = target.read_bytes()
    phases = {
        "temp file created": lambda: bool(export_temps(out)),
        "temp file written, parity check running": lambda: any(p.stat().st_size > 0 for p in export_temps(out)),
    }
    for phase, condition in phases.items():
        proc = start("export", keras_model, "--output", target)
        reached = wait_for(condition, proc, timeout=240, poll=0.001)
        running = proc.poll() is None
        kill(proc)
        assert reached and running, f"export ended before '{phase}'"
        assert target.read_bytes() == previous, phase  # no partial .onnx at the output path
        assert_loads_with_metadata(target, 32)
        assert not [p for p in out.iterdir() if p.suffix == ".onnx" and p != target]

    done = run("export", keras_model, "--output", target)
    assert done.returncode == 0, done.stderr
    assert_loads_with_metadata(target, 64)  # the finished export replaced it


@pytest.mark.slow
@pytest.mark.train
def test_export_rerun_cleans_the_temporary_file_of_a_killed_export(keras_model, tmp_path):
    target = tmp_path / "model.onnx"
    proc = start("export", keras_model, "--output", target)
    assert wait_for(lambda: any(p.stat().st_size > 0 for p in export_temps(tmp_path)), proc, timeout=240, poll=0.001)
    kill(proc)
    assert run("export", keras_model, "--output", target).returncode == 0
    assert export_temps(tmp_path) == []


# ------------------------------------------------------------------------------------------------ TensorFlow: training

TRAIN_CONFIG = """\
[model]
image_width = 32
image_height = 32
base_filters = 4
num_layers = 2
learning_rate = 0.01
metrics = ["binary_accuracy"]

[train]
epochs = 200
batch_size = 4
steps_per_epoch = 1
validation_steps = 1
patience = 200
learning_rate_reducer = False
model_dir = "run"
image_datapath = "data/images"
mask_datapath = "data/masks"
valid_ratio = 0.3
seed = 1

[generator]
augmentation = False
"""


@pytest.mark.slow
@pytest.mark.train
def test_training_killed_during_checkpoint_writes_keeps_a_loadable_best_model(tmp_path):
    pytest.importorskip("tensorflow")
    from skinseg.data.synth import write_dataset

    write_dataset(tmp_path / "data", count=10, size=(40, 32), seed=4)
    config = tmp_path / "c.config"
    config.write_text(TRAIN_CONFIG)
    run_dir = tmp_path / "run"
    best = run_dir / "best_model.keras"

    def checkpoint_being_written() -> bool:
        return best.is_file() and (run_dir / "last.keras").is_file() and any(run_dir.glob(".*.tmp.keras"))

    kills = 0
    for attempt in range(3):  # a new run, then two resumed ones, each killed inside a checkpoint write
        args = ("train", "--config", config, "--quiet", *(("--resume",) if attempt else ()))
        proc = start(*args)
        caught = wait_for(checkpoint_being_written, proc, timeout=300, poll=0.0005)
        running = proc.poll() is None
        kill(proc)
        assert running, "training ended before it was killed"
        kills += caught
        assert best.is_file()
        out = keras_check(
            "from skinseg.training.model import load_model\n"
            f"m = load_model({str(best)!r})\n"
            f"n = load_model({str(run_dir / 'last.keras')!r})\n"
            "print('LOADED', m.count_params() == n.count_params())\n"
        )
        assert "LOADED True" in out
    assert kills >= 2, "at least two kills should land inside a checkpoint write"
