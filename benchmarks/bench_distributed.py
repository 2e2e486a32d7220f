"""What training on several workers costs on one host: 2 workers × 1 core against 1 process × 2 cores.

Each mode is a fresh ``skinseg train`` from the command line on the reference recipe (``--size``, global batch
``--batch``, encoder not frozen, validation only after the last epoch), on ``--pairs`` photographs of
``isic2017-train``; modes alternate for ``--rounds`` rounds, so a machine's changing load hits all of them:

- ``one × 2 cores``: ``--strategy single``, one process on both cores, the whole global batch;
- ``two × 1 core``: ``--local-workers 2``, each worker pinned to its core, half the batch each, the gradients
  all-reduced every step (MultiWorkerMirroredStrategy over gRPC on localhost);
- ``one × 1 core, half batch``: one process pinned to one core with half the batch: one worker's compute with
  no communication, so ``two × 1 core`` minus this is the price of the all-reduce and the synchronisation.

The figures are the mean step time of epochs 2 to E-1 (epoch 1 traces the graph and fills the caches; the last
validates) and the CPU time all the run's processes used in those epochs, per step: on a machine shared with other
work the wall time measures the sharing as much as the training, the CPU time much less. Then the all-reduce
alone: two workers (one core each) all-reduce the model's trainable parameters (float32) ``--repeats`` times; its
time, with the step times, is what docs/distributed_training.md scales to more hosts. The load of the machine
(what else ran) is recorded with every row.

    python benchmarks/bench_distributed.py                       # ~25 min on the 2-core development box
    python benchmarks/bench_distributed.py --rounds 1 --steps 6  # quick
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "configs" / "isic_reference.config"
DATA = ROOT.parent / "shared" / "data" / "isic2017-train"
EPOCH_LINE = re.compile(r"^epoch (\d+)/(\d+) .* ([\d.]+)s( \*)?$")


def _subset(root: Path, pairs: int, valid: int) -> tuple[Path, Path]:
    """Symlinked train and validation folders of the first ``pairs`` and the last ``valid`` photographs."""
    images = sorted((DATA / "images").iterdir())
    masks = {p.stem.removesuffix("_segmentation"): p for p in (DATA / "masks").iterdir()}
    out = []
    for name, chosen in (("train", images[:pairs]), ("valid", images[-valid:])):
        (root / name / "images").mkdir(parents=True)
        (root / name / "masks").mkdir(parents=True)
        for image in chosen:
            (root / name / "images" / image.name).symlink_to(image)
            mask = masks[image.stem]
            (root / name / "masks" / mask.name).symlink_to(mask)
        out.append(root / name)
    return out[0], out[1]


def _config(root: Path, size: int, batch: int, epochs: int, train: Path, valid: Path) -> Path:
    from skinseg.data.config import apply_overrides, load_config, render_config

    cfg = apply_overrides(
        load_config(RECIPE),
        {
            "model.image_height": size,
            "model.image_width": size,
            "train.batch_size": batch,
            "train.epochs": epochs,
            "train.freeze_encoder_epochs": 0,
            "train.validation_freq": epochs,
            "train.image_datapath": [train / "images"],
            "train.mask_datapath": [train / "masks"],
            "eval.image_datapath": [valid / "images"],
            "eval.mask_datapath": [valid / "masks"],
        },
    )
    path = root / "bench.config"
    path.write_text(render_config(cfg, comments=False))
    return path


def _load() -> str:
    """The load average, the runnable tasks and the busiest other processes (lifetime CPU share), in one line."""
    avg = Path("/proc/loadavg").read_text().split()[:3]
    ps = subprocess.run(["ps", "-eo", "pcpu,args", "--sort=-pcpu"], capture_output=True, text=True).stdout
    busy = []
    for line in ps.splitlines()[1:]:
        cpu, _, args = line.strip().partition(" ")
        mine = ("bench_distributed", "skinseg train", "-m skinseg", "ps -eo")
        if float(cpu) < 20 or any(m in args for m in mine):
            continue
        busy.append(f"{args.split()[0].rsplit('/', 1)[-1]} {' '.join(args.split()[1:3])[:60]} {cpu}%")
    tasks = Path("/proc/loadavg").read_text().split()[3]
    return f"load {' '.join(avg)}, {tasks} tasks" + (f"; beside: {'; '.join(busy[:3])}" if busy else "")


def _tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) used so far by ``pid`` and its descendants (the launcher's workers)."""
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            todo += [int(c) for c in Path(f"/proc/{p}/task/{p}/children").read_text().split()]
        except (OSError, IndexError, ValueError):
            continue
    return total


