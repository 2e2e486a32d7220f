"""Throughput of the online augmenter (pairs per second) on synthetic square image/mask pairs.

Usage: python benchmarks/bench_augment.py --size 512 --count 200 --seed 0
"""

from __future__ import annotations

import argparse
import time

import cv2
import numpy as np

from skinseg.training.augment import GEOMETRIC_OPS, PHOTOMETRIC_OPS, Augmenter, AugmentParams

NO_OPS = {name: 0.0 for name in GEOMETRIC_OPS + PHOTOMETRIC_OPS}
CONFIGS: dict[str, AugmentParams] = {
    # what the toolkit's sample train_eval_infer.config turns on, each op at probability 0.5
    "seed ops @0.5": AugmentParams(
        **{
            **NO_OPS,
            **dict.fromkeys(("hflip", "vflip", "rotation", "shrink", "shear", "deformation"), 0.5),
        }
    ),
    "all ops @0.5": AugmentParams(**dict.fromkeys(GEOMETRIC_OPS + PHOTOMETRIC_OPS, 0.5)),
    "all ops @1.0": AugmentParams(**dict.fromkeys(GEOMETRIC_OPS + PHOTOMETRIC_OPS, 1.0)),
}


def synthetic_pairs(size: int, count: int, rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray]]:
    """``count`` textured images, each with an elliptical lesion mask."""
    pairs = []
    for _ in range(count):
        image = cv2.GaussianBlur(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), (0, 0), 3.0)
        mask = np.zeros((size, size), np.uint8)
        centre = tuple(int(v) for v in rng.integers(size // 4, 3 * size // 4, 2))
        axes = tuple(int(v) for v in rng.integers(size // 10, size // 4, 2))
        cv2.ellipse(mask, centre, axes, float(rng.uniform(0, 180)), 0, 360, 255, -1)
        image[mask > 0] = (image[mask > 0] // 2 + 100).astype(np.uint8)
        pairs.append((image, mask))
    return pairs


def pairs_per_second(augment: Augmenter, pairs: list, count: int, seed: int) -> float:
    rng = np.random.default_rng(seed)
    for image, mask in pairs[:3]:  # warm-up
        augment(image, mask, rng)
    start = time.perf_counter()
    for index in range(count):
        image, mask = pairs[index % len(pairs)]
        augment(image, mask, rng)
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512, help="side of the square pairs (px)")
    parser.add_argument("--count", type=int, default=200, help="pairs augmented per configuration")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="cv2.setNumThreads (default: OpenCV's)")
    args = parser.parse_args()
    if args.threads is not None:
        cv2.setNumThreads(args.threads)
    pairs = synthetic_pairs(args.size, min(args.count, 16), np.random.default_rng(args.seed))
    print(f"{args.size}x{args.size}, {args.count} pairs, OpenCV {cv2.__version__}, {cv2.getNumThreads()} threads")
    for name, params in CONFIGS.items():
        rate = pairs_per_second(Augmenter(params), pairs, args.count, args.seed)
        print(f"{name:>14}: {rate:8.1f} pairs/s  ({1000.0 / rate:6.2f} ms/pair)")


if __name__ == "__main__":
    main()
