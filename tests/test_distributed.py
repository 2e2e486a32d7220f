"""Training on several workers (tf.distribute): TF_CONFIG, the sharded input, the launcher, and (slow) real runs.

The slow tests start real worker processes on localhost; each takes minutes on a 2-core box.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from skinseg.cli import app
from skinseg.runtime.errors import UsageError
from skinseg.training import distribute
from skinseg.training.distribute import parse_tf_config, plan_strategy

runner = CliRunner()
WORKERS2 = {"cluster": {"worker": ["localhost:2222", "localhost:2223"]}, "task": {"type": "worker", "index": 1}}


# ---------------------------------------------------------------------------------------------- TF_CONFIG


def test_a_good_tf_config_gives_the_workers_chief_first():
    cluster = parse_tf_config(json.dumps(WORKERS2))
    assert cluster.workers == ("localhost:2222", "localhost:2223") and cluster.rank == 1 and not cluster.is_chief
    with_chief = {"cluster": {"chief": ["a:1"], "worker": ["b:2", "c:3"]}, "task": {"type": "worker", "index": 0}}
    cluster = parse_tf_config(json.dumps(with_chief))
    assert cluster.workers == ("a:1", "b:2", "c:3") and cluster.rank == 1 and cluster.count == 3


@pytest.mark.parametrize(
    ("tf_config", "says"),
    [
        ('{"cluster": {"worker": ["a:1"]', "not valid JSON"),
        ("[1, 2]", "not a JSON object"),
        ('{"task": {"type": "worker", "index": 0}}', 'no "cluster"'),
        ('{"cluster": {"worker": ["a:1"], "ps": ["b:2"]}, "task": {"type": "worker", "index": 0}}', '"ps"'),
        ('{"cluster": {"worker": "a:1"}, "task": {"type": "worker", "index": 0}}', "cluster.worker is not"),
        ('{"cluster": {"worker": ["a"]}, "task": {"type": "worker", "index": 0}}', 'cluster.worker[0] is "a"'),
        ('{"cluster": {"worker": ["a:99999"]}, "task": {"type": "worker", "index": 0}}', "port from 1 to 65535"),
        ('{"cluster": {"worker": ["a:1", "a:1"]}, "task": {"type": "worker", "index": 0}}', "listed twice"),
        ('{"cluster": {"worker": ["a:1"]}}', 'no "task"'),
        ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "chief", "index": 0}}', "task.type"),
        ('{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 2}}', "0 to 1"),
        ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": "0"}}', "task.index"),
    ],
)
def test_a_bad_tf_config_is_one_line_naming_what_is_wrong(tf_config, says):
    with pytest.raises(UsageError) as e:
        parse_tf_config(tf_config)
    message = str(e.value)
    assert message.startswith("TF_CONFIG: ") and says in message and "\n" not in message
    assert '"task": {"type": "worker", "index": 0}' in message  # the fix: what it should look like


def test_the_cli_reports_a_bad_tf_config_in_one_line_with_exit_2(tmp_path):
    result = runner.invoke(
        app,
        ["train", "-c", str(tmp_path / "any.config"), "--strategy", "multiworker"],
        env={"TF_CONFIG": '{"cluster": {"worker": ["localhost"]}, "task": {"type": "worker", "index": 0}}'},
    )
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "TF_CONFIG" in lines[0] and "host:port" in lines[0], result.output


def test_the_strategy_follows_tf_config_and_the_gpus():
    env = {"TF_CONFIG": json.dumps(WORKERS2)}
    assert plan_strategy("auto", env).kind == "multiworker" and plan_strategy("auto", env).rank == 1
    assert plan_strategy("auto", {}, gpus=lambda: 0).kind == "single"
    assert plan_strategy("auto", {}, gpus=lambda: 2).kind == "mirrored"
    assert plan_strategy("single", env).note  # TF_CONFIG set but ignored: said
    with pytest.raises(UsageError, match="local_workers=N"):
        plan_strategy("multiworker", {})
    with pytest.raises(UsageError, match="choose from"):
        plan_strategy("ring", {})


def test_cores_are_split_evenly_between_local_workers():
    assert distribute.split_cpus([0, 1], 2) == [[0], [1]]
    assert distribute.split_cpus([0, 1, 2, 3, 4], 2) == [[0, 1], [2, 3]]
    assert distribute.split_cpus([0], 2) is None
    configs = [json.loads(c) for c in distribute.local_tf_configs([5000, 5001])]
    assert [parse_tf_config(json.dumps(c)).rank for c in configs] == [0, 1]


# ---------------------------------------------------------------------------------------------- the launcher


CHILD = """
import json, os, sys, time
from pathlib import Path
rank = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
Path(sys.argv[1], f"w{rank}.json").write_text(json.dumps([os.environ["TF_CONFIG"], os.environ.get("CPUS_ENV", "")]))
if rank == 1:
    print("worker 1 says why it stops")
    sys.exit(3)
