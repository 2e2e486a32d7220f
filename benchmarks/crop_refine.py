"""A second look at the lesion: what segmenting a crop around the first mask again would gain (isic-raw).

The default model sees the whole photograph at 128×128, so a small lesion is a few dozen pixels wide. This measures
the usual remedy before building it: segment the photograph, take the bounding box of the kept mask, widen it
``k`` times about its centre into a crop of the photograph's own aspect (so the model sees the aspect it was trained
on), segment the crop again, and put its probabilities back, either **replacing** the first pass inside the crop
(and zero outside) or **averaging** the two there. A crop wider than 80 % of the photograph is not segmented
again. The same post-processing as the runtime (threshold 0.5, largest component, holes filled) follows.

Prints, for each ``k`` and rule, the mean and ISIC thresholded Jaccard, their paired difference against the single
pass (± its standard error over the images), and how many images were refined, helped and hurt (by more than 0.01).

    python benchmarks/crop_refine.py --model runtime/models/skinseg_default.onnx --widen 2 3
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from skinseg.data.pairing import pair_folders
from skinseg.runtime import postprocess as pp
from skinseg.runtime.imageio import read_image, read_mask
from skinseg.runtime.metrics import ISIC_JACCARD_THRESHOLD, confusion_counts, jaccard
from skinseg.runtime.segmenter import Segmenter

ROOT = Path(__file__).resolve().parents[1]
MAX_CROP = 0.8  # a crop this wide (of the photograph's width) is not worth a second pass


def crop_box(mask: np.ndarray, widen: float) -> tuple[int, int, int, int] | None:
    """``(x, y, w, h)``: the crop of the photograph's aspect holding ``mask``'s box widened ``widen`` times, moved
    inside the photograph; None where the mask is empty or the crop would be wider than :data:`MAX_CROP`."""
    if not mask.any():
        return None
    height, width = mask.shape
    ys, xs = np.nonzero(mask)
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    share = max(widen * (x1 - x0) / width, widen * (y1 - y0) / height)
    if share >= MAX_CROP:
        return None
    w, h = round(share * width), round(share * height)
    x = round(min(max((x0 + x1 - w) / 2, 0), width - w))
    y = round(min(max((y0 + y1 - h) / 2, 0), height - h))
    return x, y, w, h


def postprocess(prob: np.ndarray) -> np.ndarray:
    """What the runtime does to a probability map by default."""
    return pp.fill_holes(pp.keep_largest_component(pp.threshold(prob, 0.5)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="ONNX model (default: the bundled one)")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "isic-raw")
    parser.add_argument("--widen", type=float, nargs="+", default=[2.0, 3.0], help="crop side / mask box side")
    args = parser.parse_args()
    seg = Segmenter(args.model)
    pairs = pair_folders(args.data / "images", args.data / "masks").pairs
    variants = [(k, rule) for k in args.widen for rule in ("replace", "average")]
    single: list[float] = []
    scores: dict[tuple[float, str], list[float]] = {v: [] for v in variants}
    refined = dict.fromkeys(args.widen, 0)
    for pair in pairs:
        truth = read_mask(pair.mask)
        image = read_image(pair.image)
        first = seg.segment(image)
        single.append(jaccard(confusion_counts(first.mask, truth)))
        prob = first.prob.astype(np.float32) / 255
        for k in args.widen:
            box = crop_box(first.mask, k)
            if box is None:
                for rule in ("replace", "average"):
                    scores[(k, rule)].append(single[-1])
                continue
            refined[k] += 1
            x, y, w, h = box
            again = seg.segment(image[y : y + h, x : x + w]).prob.astype(np.float32) / 255
            replaced = np.zeros_like(prob)
            replaced[y : y + h, x : x + w] = again
            averaged = prob.copy()
            averaged[y : y + h, x : x + w] = (averaged[y : y + h, x : x + w] + again) / 2
            for rule, combined in (("replace", replaced), ("average", averaged)):
                scores[(k, rule)].append(jaccard(confusion_counts(postprocess(combined), truth)))

    def thresholded(j: np.ndarray) -> np.ndarray:
        return np.where(j >= ISIC_JACCARD_THRESHOLD, j, 0.0)

    base = np.array(single)
    n = len(base)
    print(f"{n} photographs of {args.data}, model {args.model or 'bundled'}")
    print("| pass | mean Jaccard | thresholded | vs single, mean | vs single, thresholded | refined | helped | hurt |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    print(f"| single | {base.mean():.4f} | {thresholded(base).mean():.4f} | | | | | |")
    for k, rule in variants:
        j = np.array(scores[(k, rule)])
        d, dt = j - base, thresholded(j) - thresholded(base)
        se, set_ = d.std(ddof=1) / np.sqrt(n), dt.std(ddof=1) / np.sqrt(n)
        print(
            f"| crop ×{k:g}, {rule} | {j.mean():.4f} | {thresholded(j).mean():.4f} | {d.mean():+.4f} ± {se:.4f} "
            f"| {dt.mean():+.4f} ± {set_:.4f} | {refined[k]} | {int((d > 0.01).sum())} | {int((d < -0.01).sum())} |"
        )


if __name__ == "__main__":
    main()
