"""`skinseg infer --scheduler`: values that cannot work are one line before any work, a second client is refused
before it starts anything, a local cluster leaves nothing outside --output and obeys --memory-limit, and a
scheduler that dies mid-run stops the run cleanly with a report a rerun completes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from skinseg.runtime.batch import run_batch
from skinseg.runtime.errors import UsageError
from skinseg.runtime.job import estimate_memory
from skinseg.runtime.options import InferOptions
from skinseg.runtime.outputs import output_lock
from skinseg.runtime.report import read_results
from tests.support import InFlightEvents, photos, run_cli

OPTS = InferOptions(threads=1)


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def scheduler_file(tmp_path: Path, content: str) -> str:
    path = tmp_path / "scheduler.json"
    path.write_text(content)
    return str(path)


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("", "is empty"),
        ("   ", "is empty"),
        ("garbage:://??", "not a transport"),
        ("inproc://x", "inproc:// is not a transport"),
        ("ucx://127.0.0.1:1", "ucx:// is not a transport"),
        ("tls://127.0.0.1:1", "needs tls_ca_file"),
        ("tcp://no port here", "not a scheduler address"),
        ("tcp://host:99999", "not a scheduler address"),
        ("/dev/null", "not a scheduler file"),
        ("missing/scheduler.json", "no such scheduler file"),
        ("local:0", "local:N takes 1 to"),
        ("local:256", "local:N takes 1 to"),
        ("local:two", "needs a number"),
        ("FILE:not json", "not JSON"),
        ("FILE:{}", "holds no address"),
        ('FILE:{"address": 5}', "holds no address"),
        ('FILE:{"address": "inproc://x"}', "inproc:// is not a transport"),
    ],
)
def test_a_scheduler_value_that_cannot_work_is_refused_at_once(standin_model, tmp_path, value, words):
    if value.startswith("FILE:"):
        value = scheduler_file(tmp_path, value[5:])
    src = photos(tmp_path / "src", 1)
    start = time.monotonic()
    with pytest.raises(UsageError, match=words) as caught:
        run_batch([src], standin_model, tmp_path / "out", OPTS, scheduler=value)
    assert time.monotonic() - start < 5 and "\n" not in str(caught.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("value", ["", "garbage:://??", "tls://127.0.0.1:1", "/dev/null"])
def test_the_command_line_says_it_in_one_line_with_exit_2(standin_model, tmp_path, value):
    src = photos(tmp_path / "src", 1)
    done = run_cli("infer", src, "--model", standin_model, "-o", tmp_path / "out", "--scheduler", value, timeout=60)
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr, done.stderr


def test_a_local_cluster_is_never_started_for_a_locked_output(standin_model, tmp_path, monkeypatch):
    distributed = pytest.importorskip("distributed")

    def no_cluster(*args, **kwargs):
        raise AssertionError("a local cluster was started")

    monkeypatch.setattr(distributed, "LocalCluster", no_cluster)
    src = photos(tmp_path / "src", 1)
    out = tmp_path / "out"
    out.mkdir()
    with output_lock(out), pytest.raises(UsageError, match="another skinseg"):
        run_batch([src], standin_model, out, OPTS, scheduler="local:1")


# ------------------------------------------------------------------------------------ with a cluster (slow)


@pytest.mark.slow
def test_a_local_cluster_writes_nothing_outside_the_output(standin_model, tmp_path):
    pytest.importorskip("distributed")
    src = photos(tmp_path / "src", 6)
    scratch, home = tmp_path / "tmp", tmp_path / "home"
    scratch.mkdir()
    home.mkdir()
    env = {**os.environ, "TMPDIR": str(scratch), "HOME": str(home), "XDG_CACHE_HOME": str(home / ".cache")}
    out = tmp_path / "out"
    done = run_cli("infer", src, "--model", standin_model, "-o", out, "--scheduler", f"local:{min(2, cores())}",
                 "--threads", "1", "--log-format", "json", env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert list(scratch.rglob("*")) == [] and list(home.rglob("*")) == []
    assert not (out / ".skinseg-dask").exists()
    assert len(read_results(out / "results.csv")) == 6


@pytest.mark.slow
def test_images_in_flight_on_a_local_cluster_are_bounded_by_the_memory_limit(standin_model, tmp_path):
    pytest.importorskip("distributed")
    src = photos(tmp_path / "src", 8)
    one = estimate_memory(120, 90, OPTS)  # and a few hundred kB for its working scale
    in_flight = InFlightEvents()

    options = InferOptions(threads=1, memory_limit=int(1.5 * one))
    out = tmp_path / "out"
    summary = run_batch([src], standin_model, out, options, scheduler="local:1", on_event=in_flight.on_event)
    assert summary.ok == 8 and in_flight.peak == 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_worker(address: str) -> None:
    import distributed

    with distributed.Client(address, timeout="60s") as client:
        client.wait_for_workers(1, timeout=120)


def start_scheduler(port: int, tmp_path: Path) -> tuple[subprocess.Popen, subprocess.Popen]:
    dask = [sys.executable, "-m", "distributed.cli.dask_scheduler"]
    env = {**os.environ, "DASK_TEMPORARY_DIRECTORY": str(tmp_path / "dask-tmp")}
    scheduler = subprocess.Popen([*dask, "--port", str(port), "--no-dashboard"], env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    worker = subprocess.Popen(
        [sys.executable, "-m", "distributed.cli.dask_worker", f"tcp://127.0.0.1:{port}", "--nthreads", "1",
         "--no-dashboard", "--nworkers", "1"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    return scheduler, worker


@pytest.mark.slow
def test_a_scheduler_killed_mid_run_stops_the_run_cleanly_and_a_rerun_completes(standin_model, tmp_path):
    pytest.importorskip("distributed")
    src = photos(tmp_path / "src", 150, size=(300, 400))
    out = tmp_path / "out"
    port = free_port()
    scheduler, worker = start_scheduler(port, tmp_path)
    address = f"tcp://127.0.0.1:{port}"
    try:
        wait_for_worker(address)
        args = [src, "--model", standin_model, "-o", out, "--scheduler", address, "--threads", "1", "--quiet"]
        proc = subprocess.Popen([sys.executable, "-m", "skinseg", "infer", *map(str, args)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
        deadline = time.monotonic() + 120
        while len(list(out.glob("*_mask.png"))) < 10 and time.monotonic() < deadline:
            time.sleep(0.05)
        scheduler.send_signal(signal.SIGKILL)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        for p in (worker, scheduler):
            p.kill()
            p.wait()
    assert proc.returncode == 1, stderr
    assert "Traceback" not in stderr and "Ctrl-C" not in stderr, stderr
    assert "the Dask scheduler is gone" in stdout + stderr
    rows = read_results(out / "results.csv")
    assert rows and {r["status"] for r in rows.values()} == {"ok"}  # nothing in flight became a failed row
    assert len(rows) < 150
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stopped"] == "the Dask scheduler is gone" and summary["not_done"] == 150 - len(rows)

    scheduler, worker = start_scheduler(port, tmp_path)  # the rerun completes the rest
    try:
        wait_for_worker(address)
        rerun = run_cli("infer", *args, timeout=300)
    finally:
        for p in (worker, scheduler):
            p.kill()
            p.wait()
    assert rerun.returncode == 0, rerun.stderr
    assert len(read_results(out / "results.csv")) == 150