def _run_mode(mode: str, config: Path, batch: int, steps: int, out: Path) -> dict:
    env = {**os.environ}
    env.pop("TF_CONFIG", None)
    args = [sys.executable, "-m", "skinseg", "train", "-c", str(config), "--steps-per-epoch", str(steps), "--quiet"]
    if mode == "one × 2 cores":
        args += ["--strategy", "single"]
    elif mode == "two × 1 core":
        args += ["--local-workers", "2"]
    else:  # one × 1 core, half batch
        args += ["--strategy", "single", "--batch-size", str(batch // 2)]
        env["SKINSEG_WORKER_CPUS"] = "0"
    args += ["-o", str(out), "--force"]
    before = _load()
    t0 = time.perf_counter()
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    epochs: dict[int, tuple[float, float]] = {}  # epoch -> (its seconds as the trainer measured, CPU at its end)
    cpu_at: dict[int, float] = {}
    tail = []
    for line in proc.stderr:
        tail = [*tail[-30:], line]
        m = EPOCH_LINE.match(line.strip())
        if m:
            cpu_at[int(m.group(1))] = _tree_cpu_s(proc.pid)
            epochs[int(m.group(1))] = float(m.group(3))
    proc.wait()
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"{mode}: exit {proc.returncode}\n{''.join(tail)}")
    last = max(epochs)
    timed = list(range(2, last))
    step_s = sum(epochs[e] for e in timed) / len(timed) / steps
    cpu_step_s = (cpu_at[last - 1] - cpu_at[1]) / len(timed) / steps
    return {
        "mode": mode,
        "step_s": step_s,
        "img_s": batch / step_s,
        "cpu_step_s": cpu_step_s,
        "wall_s": wall,
        "load": before,
    }


ALLREDUCE_WORKER = """
import json, os, sys, time
from skinseg.training.distribute import pin_to_cpus_from_env
pin_to_cpus_from_env()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import tensorflow as tf
params, repeats = int(sys.argv[1]), int(sys.argv[2])
strategy = tf.distribute.MultiWorkerMirroredStrategy()
x = tf.random.normal([params])

@tf.function
def allreduce():
    return strategy.run(lambda: tf.distribute.get_replica_context().all_reduce("MEAN", x))

for _ in range(3):
    allreduce()
times = []
for _ in range(repeats):
    t0 = time.perf_counter()
    r = allreduce()
    float(strategy.experimental_local_results(r)[0][0])
    times.append(time.perf_counter() - t0)
if strategy.cluster_resolver.task_id == 0:
    times.sort()
    print(json.dumps({"median_ms": 1000 * times[len(times) // 2], "best_ms": 1000 * times[0]}))
"""


def _allreduce(params: int, repeats: int) -> dict:
    from skinseg.training.distribute import launch_local_workers

    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "allreduce.py"
        script.write_text(ALLREDUCE_WORKER)
        out = Path(tmp) / "out.txt"
        # worker 0 writes to our stdout: capture it through a file descriptor swap
        with out.open("w") as f:
            saved = os.dup(1)
            os.dup2(f.fileno(), 1)
            try:
                code = launch_local_workers([sys.executable, str(script), str(params), str(repeats)], 2)
            finally:
                os.dup2(saved, 1)
                os.close(saved)
        if code:
            raise SystemExit(f"all-reduce workers failed (exit {code})")
        result = json.loads([line for line in out.read_text().splitlines() if line.startswith("{")][-1])
    return {**result, "params": params, "mb": params * 4 / 1e6}


def _params(config: Path) -> int:
    from skinseg.data.config import load_config
    from skinseg.training.trainer import build_model

    model = build_model(load_config(config))
    return int(sum(int(v.numpy().size) for v in model.trainable_variables))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=10, help="steps per epoch")
    ap.add_argument("--epochs", type=int, default=4, help="epochs 2 to E-1 are timed")
    ap.add_argument("--pairs", type=int, default=160)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=30, help="all-reduces timed")
    ap.add_argument("--modes", default="one × 2 cores,two × 1 core,one × 1 core, half batch")
    ap.add_argument("--json", type=Path, help="write the results here too")
    args = ap.parse_args()
    modes = [m.strip() for m in re.split(r",(?! half)", args.modes)]
    with tempfile.TemporaryDirectory(prefix="bench-dist-") as tmp:
        root = Path(tmp)
        train, valid = _subset(root, args.pairs, 16)
        config = _config(root, args.size, args.batch, args.epochs, train, valid)
        rows = []
        for r in range(args.rounds):
            for mode in modes:
                row = _run_mode(mode, config, args.batch, args.steps, root / "run")
                row["round"] = r + 1
                rows.append(row)
                print(json.dumps(row, ensure_ascii=False), flush=True)
        params = _params(config)
    allreduce = _allreduce(params, args.repeats)
    print(json.dumps({"allreduce": allreduce}), flush=True)
    print(f"\nreference recipe {args.size}², global batch {args.batch}, {args.steps} steps/epoch, {params:,} params")
    print("| round | mode | s/step | img/s | vs one × 2 cores | CPU s/step | vs one × 2 cores | load at its start |")
    print("|---|---|---|---|---|---|---|---|")
    for r in range(1, args.rounds + 1):
        base = next(x for x in rows if x["round"] == r and x["mode"] == "one × 2 cores")
        for x in (x for x in rows if x["round"] == r):
            print(
                f"| {r} | {x['mode']} | {x['step_s']:.2f} | {x['img_s']:.2f} | {x['step_s'] / base['step_s']:.2f}× | "
                f"{x['cpu_step_s']:.2f} | {x['cpu_step_s'] / base['cpu_step_s']:.2f}× | {x['load']} |"
            )
    print(
        f"\nall-reduce of {allreduce['params']:,} float32 ({allreduce['mb']:.1f} MB), 2 workers on localhost: "
        f"median {allreduce['median_ms']:.1f} ms, best {allreduce['best_ms']:.1f} ms"
    )
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "allreduce": allreduce, "args": vars(args)}, default=str))


if __name__ == "__main__":
    main()
