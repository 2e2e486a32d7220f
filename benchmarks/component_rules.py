"""Which connected component to keep: measured on a folder of photographs with expert masks (isic-raw).

"Keep the largest component" keeps an ink mark or a dark corner beside a small lesion when the mark is larger.
This compares, on the same probability maps (one model run per image), the rules of
:func:`skinseg.runtime.postprocess.keep_one_component`: ``area`` (the largest), ``mass`` (the most probability:
the sum of the model's probabilities over the component), ``central`` (probability mass weighted by the
component's closeness to the image centre), and keeping every component (``none``). Mean and ISIC thresholded
Jaccard, and how many images each rule changes against ``area``.

    python benchmarks/component_rules.py --model skinseg/runtime/models/skinseg_default.onnx
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from skinseg.data.pairing import pair_folders
from skinseg.runtime import postprocess as pp
from skinseg.runtime.imageio import read_mask
from skinseg.runtime.metrics import ISIC_JACCARD_THRESHOLD, confusion_counts, jaccard
from skinseg.runtime.segmenter import Segmenter

RULES = ("none", "area", "mass", "central")
ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="ONNX model (default: the bundled one)")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "isic-raw")
    args = parser.parse_args()
    seg = Segmenter(args.model, keep_largest=False, fill_holes=False)
    pairs = pair_folders(args.data / "images", args.data / "masks").pairs
    scores: dict[str, list[float]] = {r: [] for r in RULES}
    changed = dict.fromkeys(RULES, 0)
    for pair in pairs:
        result = seg.segment_file(pair.image)
        truth = read_mask(pair.mask)
        masks = {"none": result.mask}
        for rule in RULES[1:]:
            masks[rule] = pp.keep_one_component(result.mask, result.prob, rule=rule)
        for rule, mask in masks.items():
            if seg.fill_holes is not False:
                mask = pp.fill_holes(mask)
            scores[rule].append(jaccard(confusion_counts(mask, truth)))
            changed[rule] += int(not np.array_equal(mask > 0, masks["area"] > 0))
    print(f"{len(pairs)} photographs of {args.data}, model {args.model or 'bundled'}")
    print("| rule | mean Jaccard | thresholded Jaccard | images changed vs area |\n| --- | --- | --- | --- |")
    for rule in RULES:
        j = np.array(scores[rule])
        tj = np.where(j >= ISIC_JACCARD_THRESHOLD, j, 0.0).mean()
        print(f"| {rule} | {j.mean():.4f} | {tj:.4f} | {changed[rule]} |")


if __name__ == "__main__":
    main()
