"""Ctrl-C and SIGTERM end `skinseg infer` cleanly at any moment: exit 130 with the report written (never an abort
from onnxruntime or a traceback from Dask's exit handlers), and a run that has finished keeps its exit code."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.support import lesion_image, write_png

ROOT = Path(__file__).resolve().parents[1]


def start(*args: object) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "skinseg", "infer", *map(str, args)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


def wait_for(condition, timeout: float = 120) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


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


def photos(folder: Path, count: int) -> Path:
    for i in range(count):
        write_png(folder / f"p{i}.png", lesion_image(seed=i))
    return folder


@pytest.mark.slow
def test_sigterm_while_a_local_cluster_starts_is_exit_130_without_a_traceback(standin_model, tmp_path):
    pytest.importorskip("distributed")
    src = photos(tmp_path / "src", 2)
    out = tmp_path / "out"
    proc = start(src, "--model", standin_model, "-o", out, "--scheduler", "local:1", "--threads", "1")
    assert wait_for(lambda: children(proc.pid))  # its first worker process is starting: so is the cluster
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
