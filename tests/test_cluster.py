"""`skinseg infer --scheduler`: the batch on a Dask cluster of 2 local worker processes, same guarantees as locally.

Uses a stand-in ONNX model whose mask is ``red > 127`` and a module-wide local cluster (started once, about a
second); a test that kills workers starts its own.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

distributed = pytest.importorskip("distributed")

from typer.testing import CliRunner  # noqa: E402

from skinseg.cli import app  # noqa: E402
from skinseg.runtime.batch import run_batch  # noqa: E402
from skinseg.runtime.cluster import DaskCluster  # noqa: E402
from skinseg.runtime.errors import UsageError  # noqa: E402
from skinseg.runtime.options import InferOptions  # noqa: E402
from skinseg.runtime.outputs import output_lock  # noqa: E402
from skinseg.runtime.report import read_results  # noqa: E402
from tests.support import InFlightEvents, outputs, photos  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OPTS = InferOptions(threads=1)


@pytest.fixture(scope="module")
def scheduler():
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=50
    ) as cluster:
        yield cluster.scheduler_address


def comparable(rows: dict) -> dict:
    return {k: {f: v for f, v in r.items() if f not in ("seconds", "input")} for k, r in rows.items()}


def test_a_cluster_run_writes_what_a_local_run_writes(model, scheduler, tmp_path):
    src = photos(tmp_path / "src", 6)
    local = run_batch([src], model, tmp_path / "local", OPTS)
    remote = run_batch([src], model, tmp_path / "remote", OPTS, scheduler=scheduler)
    assert (local.ok, remote.ok) == (6, 6) and remote.model_sha256 == local.model_sha256
    assert outputs(tmp_path / "local") == outputs(tmp_path / "remote")  # byte for byte
    assert comparable(read_results(tmp_path / "local" / "results.csv")) == comparable(
        read_results(tmp_path / "remote" / "results.csv")
    )
    again = run_batch([src], model, tmp_path / "remote", OPTS, scheduler=scheduler)
    assert (again.ok, again.skipped) == (0, 6)  # the client's up-to-date check: no task submitted


def test_images_in_flight_are_bounded_on_200_images(model, scheduler, tmp_path):
    """200 inputs never become 200 futures: at most a few images per worker thread are in flight."""
    src = photos(tmp_path / "src", 200, size=(24, 32))
    in_flight = InFlightEvents()

    summary = run_batch([src], model, tmp_path / "out", OPTS, scheduler=scheduler, on_event=in_flight.on_event)
    assert summary.ok == 200
    assert 1 < in_flight.peak <= 4  # 2 tasks per worker thread, 2 threads
    assert len(read_results(tmp_path / "out" / "results.csv")) == 200


def test_a_worker_killed_mid_run_changes_nothing_in_the_result(model, tmp_path):
    src = photos(tmp_path / "src", 24, size=(300, 400))
    out = tmp_path / "out"
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=50
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        pids = list(client.run(os.getpid).values())
        killed = threading.Event()

        def on_event(event: dict) -> None:
            if event["event"] == "image_done" and not killed.is_set():
                os.kill(pids[0], signal.SIGKILL)  # mid-run: the other images of that worker are in flight
                killed.set()

        summary = run_batch([src], model, out, OPTS, scheduler=cluster.scheduler_address, on_event=on_event)
    # an image whose worker died after its outputs were whole is found up to date when its task reruns
    assert killed.is_set() and summary.ok + summary.skipped == 24 and summary.failed == 0
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]
    assert outputs(out) == outputs_of_local(model, src, tmp_path / "local")


def outputs_of_local(model: Path, src: Path, out: Path) -> dict[str, bytes]:
    run_batch([src], model, out, OPTS)
    return outputs(out)


def test_a_killed_client_leaves_a_report_that_a_rerun_completes(model, scheduler, tmp_path):
    src = photos(tmp_path / "src", 40, size=(300, 400))
    out = tmp_path / "out"
    args = [sys.executable, "-m", "skinseg", "infer", str(src), "--model", str(model), "--output", str(out)]
    args += ["--scheduler", scheduler, "--threads", "1", "--quiet"]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while len(list(out.glob("*_mask.png"))) < 8 and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    done_before = len(list(out.glob("*_mask.png")))
    assert 0 < done_before < 40
    rerun = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    rows = read_results(out / "results.csv")
    assert len(rows) == 40 and {r["status"] for r in rows.values()} == {"ok", "skipped"}
    assert "skipped" in rerun.stdout  # what the killed client finished was not redone


def test_a_second_client_on_the_same_output_is_refused_by_the_lock(model, scheduler, tmp_path):
    src = photos(tmp_path / "src", 2)
    out = tmp_path / "out"
    out.mkdir()
    with output_lock(out), pytest.raises(UsageError, match="another skinseg"):
        run_batch([src], model, out, OPTS, scheduler=scheduler)


def test_a_worker_that_cannot_see_the_files_is_one_clear_error(model, scheduler, tmp_path):
    with distributed.Client(scheduler) as client:
        cluster = DaskCluster(client)
        cluster.check_workers(model, tmp_path)  # they see these
        with pytest.raises(UsageError, match=r"worker tcp://\S+ cannot read the model .*same paths"):
            cluster.check_workers(tmp_path / "not-mounted" / "m.onnx", tmp_path)
        with pytest.raises(UsageError, match=r"cannot write into .*same paths"):
            cluster.check_workers(model, tmp_path / "not-mounted")


def test_without_the_extra_scheduler_is_one_line(model, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # as if not installed
    src = photos(tmp_path / "src", 1)
    result = CliRunner().invoke(
        app, ["infer", str(src), "--model", str(model), "--output", str(tmp_path / "o"), "--scheduler", "local:2"]
    )
    assert result.exit_code == 2, result.output
    assert "pip install 'skinseg-edge[cluster]'" in result.output and len(result.output.strip().splitlines()) == 1
