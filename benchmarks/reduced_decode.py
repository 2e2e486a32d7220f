"""Does the reduced JPEG decode (libjpeg's 1/2, 1/4, 1/8 scaling for the model's input) change the masks?

`skinseg infer` decodes a large JPEG at the largest reduction that still gives the model's working scale and a
2048-px preview (`Segmenter.decode_factor`); photographs of 2048 px or less are decoded whole, so on `isic-raw`
and `isic-72` the masks are byte-identical to a full decode by construction. For the large photographs where the
reduction applies, this measures it: `isic-72` originals enlarged 2.5× (to 1800–7000 px, JPEG quality 95, masks
enlarged with nearest neighbour), each segmented both ways, scored against the enlarged ground truth.

    python benchmarks/reduced_decode.py --count 20
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data" / "isic-72"


def main() -> None:
    from skinseg.data.pairing import pair_folders
    from skinseg.runtime.imageio import decode_image, load_image_file, read_mask
    from skinseg.runtime.metrics import mask_iou
    from skinseg.runtime.segmenter import Segmenter

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=ROOT / "runtime" / "models" / "skinseg_default.onnx")
    ap.add_argument("--count", type=int, default=20)
    ap.add_argument("--enlarge", type=float, default=2.5)
    args = ap.parse_args()
    seg = Segmenter(args.model)
    pairs = pair_folders(DATA / "images", DATA / "masks").pairs[: args.count]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for pair in pairs:
            image = cv2.imread(str(pair.image))
            big = cv2.resize(image, None, fx=args.enlarge, fy=args.enlarge, interpolation=cv2.INTER_CUBIC)
            path = Path(tmp) / f"{pair.stem}.jpg"
            cv2.imwrite(str(path), big, [cv2.IMWRITE_JPEG_QUALITY, 95])
            truth = read_mask(pair.mask) > 0
            truth = cv2.resize(truth.astype(np.uint8), (big.shape[1], big.shape[0]), interpolation=cv2.INTER_NEAREST)
            height, width = big.shape[:2]
            factor = seg.decode_factor(width, height)
            t0 = time.perf_counter()
            reduced = seg.segment_file(path, keep_prob=False).mask > 0
            t1 = time.perf_counter()
            full_rgb = decode_image(load_image_file(path))
            full = seg.segment(full_rgb, keep_prob=False).mask > 0
            t2 = time.perf_counter()
            rows.append(
                (mask_iou(reduced, truth), mask_iou(full, truth), mask_iou(reduced, full), factor, t1 - t0, t2 - t1)
            )
            print(f"{pair.stem} {width}×{height} factor {factor}: J reduced {rows[-1][0]:.4f} full {rows[-1][1]:.4f} "
                  f"agreement {rows[-1][2]:.4f}", flush=True)  # fmt: skip
    a = np.array(rows)
    print(
        f"\n{len(rows)} enlarged isic-72 photographs: mean Jaccard {a[:, 0].mean():.4f} with the reduced decode, "
        f"{a[:, 1].mean():.4f} with the full decode; mask IoU between the two {a[:, 2].mean():.4f} (min "
        f"{a[:, 2].min():.4f}); {int((a[:, 3] > 1).sum())} decoded reduced; seconds per image {a[:, 4].mean():.2f} "
        f"vs {a[:, 5].mean():.2f}"
    )


if __name__ == "__main__":
    main()