time.sleep(600)
""".replace("CPUS_ENV", distribute.CPUS_ENV)


def test_the_launcher_gives_each_worker_its_tf_config_and_stops_the_rest_when_one_fails(tmp_path):
    events = []
    t0 = time.monotonic()
    code = distribute.launch_local_workers(
        [sys.executable, "-c", CHILD, str(tmp_path)], 2, grace_s=1.0, on_event=events.append
    )
    assert code == 3 and time.monotonic() - t0 < 60  # worker 0 would have slept 600 s
    seen = [json.loads((tmp_path / f"w{i}.json").read_text()) for i in range(2)]
    assert [json.loads(tf_config)["task"]["index"] for tf_config, _ in seen] == [0, 1]
    assert json.loads(seen[0][0])["cluster"] == json.loads(seen[1][0])["cluster"]
    if len(os.sched_getaffinity(0)) >= 2:
        assert seen[0][1] and seen[1][1] and set(seen[0][1].split(",")).isdisjoint(seen[1][1].split(","))
    failed = [e for e in events if e["event"] == "worker_failed"]
    assert failed[0]["worker"] == 1 and failed[0]["how"] == "exit code 3"
    assert failed[0]["last_line"] == "worker 1 says why it stops"
    assert any(e["event"] == "terminating" for e in events)


# ---------------------------------------------------------------------------------------------- the input


@pytest.mark.train
@pytest.mark.parametrize(("workers", "local"), [(2, 1), (2, 2), (4, 1)])
def test_the_workers_shards_make_up_the_single_process_batches(tmp_path, workers, local):
    """Each global step trains on the same photographs, augmented alike, whatever the number of workers; a resumed
    stream continues where it stopped."""
    pytest.importorskip("tensorflow")
    from skinseg.data.pairing import pair_many
    from skinseg.data.synth import write_dataset
    from skinseg.training.augment import Augmenter, AugmentParams
    from skinseg.training.data import ExampleSource, SampleSpec, make_dataset

    write_dataset(tmp_path / "d", count=10, size=(40, 32), seed=1)
    pairs, _ = pair_many([(tmp_path / "d" / "images", tmp_path / "d" / "masks")])
    source = ExampleSource(pairs, SampleSpec(tile=(16, 16)))
    augmenter = Augmenter(AugmentParams(hflip=0.5, rotation=0.5, angles=(90, 180, 270), noise=0.5))
    global_batch, steps = 8, 4  # 10 photographs: the steps cross an epoch's end
    kw = dict(seed=7, train=True, augmenter=augmenter)
    single = [b for _, b in zip(range(steps), make_dataset(source, batch_size=global_batch, **kw), strict=False)]
    per_replica = global_batch // (workers * local)
    shards = [
        list(
            zip(
                range(steps * local),
                make_dataset(source, batch_size=per_replica, shard=(w, workers), local_batches=local, **kw),
                strict=False,
            )
        )
        for w in range(workers)
    ]
    for step in range(steps):
        parts = [shards[w][step * local + j][1] for w in range(workers) for j in range(local)]
        for k in (0, 1):  # images, masks
            joined = np.concatenate([p[k].numpy() for p in parts])
            assert np.array_equal(joined, single[step][k].numpy()), (step, k)
    resumed = next(iter(make_dataset(source, batch_size=global_batch, start=2 * global_batch, **kw)))
    assert np.array_equal(resumed[0].numpy(), single[2][0].numpy())


@pytest.mark.train
def test_a_worker_other_than_the_chief_writes_nothing_in_the_run_directory(tmp_path):
    pytest.importorskip("tensorflow")
    import keras

    from skinseg.data.config import parse_config
    from skinseg.training.trainer import _run_tracker

    cfg = parse_config("[train]\nepochs = 2\n", source="t")
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    run = tmp_path / "run"
    run.mkdir()
    votes = []
    tracker = _run_tracker(
        run, cfg, lambda e: None, steps=1, state={}, writer=False, agree=lambda f: votes.append(f) or True
    )
    tracker.set_model(model)
    tracker.on_epoch_begin(0)
    tracker.on_train_batch_end(0, {"loss": 1.0})
    tracker.on_epoch_end(0, {"loss": 1.0, "val_loss": 0.5})
    assert list(run.iterdir()) == []  # no checkpoint, history, curves or state
    assert tracker.best == 0.5 and tracker.history[0]["val_loss"] == 0.5  # but it keeps the same account
    assert votes == [False, False] and model.stop_training and tracker.stopped_by == "stop_file"  # another's STOP


# ---------------------------------------------------------------------------------------------- real workers

EXACT = """\
[model]
image_width = 32
image_height = 32
base_filters = 4
num_layers = 2
dropout_rate = 0.0
learning_rate = 0.01
loss = "bce"
metrics = ["dice_coef"]
normalization = False

