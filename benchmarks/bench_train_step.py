"""Where a training step's time goes, for the reference recipe and each lever, at several sizes.

For every (variant, size) it measures, in a fresh process (TensorFlow's threading, oneDNN and precision settings
are fixed once it has started):

- ``epoch img/s``: images per second of training on ``isic2017-train`` through the trainer's own input pipeline
  (decode cache, online augmentation in ``tf.data``'s parallel map, prefetch) and ``model.fit``: the second of two
  ``--epoch-steps``-step epochs, so start-up, tracing and the cache fill do not count;
- ``step img/s``: ``model.train_on_batch`` on one batch held in memory (the model alone);
- ``aug pairs/s``: the recipe's augmentation alone, one thread, on the decoded pairs;
- ``GFLOP/img``: the model's convolution FLOPs for one image, forward and backward (3× the forward count:
  the backward pass computes two products per forward one);
- ``% peak``: achieved FLOP/s of the model step against this machine's dense matmul peak, measured in the same
  run (fp32 ``tf.matmul`` 2048², and bfloat16 for bfloat16 variants).

Variants run alternately for ``--rounds`` rounds and the best of each is kept (this machine's noise is ±30 %).
Every row names its options. ``--markdown`` writes the table (with the machine and the command) to a file.

    python benchmarks/bench_train_step.py --markdown docs/training_performance.md
    python benchmarks/bench_train_step.py --variants previous,recipe --sizes 256 --rounds 1   # quick
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "configs" / "isic_reference.config"
PREVIOUS = ROOT / "configs" / "default_model.config"

# name: (base config, [section.key overrides], what it is)
VARIANTS: dict[str, tuple[Path, dict[str, object], str]] = {
    "previous": (
        PREVIOUS,
        {},
        "the bundled model's recipe (configs/default_model.config): seed UNet, 16 filters, 5 levels, fp32",
    ),
    "previous-bf16": (PREVIOUS, {"train.mixed_precision": True}, "the same in bfloat16"),
    "separable": (PREVIOUS, {"model.block": "separable"}, "the same with depthwise-separable blocks, fp32"),
    "lite0-fp32": (RECIPE, {"train.mixed_precision": False}, "EfficientNet-Lite0 UNet, fp32"),
    "recipe": (RECIPE, {}, "EfficientNet-Lite0 UNet, bfloat16 (configs/isic_reference.config)"),
    "recipe-xla": (RECIPE, {"xla": True}, "the recipe with XLA (jit_compile)"),
    "recipe-frozen": (RECIPE, {"frozen": True}, "the recipe with the encoder frozen (its first epoch)"),
}
DEFAULT_VARIANTS = "previous,previous-bf16,separable,lite0-fp32,recipe,recipe-xla,recipe-frozen"


def _config(name: str, size: int, batch: int, data: Path):
    from skinseg.data.config import apply_overrides, load_config

    base, overrides, _ = VARIANTS[name]
    cfg = load_config(base)
    keys = {k: v for k, v in overrides.items() if "." in k}
    keys |= {"model.image_height": size, "model.image_width": size, "train.batch_size": batch}
    keys |= {"train.image_datapath": [data / "images"], "train.mask_datapath": [data / "masks"]}
    return apply_overrides(cfg, keys)


def measure_peak(bf16: bool) -> float:
    """Dense matmul FLOP/s of this machine (best of 5 × 10 products of 2048² matrices)."""
    import tensorflow as tf

    n = 2048
    dtype = tf.bfloat16 if bf16 else tf.float32
    a = tf.random.normal((n, n), dtype=tf.float32)
    a, b = tf.cast(a, dtype), tf.cast(tf.transpose(a), dtype)
    mm = tf.function(lambda a, b: tf.linalg.matmul(a, b))
    mm(a, b).numpy()
    best = 0.0
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(10):
            c = mm(a, b)
        c.numpy()
        best = max(best, 10 * 2 * n**3 / (time.perf_counter() - start))
    return best


def run_one(name: str, size: int, batch: int, steps: int, epoch_steps: int, data: Path, limit: int) -> dict:
    from skinseg.training.tf_setup import configure_tensorflow

    configure_tensorflow()
    import keras
    import numpy as np

    cfg = _config(name, size, batch, data)
    overrides = VARIANTS[name][1]
    keras.utils.set_random_seed(cfg.train.seed)
    bf16 = bool(cfg.train.mixed_precision)
    keras.mixed_precision.set_global_policy("mixed_bfloat16" if bf16 else "float32")

    import cv2

    from skinseg.training.augment import Augmenter
    from skinseg.training.data import ExampleSource, make_dataset, make_example_fn
    from skinseg.training.encoders import encoder_layers
    from skinseg.training.model import count_flops
    from skinseg.training.recipe import augment_params, find_splits, sample_spec
    from skinseg.training.trainer import build_model

    cv2.setNumThreads(1)
    model = build_model(cfg, steps_per_epoch=epoch_steps)
    if overrides.get("frozen"):
        for layer in encoder_layers(model):
            layer.trainable = False
    if overrides.get("xla"):
        model.jit_compile = True
    flops = 3 * count_flops(model)

    splits = find_splits(cfg)
    pairs = splits.train[:limit]
    source = ExampleSource(pairs, sample_spec(cfg))
    augmenter = Augmenter(augment_params(cfg))

    # augmentation alone, one thread
    fn = make_example_fn(source, augmenter=augmenter, seed=1, train=True)
    count = min(len(source), 64)
    start = time.perf_counter()
    for i in range(count):
        fn(np.int64(i), np.int64(i))
    aug = count / (time.perf_counter() - start)

    # the model alone
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (batch, size, size, 3)).astype(np.float32)
    y = (rng.random((batch, size, size, 1)) > 0.5).astype(np.float32)
    for _ in range(3):
        model.train_on_batch(x, y)
    start = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(x, y)
    step_seconds = (time.perf_counter() - start) / steps

    # whole epochs through the input pipeline
    ds = make_dataset(source, batch_size=batch, seed=cfg.train.seed, train=True, augmenter=augmenter)
    times: list[float] = []

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.t = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self.t)

    model.fit(ds, epochs=2, steps_per_epoch=epoch_steps, callbacks=[Timer()], verbose=0)
    peak = measure_peak(bf16)
    return {
        "variant": name,
        "size": size,
        "batch": batch,
        "epoch_img_s": epoch_steps * batch / times[-1],
        "step_img_s": batch / step_seconds,
        "aug_pairs_s": aug,
        "gflop_per_img": flops / 1e9,
        "achieved_gflop_s": flops * batch / step_seconds / 1e9,
        "peak_gflop_s": peak / 1e9,
        "params": model.count_params(),
    }


def _row(r: dict, base: dict | None) -> str:
    ratio = f"{r['epoch_img_s'] / base['epoch_img_s']:.2f}×" if base else "—"
    return (
        f"| {r['variant']} | {r['size']}² | {r['epoch_img_s']:.1f} | {ratio} | {r['step_img_s']:.1f} | "
        f"{r['aug_pairs_s']:.0f} | {r['gflop_per_img']:.2f} | {r['achieved_gflop_s']:.0f} | "
        f"{100 * r['achieved_gflop_s'] / r['peak_gflop_s']:.0f}% of {r['peak_gflop_s']:.0f} | {r['params']:,} | "
        f"{VARIANTS[r['variant']][2]} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default=DEFAULT_VARIANTS)
    parser.add_argument("--sizes", default="128,192,256", help="square training sizes, comma-separated")
    parser.add_argument("--size-variants", default="previous,recipe", help="variants run at every size")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=6, help="model-alone steps")
    parser.add_argument("--epoch-steps", type=int, default=12, help="steps of each pipeline epoch")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--limit", type=int, default=400, help="training pairs decoded (the cache)")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "isic2017-train")
    parser.add_argument("--markdown", type=Path)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.one:
        name, size = args.one.rsplit("@", 1)
        r = run_one(name, int(size), args.batch, args.steps, args.epoch_steps, args.data, args.limit)
        print(json.dumps(r))
        return
    if not (args.data / "images").is_dir():
        sys.exit(f"{args.data}: no images/ folder; pass --data with the isic2017-train layout (images/, masks/)")
    largest = max(sizes)
    jobs = [(v, s) for v in args.size_variants.split(",") for s in sizes if s != largest]
    jobs += [(v, largest) for v in args.variants.split(",")]
    best: dict[tuple[str, int], dict] = {}
    for rnd in range(args.rounds):
        for name, size in jobs if rnd % 2 == 0 else reversed(jobs):
            cmd = [sys.executable, __file__, "--one", f"{name}@{size}", "--batch", str(args.batch)]
            cmd += ["--steps", str(args.steps), "--epoch-steps", str(args.epoch_steps), "--limit", str(args.limit)]
            cmd += ["--data", str(args.data)]
            env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
            lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
            if not lines:
                print(f"{name}@{size} failed: {(proc.stderr.strip().splitlines() or ['?'])[-1][:160]}", flush=True)
                continue
            r = json.loads(lines[-1])
            print(f"round {rnd + 1}: {name}@{size}: {r['epoch_img_s']:.1f} img/s epoch, {r['step_img_s']:.1f} step")
            key = (name, size)
            if key not in best or r["epoch_img_s"] > best[key]["epoch_img_s"]:
                best[key] = r
    header = (
        "| variant | size | epoch img/s | vs previous | step img/s | aug pairs/s (1 thread) | GFLOP/img (fwd+bwd) "
        "| achieved GFLOP/s | of matmul peak | parameters | options |\n|" + " --- |" * 11
    )
    lines = [header]
    for (_name, size), r in sorted(best.items(), key=lambda kv: (kv[0][1], list(VARIANTS).index(kv[0][0]))):
        lines.append(_row(r, best.get(("previous", size))))
    table = "\n".join(lines)
    print(table)
    if args.markdown:
        cpu = next(
            (
                ln.split(":", 1)[1].strip()
                for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if "model name" in ln
            ),
            platform.processor(),
        )
        command = "python benchmarks/bench_train_step.py " + " ".join(sys.argv[1:])
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(
            f"{TEMPLATE_HEAD.format(cpu=cpu, cores=os.cpu_count(), command=command, rounds=args.rounds)}\n{table}\n"
        )
        print(f"wrote {args.markdown}")


TEMPLATE_HEAD = """# Training throughput

Generated by `benchmarks/bench_train_step.py` on {cpu} ({cores} cores): `{command}`. Best of {rounds} alternated
rounds per row; batch 8; `epoch img/s` is training through the trainer's own input pipeline on isic2017-train
(augmentation of the recipe, parallel map and prefetch), `step img/s` the model alone on a batch in memory,
`aug pairs/s` the augmentation alone on one thread. FLOPs count the convolutions (forward + backward = 3× forward).
"""


if __name__ == "__main__":
    main()
