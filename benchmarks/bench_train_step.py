"""Seconds per training step of the UNet on this CPU, for the levers that decide how big a model fits a budget.

Runs a few warm-up steps, then times ``--steps`` steps of ``model.train_on_batch`` on random data (the input
pipeline is not included: it runs in parallel with the steps during training). Each variant runs in its own
process, because TensorFlow's threading, oneDNN and mixed-precision settings are fixed once it has started.

    python benchmarks/bench_train_step.py --steps 12 --variants base,onednn,bf16,separable,base32
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

VARIANTS = {
    # name: (environment, build_unet overrides, mixed precision, batch)
    "base": ({}, {}, False),
    "onednn": ({"TF_ENABLE_ONEDNN_OPTS": "1"}, {}, False),
    "no-onednn": ({"TF_ENABLE_ONEDNN_OPTS": "0"}, {}, False),
    "malloc": ({"MALLOC_MMAP_THRESHOLD_": "1073741824", "MALLOC_TRIM_THRESHOLD_": "4294967296"}, {}, False),
    "onednn-malloc": (
        {"TF_ENABLE_ONEDNN_OPTS": "1", "MALLOC_MMAP_THRESHOLD_": "1073741824", "MALLOC_TRIM_THRESHOLD_": "4294967296"},
        {},
        False,
    ),
    "onednn-bfc": ({"TF_ENABLE_ONEDNN_OPTS": "1", "TF_CPU_ALLOCATOR_USE_BFC": "true"}, {}, False),
    "bf16": ({}, {}, True),
    "onednn-bf16": ({"TF_ENABLE_ONEDNN_OPTS": "1"}, {}, True),
    "separable": ({}, {"block": "separable"}, False),
    "base24": ({}, {"base_filters": 24}, False),
    "base32": ({}, {"base_filters": 32}, False),
    "separable32": ({}, {"block": "separable", "base_filters": 32}, False),
    "layers6": ({}, {"num_layers": 6}, False),
}
REFERENCE = {
    "image_height": 256,
    "image_width": 256,
    "base_filters": 16,
    "num_layers": 5,
    "base_kernels": (3, 3),
    "dilation": (2, 2),
    "dropout_rate": 0.0,
    "batch_norm": True,
}


def run_one(name: str, steps: int, batch: int, size: tuple[int, int]) -> dict:
    import numpy as np

    env, overrides, bf16 = VARIANTS[name]
    import keras

    if bf16:
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    from skinseg.training.losses import compile_model
    from skinseg.training.model import build_unet, count_flops

    model = build_unet(**{**REFERENCE, "image_height": size[0], "image_width": size[1], **overrides})
    compile_model(model, loss="bce_dice_loss", metrics=[], learning_rate=1e-3, clipvalue=0.5)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (batch, *size, 3)).astype(np.float32)
    y = (rng.random((batch, *size, 1)) > 0.5).astype(np.float32)
    for _ in range(3):
        model.train_on_batch(x, y)
    start = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(x, y)
    seconds = (time.perf_counter() - start) / steps
    keras.mixed_precision.set_global_policy("float32")
    flops = count_flops(build_unet(**{**REFERENCE, "image_height": size[0], "image_width": size[1], **overrides}))
    return {
        "variant": name,
        "seconds_per_step": seconds,
        "images_per_second": batch / seconds,
        "params": model.count_params(),
        "gflops_per_image": flops / 1e9,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default="base,onednn,bf16,separable,base24,base32")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", default="256x256", help="HxW")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    size = tuple(int(v) for v in args.size.lower().split("x"))
    if args.one:
        print(json.dumps(run_one(args.one, args.steps, args.batch, size)))
        return
    header = f"{'variant':<14} {'s/step':>8} {'img/s':>7} {'params':>10} {'GFLOP/img':>10}"
    print(f"{header}   (batch {args.batch}, {args.size})")
    for name in args.variants.split(","):
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **VARIANTS[name][0]}
        cmd = [
            sys.executable,
            __file__,
            "--one",
            name,
            "--steps",
            str(args.steps),
            "--batch",
            str(args.batch),
            "--size",
            args.size,
        ]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
        if not lines:
            print(f"{name:<14} failed: {(proc.stderr.strip().splitlines() or ['?'])[-1][:100]}")
            continue
        r = json.loads(lines[-1])
        print(
            f"{name:<14} {r['seconds_per_step']:>8.3f} {r['images_per_second']:>7.1f} {r['params']:>10,} "
            f"{r['gflops_per_image']:>10.2f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
