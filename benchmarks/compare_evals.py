"""Compare models scored on the same images: per-image paired differences against a baseline, with their error.

Each argument is a folder written by ``skinseg evaluate --output DIR`` (its ``results.csv``); the first is the
baseline. Printed, one Markdown row per folder: mean Jaccard, ISIC thresholded Jaccard, sensitivity (means over
images), then the paired difference of the mean and of the thresholded Jaccard against the baseline, ± the
standard error of that paired difference (SD of the per-image differences / √n, over the images both scored).
One model's scores on 98 images move by about ±0.013 from another's for nothing: a lever is a lever when its
difference is well outside that.

    python benchmarks/compare_evals.py eval/shipped eval/screen_s4 eval/screen_s9
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from pathlib import Path


def read_scores(folder: Path) -> dict[str, dict[str, float]]:
    """``stem -> {jaccard, thresholded_jaccard, sensitivity}`` of the images ``folder`` scored (errors left out)."""
    path = folder / "results.csv" if folder.is_dir() else folder
    if not path.is_file():
        raise SystemExit(f"{path}: no results.csv; run `skinseg evaluate ... --output {folder}` first")
    keys = ("jaccard", "thresholded_jaccard", "sensitivity")
    with path.open(newline="") as f:
        return {
            row["stem"]: {k: float(row[k]) for k in keys}
            for row in csv.DictReader(f)
            if row.get("status", "ok") == "ok" and row.get("jaccard")
        }


def paired(base: dict, other: dict, key: str) -> tuple[float, float, int]:
    """Mean and standard error of ``other - base`` over the stems both have."""
    stems = sorted(set(base) & set(other))
    d = [other[s][key] - base[s][key] for s in stems]
    n = len(d)
    if n < 2:
        return float("nan"), float("nan"), n
    mean = sum(d) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1))
    return mean, sd / math.sqrt(n), n


def mean_of(scores: dict, key: str) -> float:
    return sum(s[key] for s in scores.values()) / len(scores) if scores else float("nan")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folders", type=Path, nargs="+", help="skinseg evaluate output folders; the first is the baseline")
    args = ap.parse_args(argv)
    scores = [read_scores(f) for f in args.folders]
    base = scores[0]
    columns = ["model", "images", "mean Jaccard", "thresholded", "sensitivity", "vs baseline, mean", "thresholded"]
    print("| " + " | ".join(columns) + " |")
    print("|---|---|---|---|---|---|---|")
    for folder, s in zip(args.folders, scores, strict=True):
        cells = [f"{mean_of(s, k):.4f}" for k in ("jaccard", "thresholded_jaccard", "sensitivity")]
        if s is base:
            diffs = ["baseline", ""]
        else:
            diffs = []
            for key in ("jaccard", "thresholded_jaccard"):
                d, se, n = paired(base, s, key)
                diffs.append(f"{d:+.4f} ± {se:.4f}" + (f" (on {n})" if n != len(base) else ""))
        print(f"| {folder} | {len(s)} | " + " | ".join(cells + diffs) + " |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
