"""Does a second, different model's agreement tell which masks are wrong? (docs/quality.md, "What was tried")

Every image of ``isic-raw`` and the held-out ``isic-256`` stems (as ``fit_quality.py`` picks them) is segmented by
the bundled model, as ``skinseg infer`` does, and by each ``NAME=MODEL.onnx`` given; added to the eleven quality
features: ``agree_NAME``, the IoU of the two masks, and ``pdiff_NAME``, their mean absolute probability difference
per mask pixel. Printed: nested cross-validated figures (``skinseg.data.quality_fit.cross_validate``) of the
eleven, the eleven with the agreement (and the difference), the agreement alone, on all images and on isic-raw
alone; and the second model's time per image.

    python benchmarks/quality_agreement.py lite0=runs/reference/model.onnx foldA=runs/foldA/model.onnx
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fit_quality import DATA, datasets  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", help="NAME=MODEL.onnx: the second models")
    ap.add_argument("--data", type=Path, default=DATA)
    args = ap.parse_args()

    import skinseg.runtime.quality as quality
    from skinseg.data.quality_fit import DEFAULT_FEATURES, Sample, cross_validate
    from skinseg.runtime.errors import SkinsegError
    from skinseg.runtime.imageio import read_mask
    from skinseg.runtime.metrics import confusion_counts, scores
    from skinseg.runtime.segmenter import Segmenter

    if bad := [a for a in args.models if "=" not in a]:
        raise SystemExit(f"{bad[0]}: give the second model as NAME=MODEL.onnx")
    try:
        others = {name: Segmenter(Path(path)) for name, path in (a.split("=", 1) for a in args.models)}
    except SkinsegError as e:
        raise SystemExit(str(e)) from None
    base = Segmenter(None)
    samples, seconds = [], dict.fromkeys(others, 0.0)
    for source, pairs in datasets(args.data):
        for pair in pairs:
            result = base.segment_file(Path(pair.image))
            truth = read_mask(Path(pair.mask))
            features = dict(result.extra["quality_features"])
            mine = result.mask > 0
            for name, segmenter in others.items():
                start = time.perf_counter()
                other = segmenter.segment_file(Path(pair.image))
                seconds[name] += time.perf_counter() - start
                theirs = other.mask > 0
                union = np.count_nonzero(mine | theirs)
                features[f"agree_{name}"] = np.count_nonzero(mine & theirs) / union if union else 1.0
                diff = np.abs(result.prob.astype(np.float32) - other.prob.astype(np.float32)).mean() / 255
                features[f"pdiff_{name}"] = float(diff / max(mine.mean(), 1e-3))
            jaccard = scores(confusion_counts(result.mask, truth))["jaccard"]
            samples.append(Sample(pair.stem, source, jaccard, features))
    # the agreement features are this experiment's, not the runtime's: registered so the fitted model can use them
    quality.FEATURES = (*quality.FEATURES, *(f"{k}_{n}" for n in others for k in ("agree", "pdiff")))
    raw = [s for s in samples if s.source == "isic-raw"]
    for name in others:
        print(f"{name}: {seconds[name] / len(samples):.2f} s per image for the second model")
        agree, pdiff = f"agree_{name}", f"pdiff_{name}"
        sets = {
            "the eleven": DEFAULT_FEATURES,
            f"+ {agree}": (*DEFAULT_FEATURES, agree),
            f"+ {agree}, {pdiff}": (*DEFAULT_FEATURES, agree, pdiff),
            f"{agree} alone": (agree,),
        }
        for label, features in sets.items():
            for where, part in (("all", samples), ("isic-raw", raw)):
                cv = cross_validate(part, features=features)
                print(
                    f"  {label:<36} {where:<8} {len(part)} images: Spearman {cv['spearman']:.3f}, recall "
                    f"{cv['recall']:.2f}, precision {cv['precision']:.2f}, flagged {cv['flagged_share']:.0%}"
                )


if __name__ == "__main__":
    main()
