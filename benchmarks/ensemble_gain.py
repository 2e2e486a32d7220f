"""What an ensemble of two models would gain on a folder with expert masks (isic-raw), before building one.

Each model segments every photograph through the runtime (its own metadata: scale, tile); the ensemble averages
their full-size probability maps, then thresholds at 0.5, keeps the largest component and fills holes, as the
runtime does. Prints mean and ISIC thresholded Jaccard of each model and of the average, and the model time.

    python benchmarks/ensemble_gain.py runs/reference/model.onnx runtime/models/skinseg_default.onnx
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from skinseg.data.pairing import pair_folders
from skinseg.runtime import postprocess as pp
from skinseg.runtime.imageio import read_mask
from skinseg.runtime.metrics import ISIC_JACCARD_THRESHOLD, confusion_counts, jaccard
from skinseg.runtime.segmenter import Segmenter

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", type=Path, nargs="+")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "isic-raw")
    args = parser.parse_args()
    segs = [Segmenter(m) for m in args.models]
    pairs = pair_folders(args.data / "images", args.data / "masks").pairs
    names = [m.name for m in args.models] + ["average"]
    scores: dict[str, list[float]] = {n: [] for n in names}
    seconds = dict.fromkeys(names[:-1], 0.0)
    for pair in pairs:
        truth = read_mask(pair.mask)
        probs = []
        for name, seg in zip(names, segs, strict=False):
            start = time.perf_counter()
            result = seg.segment_file(pair.image)
            seconds[name] += time.perf_counter() - start
            probs.append(result.prob.astype(np.float32))
            scores[name].append(jaccard(confusion_counts(result.mask, truth)))
        mean = np.mean(probs, axis=0)
        mask = pp.fill_holes(pp.keep_largest_component(pp.threshold(mean / 255.0, 0.5)))
        scores["average"].append(jaccard(confusion_counts(mask, truth)))
    print(f"{len(pairs)} photographs of {args.data}")
    print("| model | mean Jaccard | thresholded Jaccard | s/image |\n| --- | --- | --- | --- |")
    for name in names:
        j = np.array(scores[name])
        t = seconds.get(name, sum(seconds.values())) / len(pairs)
        print(f"| {name} | {j.mean():.4f} | {np.where(j >= ISIC_JACCARD_THRESHOLD, j, 0).mean():.4f} | {t:.3f} |")


if __name__ == "__main__":
    main()
