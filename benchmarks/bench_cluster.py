"""`skinseg infer` locally and on a Dask cluster of this machine: images per second and Dask's overhead per image.

100 synthetic photographs of 1–4 MP (`skinseg synth`, three sizes), the bundled model at default settings; each
configuration is one whole `skinseg infer` process (start-up included) on a fresh output folder:
the plain local path, `--scheduler local:1` and `--scheduler local:2`.

    python benchmarks/bench_cluster.py                 # needs the cluster extra; a few minutes on 2 cores
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=100)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp_text:
        tmp = Path(tmp_text)
        sizes = ["1200x900", "1800x1350", "2300x1700"]  # 1.1, 2.4 and 3.9 MP
        for k, size in enumerate(sizes):
            n = args.count // len(sizes) + (1 if k < args.count % len(sizes) else 0)
            subprocess.run(
                [sys.executable, "-m", "skinseg", "synth", str(tmp / f"s{k}"), "--count", str(n), "--size", size,
                 "--seed", str(k), "--quiet"], check=True, capture_output=True,
            )  # fmt: skip
        images = tmp / "images"
        images.mkdir()
        for k in range(len(sizes)):
            for p in (tmp / f"s{k}" / "images").iterdir():
                p.rename(images / f"{k}_{p.name}")
        rows = []
        for name, extra in [("local path", []), ("--scheduler local:1", ["--scheduler", "local:1"]),
                            ("--scheduler local:2", ["--scheduler", "local:2"])]:  # fmt: skip
            out = tmp / f"out-{len(rows)}"
            start = time.perf_counter()
            done = subprocess.run(
                [sys.executable, "-m", "skinseg", "infer", str(images), "--output", str(out), "--quiet", *extra],
                capture_output=True, text=True,
            )  # fmt: skip
            wall = time.perf_counter() - start
            if done.returncode != 0:
                raise SystemExit(f"{name} failed:\n{done.stderr[-2000:]}")
            summary = json.loads((out / "summary.json").read_text())
            rows.append((name, summary["total"], wall, summary["seconds"]))
        cores = len(os.sched_getaffinity(0))
        print(f"{args.count} photographs of 1.1–3.9 MP, bundled model, defaults; {cores} cores; one run each.\n")
        print("| run | images | wall s (process) | images/s (process) | images/s (run) | Dask overhead s/image |")
        print("|---|---|---|---|---|---|")
        base = rows[0][3] / rows[0][1]
        for name, n, wall, run in rows:
            overhead = "" if name == "local path" else f"{run / n - base:+.3f}"
            print(f"| {name} | {n} | {wall:.1f} | {n / wall:.2f} | {n / run:.2f} | {overhead} |")


if __name__ == "__main__":
    main()