[train]
epochs = {epochs}
batch_size = 4
patience = 10
image_datapath = "data/images"
mask_datapath = "data/masks"
valid_ratio = 0.25
seed = 3
mixed_precision = False

[augmentor]
hflip = True
rotation = True
angles = [90, 180, 270]
shrinks = []
shears = []
"""
# With a per-pixel loss and no batch normalization the gradient of a global batch split across replicas is the
# mean of theirs, and each global step sees the same augmented examples: the runs differ only by the order of float
# sums (measured: 1e-7 relative after 2 epochs). With batch normalization each replica normalizes by its own part
# of the batch, and a batch-level Dice is computed per replica: those differ more (docs/distributed_training.md).
LOSS_RTOL = 1e-4


def _history(run: Path) -> list[dict[str, float]]:
    with (run / "history.csv").open() as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _skinseg(*args: str, cwd: Path, env: dict | None = None, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "skinseg", *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


@pytest.fixture(scope="module")
def exact_dir(tmp_path_factory) -> Path:
    from skinseg.data.synth import write_dataset

    root = tmp_path_factory.mktemp("dist")
    write_dataset(root / "data", count=24, size=(48, 40), seed=5)  # 20 training, 4 validation pairs: 2 per replica
    for epochs in (2, 40):
        (root / f"e{epochs}.config").write_text(EXACT.format(epochs=epochs))
    return root


@pytest.mark.slow
@pytest.mark.train
def test_two_local_workers_train_like_one_process_into_one_run_that_loads_and_exports(exact_dir):
    pytest.importorskip("tensorflow")
    common = ["train", "-c", "e2.config", "--steps-per-epoch", "3", "--quiet"]
    one = _skinseg(*common, "-o", "single", "--strategy", "single", cwd=exact_dir)
    out1, err1 = one.communicate(timeout=900)
    assert one.returncode == 0, err1
    two = _skinseg(*common, "-o", "two", "--local-workers", "2", cwd=exact_dir)
    out2, err2 = two.communicate(timeout=1500)
    assert two.returncode == 0, err2
    assert "multiworker: 2 workers" in err2 and "finished after 2 epoch(s)" in out2

    single, multi = _history(exact_dir / "single"), _history(exact_dir / "two")
    for a, b in zip(single, multi, strict=True):
        for key in ("loss", "val_loss"):
            assert b[key] == pytest.approx(a[key], rel=LOSS_RTOL), (key, a, b)
        # Dice is computed over each replica's half batch, not the whole: close, not equal.
        assert b["dice_coef"] == pytest.approx(a["dice_coef"], rel=0.1)
    assert single[1]["loss"] < single[0]["loss"]  # it trained

    names = {p.name for p in (exact_dir / "two").iterdir()}
    assert {"best_model.keras", "last.keras", "history.csv", "state.json", "split.json", "curves.png"} <= names
    assert not [n for n in names if n.startswith(".") or n.endswith(".tmp")]  # no half-written files left
    from skinseg.training.model import load_model

    model = load_model(exact_dir / "two" / "best_model.keras")
    assert model.output_shape[1:3] == (32, 32)
    export = subprocess.run(
        [sys.executable, "-m", "skinseg", "export", str(exact_dir / "two")],
        cwd=exact_dir,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert export.returncode == 0, export.stderr
    assert (exact_dir / "two" / "model.onnx").is_file()


def _workers(pid: int) -> dict[int, int]:
    """The worker processes a launcher started: {worker index: pid}."""
    path = Path(f"/proc/{pid}/task/{pid}/children")
    found = {}
    for child in path.read_text().split() if path.is_file() else []:
        env = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
        tf_config = next(v for v in env if v.startswith(b"TF_CONFIG="))[len("TF_CONFIG=") :]
        found[json.loads(tf_config)["task"]["index"]] = int(child)
    return found


@pytest.mark.slow
@pytest.mark.train
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds the workers through /proc")
def test_a_killed_worker_ends_the_run_within_bounded_time_and_it_resumes_with_another_worker_count(exact_dir):
    pytest.importorskip("tensorflow")
    run = exact_dir / "killed"
    launcher = _skinseg(
        "train", "-c", "e40.config", "-o", "killed", "--steps-per-epoch", "3", "--local-workers", "2", "--quiet",
        cwd=exact_dir,
    )  # fmt: skip
    deadline = time.monotonic() + 1200
    while not (run / "state.json").is_file():  # the chief has saved epoch 1
        assert launcher.poll() is None and time.monotonic() < deadline, launcher.communicate()
        time.sleep(1)
    workers = _workers(launcher.pid)
    assert sorted(workers) == [0, 1]
    os.kill(workers[1], signal.SIGKILL)
    killed = time.monotonic()
    out, err = launcher.communicate(timeout=300)
    took = time.monotonic() - killed
    assert took < 120, f"the run took {took:.0f} s to end after a worker was killed"
    assert launcher.returncode == 1, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 2 and "error: worker 1 ended (killed by SIGKILL)" in errors, err
    lost = next(line for line in errors if "lost contact" in line)  # the chief's own line
    assert lost.startswith("error: worker 0 of 2: lost contact with another worker") and "--resume" in lost, err
    saved = json.loads((run / "state.json").read_text())["epoch"]
    assert saved >= 1

    # The same run continues in one process (another worker count) from the chief's last checkpoint.
    resumed = _skinseg(
        "train", "-c", "e2.config", "-o", "killed", "--steps-per-epoch", "3", "--epochs", str(saved + 1),
        "--resume", "--strategy", "single", "--quiet", cwd=exact_dir,
    )  # fmt: skip
    out, err = resumed.communicate(timeout=900)
    assert resumed.returncode == 0, err
    assert [int(r["epoch"]) for r in _history(run)][-2:] == [saved, saved + 1]


def test_a_lost_worker_is_named_in_the_reason():
    class Unavailable(Exception):
        pass

    heartbeat = Unavailable(
        "Graph execution error:\n\nDetected at node ...\nError reported from /job:worker/task:1: The following tasks "
        "are unhealthy (stopped sending heartbeats):\n/job:worker/replica:0/task:1\nThe tasks have crashed."
    )
    assert distribute.peer_failure_reason(heartbeat) == "worker 1 stopped sending heartbeats"
    closed = Unavailable("Graph execution error:\n\nCollective ops is aborted by: Socket closed\nAdditional GRPC")
    assert distribute.peer_failure_reason(closed) == "Socket closed"


MIRRORED = """
import json, sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from pathlib import Path
from skinseg.data.config import load_config
from skinseg.training import distribute
from skinseg.training.trainer import train
start = distribute.start_strategy  # two CPU devices stand in for two GPUs
distribute.start_strategy = lambda plan, mirrored_devices=None: start(plan, mirrored_devices=["/cpu:0", "/cpu:1"])
cfg = load_config(Path(sys.argv[1]))
cfg.train.steps_per_epoch = 3
result = train(cfg, run_dir=Path(sys.argv[2]), strategy=sys.argv[3])
print(json.dumps({"replicas": result.replicas, "history": result.history}))
"""


@pytest.mark.slow
@pytest.mark.train
def test_mirrored_replicas_on_one_host_train_like_one_process(exact_dir):
    """--strategy mirrored (several GPUs of a host; two CPU devices here): the local replicas' batches interleave
    and the run matches one process."""
    pytest.importorskip("tensorflow")
    runs = {}
    for strategy in ("mirrored", "single"):
        done = subprocess.run(
            [sys.executable, "-c", MIRRORED, "e2.config", f"m_{strategy}", strategy],
            cwd=exact_dir,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        runs[strategy] = json.loads(done.stdout.strip().splitlines()[-1])
    assert runs["mirrored"]["replicas"] == 2 and runs["single"]["replicas"] == 1
    for a, b in zip(runs["single"]["history"], runs["mirrored"]["history"], strict=True):
        for key in ("loss", "val_loss"):
            assert b[key] == pytest.approx(a[key], rel=LOSS_RTOL), (key, a, b)
