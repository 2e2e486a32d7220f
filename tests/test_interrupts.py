"""Ctrl-C, SIGTERM and closed pipes end `skinseg infer` cleanly at any moment: exit 130 with the report written
(never an abort from onnxruntime or a traceback from Dask's exit handlers), within seconds even with a worker stuck
for good, and a run that has finished keeps its exit code; `skinseg infer | head -1` still does every image.

A run killed outright (SIGKILL) and resumed: ``tests/test_crash_safety.py``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from skinseg.runtime.outputs import output_lock
from tests.support import lesion_image, photos, wait_for, write_png

ROOT = Path(__file__).resolve().parents[1]


def start(*args: object) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "skinseg", "infer", *map(str, args)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


@pytest.mark.slow
def test_an_interrupt_during_an_image_longer_than_the_grace_exits_130(tmp_path):
    """The bundled model at --scale native on a 12 MP photo: minutes of inference, past the 8-second grace. Python's
    exit stopped the worker inside onnxruntime: "terminate called without an active exception", exit 134."""
    from skinseg.data.synth import synthesize

    image, _ = synthesize(4000, 3000, np.random.default_rng(0))
    write_png(tmp_path / "src" / "big.png", image)
    out = tmp_path / "out"
    proc = start(tmp_path / "src", "-o", out, "--scale", "native", "--threads", "1")
    for line in proc.stdout:  # type: ignore[union-attr]
        if "segmenting 1 image" in line:  # the model is loaded and the image starts: minutes in the model from now
            break
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGTERM)  # the grace (8 s) ends with the worker inside onnxruntime
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "terminate called" not in stderr and "Traceback" not in stderr, stderr
    assert "interrupted after 0 of 1 image" in stdout + stderr
    assert (out / "results.csv").is_file() and (out / "summary.json").is_file()


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


@pytest.mark.slow
def test_sigterm_while_a_local_cluster_starts_is_exit_130_without_a_traceback(standin_model, tmp_path):
    pytest.importorskip("distributed")
    src = photos(tmp_path / "src", 2)
    out = tmp_path / "out"
    proc = start(src, "--model", standin_model, "-o", out, "--scheduler", "local:1", "--threads", "1")
    assert wait_for(lambda: children(proc.pid), poll=0.02)  # its first worker process is starting: so is the cluster
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "AssertionError" not in stderr, stderr
    assert not (out / ".skinseg-dask").exists()


@pytest.mark.slow
def test_sigterm_while_a_finished_cluster_run_closes_keeps_its_exit_code(standin_model, tmp_path):
    pytest.importorskip("distributed")
    src = photos(tmp_path / "src", 3)
    out = tmp_path / "out"
    proc = start(src, "--model", standin_model, "-o", out, "--scheduler", "local:1", "--threads", "1")
    for line in proc.stdout:  # type: ignore[union-attr]
        if "3 images: 3 ok" in line:  # the summary line: the run is over, the cluster is being closed
            break
    proc.send_signal(signal.SIGTERM)
    began = time.monotonic()
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0 and time.monotonic() - began < 5, (proc.returncode, stderr)
    assert "Traceback" not in stderr
    assert not (out / ".skinseg-dask").exists()
    assert os.path.isfile(out / "results.csv")


# ---------------------------------------------------------------------------------------- a worker that never returns


def test_sigterm_ends_a_run_within_seconds_even_with_a_stuck_worker(model, tmp_path):
    """A worker blocked for good (a dead network mount) cannot keep the process, or its lock, alive."""
    src = tmp_path / "src"
    for i in range(4):
        write_png(src / f"i{i}.png", lesion_image(seed=i))
    out = tmp_path / "out"
    stuck = tmp_path / "stuck"  # made by the worker as it blocks
    code = (
        "import time, sys\n"
        "import skinseg.runtime.job as b\n"
        "real = b.process_image\n"
        "def stuck(*a, **k):\n"
        "    if str(a[1]).endswith('i1.png'):\n"
        f"        open({str(stuck)!r}, 'w').close()\n"
        "        time.sleep(3600)\n"
        "    return real(*a, **k)\n"
        "b.process_image = stuck\n"
        "from skinseg.cli import main\n"
        f"sys.argv = ['skinseg', 'infer', {str(src)!r}, '--model', {str(model)!r}, '--output', {str(out)!r},"
        " '--quiet', '--threads', '1', '--max-in-flight', '2']\n"
        "main()\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not ((out / "i0_mask.png").exists() and stuck.exists()) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None and stuck.exists(), "the run should be under way with a worker stuck"
    proc.send_signal(signal.SIGTERM)
    start = time.monotonic()
    stdout, stderr = proc.communicate(timeout=60)
    assert time.monotonic() - start < 20, "the run did not end after SIGTERM"
    assert proc.returncode == 130, stderr
    text = stdout.decode() + stderr.decode()
    assert "interrupted after" in text and "stopping" in text
    assert (out / "results.csv").is_file()
    with output_lock(out):  # released: the next cron run gets it
        pass


# -------------------------------------------------------------------------------------------------------------- pipes


def test_a_closed_stdout_does_not_stop_the_work(model, tmp_path):
    """`skinseg infer ... | head -1`: head exits after one line; every image is still done, exit 0."""
    src = tmp_path / "src"
    for i in range(6):
        write_png(src / f"i{i}.png", lesion_image(seed=i))
    out = tmp_path / "out"
    command = f"{sys.executable} -m skinseg infer {src} --model {model} --output {out} --threads 1 | head -1"
    done = subprocess.run(
        ["bash", "-o", "pipefail", "-c", command], capture_output=True, text=True, timeout=180, cwd=ROOT
    )
    assert len(done.stdout.splitlines()) == 1
    assert len(list(out.glob("*_mask.png"))) == 6
    assert json.loads((out / "summary.json").read_text())["ok"] == 6
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(
    "redirect", [">&-", "> /dev/full", "> /dev/full 2>&1"], ids=["closed", "full", "full-with-stderr"]
)
def test_a_stdout_that_cannot_be_written_does_not_stop_the_work(model, tmp_path, redirect):
    """Cron with ``>&-``, or its log on a full disk (/dev/full: ENOSPC on every write): every image is done, exit 0.
    A closed descriptor 1 was a traceback at import (Python's sys.stdout is None); a full one stopped the run."""
    src = tmp_path / "src"
    for i in range(2):
        write_png(src / f"i{i}.png", lesion_image(seed=i))
    out = tmp_path / "out"
    command = f"{sys.executable} -m skinseg infer {src} --model {model} --output {out} --threads 1 {redirect}"
    done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=180, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert len(list(out.glob("*_mask.png"))) == 2
    assert json.loads((out / "summary.json").read_text())["ok"] == 2
    if redirect == "> /dev/full":
        assert "standard output: No space left on device" in done.stderr


def test_a_log_file_that_cannot_be_written_is_said_once_and_the_work_goes_on(model, tmp_path):
    """--log-file on a full disk (/dev/full) stayed empty without a word."""
    src = tmp_path / "src"
    write_png(src / "a.png", lesion_image())
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "skinseg", "infer", src, "--model", model, "-o", out, "--log-file", "/dev/full"],
        capture_output=True, text=True, timeout=180, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("--log-file /dev/full: No space left on device") == 1, done.stderr
    assert json.loads((out / "summary.json").read_text())["ok"] == 1
