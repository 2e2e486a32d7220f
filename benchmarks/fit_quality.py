"""Fit and measure a model's per-image quality estimator on images it did not train on; measure its cost.

The images: ``isic-raw`` (98 ISIC 2017 validation photographs with expert masks) and the ``isic-256`` stems that
are in neither ``isic2017-train`` nor ``isic-raw`` (about 60 archive images, 256×256, hair removed: more failures
to learn from). Every image is segmented as ``skinseg infer`` does; :mod:`skinseg.data.quality_fit` fits the
estimator and measures it by nested cross-validation (10-fold, repeated 5 times; the review threshold of each
fold chosen on its training part), so every figure is out of sample. Printed: the fitted estimator's figures,
overall and on each folder, beside ranking by ``mean_prob`` alone (the column results.csv had before).

    python benchmarks/fit_quality.py                                  # the bundled model
    python benchmarks/fit_quality.py --model runs/reference/model.onnx --write runs/reference/model.onnx
    python benchmarks/fit_quality.py --generic                         # print runtime.quality.GENERIC's literal
    python benchmarks/fit_quality.py --cost                            # feature cost against a 29 MP photo's time
    python benchmarks/fit_quality.py --model runs/foldA/model.onnx --folder FOLDS/B --samples oof_B.json
    python benchmarks/fit_quality.py --extra oof_A.json oof_B.json --extra-weight 0.5

``--folder DIR`` (``images/`` and ``masks/`` inside) replaces the two folders: with a fold model and the fold it
did not train on, it collects out-of-fold samples. ``--extra FILE...`` adds such ``--samples`` files to every fit
(never held out, never scored: the figures stay those of the isic folders).

``--write`` stores the estimator in an ONNX file's metadata (needs the onnx package); ``--samples FILE`` keeps the
segmented features in a JSON file and reads them back on the next run (refit without segmenting again).
``--cost`` times :func:`skinseg.runtime.quality.quality_features` directly on the working-scale probability map of a
6600×4400 photograph (``skinseg synth``), against that photograph's whole per-image time in ``skinseg infer``
(``summary.json`` seconds per image, 4 photos), in one run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def stems(folder: Path) -> set[str]:
    return {p.stem for p in (folder / "images").iterdir()} if (folder / "images").is_dir() else set()


def datasets(data: Path, folder: Path | None = None) -> list[tuple[str, list]]:
    from skinseg.data.pairing import pair_folders

    if folder is not None:
        return [(folder.name, pair_folders(folder / "images", folder / "masks").pairs)]
    raw = data / "isic-raw"
    small = data / "isic-256"
    out = []
    if raw.is_dir():
        out.append(("isic-raw", pair_folders(raw / "images", raw / "masks").pairs))
    if small.is_dir():
        extra = stems(small) - stems(data / "isic2017-train") - stems(raw)
        out.append(("isic-256", [p for p in pair_folders(small / "images", small / "masks").pairs if p.stem in extra]))
    if not out:
        raise SystemExit(f"{data}: no isic-raw or isic-256 folder; pass --data")
    return out


def read_samples(cache: Path) -> tuple[dict, list]:
    from skinseg.data.quality_fit import Sample

    try:
        rows = json.loads(cache.read_text())
        return rows, [Sample(**r) for r in rows["samples"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SystemExit(f"{cache}: not a --samples file of this script ({e}); write it with --samples") from None


def collect_all(model: Path | None, data: Path, cache: Path | None, folder: Path | None = None) -> list:
    from skinseg.data.quality_fit import collect
    from skinseg.runtime.segmenter import Segmenter

    if cache is not None and cache.is_file():
        rows, samples = read_samples(cache)
        if rows.get("model") == str(model) and rows.get("folder") == (str(folder) if folder else None):
            print(f"features read from {cache}", file=sys.stderr)
            return samples
    segmenter = Segmenter(model)
    samples = []
    for source, pairs in datasets(data, folder):
        start = time.perf_counter()
        samples += collect(segmenter, pairs, source=source)
        print(f"{source}: {len(pairs)} images segmented in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    if cache is not None:
        where = str(folder) if folder else None
        rows = {"model": str(model), "folder": where, "samples": [s.__dict__ for s in samples]}
        cache.write_text(json.dumps(rows))  # an empty mask's -inf is written and read back as -Infinity
    return samples


def figures_line(name: str, cv: dict) -> str:
    return (
        f"| {name} | {cv['images']} | {cv['failures']} | {cv['spearman']:.3f} | {cv['recall']:.2f} | "
        f"{cv['precision']:.2f} | {cv['flagged_share']:.0%} | {cv['mae']:.3f} |"
    )


def cost(model: Path | None, repeats: int = 200) -> None:
    """Feature cost per image against the whole per-image time of `skinseg infer` on 29 MP photographs."""
    import numpy as np

    from skinseg.runtime.imageio import decode_image, load_image_file
    from skinseg.runtime.quality import quality_features
    from skinseg.runtime.segmenter import Segmenter

    with tempfile.TemporaryDirectory() as tmp_text:
        tmp = Path(tmp_text)
        subprocess.run(
            [sys.executable, "-m", "skinseg", "synth", str(tmp / "big"), "--count", "4", "--size", "6600x4400",
             "--seed", "1", "--quiet"],
            check=True, capture_output=True,
        )  # fmt: skip
        images = sorted((tmp / "big" / "images").glob("*.jpg"))
        args = [sys.executable, "-m", "skinseg", "infer", str(tmp / "big" / "images"), "--output", str(tmp / "out")]
        subprocess.run([*args, "--quiet", *(["--model", str(model)] if model else [])], check=False)
        summary = json.loads((tmp / "out" / "summary.json").read_text())
        per_image = summary["seconds"] / summary["total"]
        segmenter = Segmenter(model)
        file = load_image_file(images[0])
        width, height = file.info.width, file.info.height
        image = decode_image(file, reduce=segmenter.decode_factor(width, height))
        work = segmenter.work_size(width, height)
        import cv2

        small = cv2.resize(image, work, interpolation=cv2.INTER_AREA)
        from skinseg.runtime.tiling import tiled_predict

        prob = tiled_predict(small, segmenter.predict_tiles, tile=segmenter.tile, overlap=segmenter.overlap)
        prob = np.clip(prob * 255 + 0.5, 0, 255).astype(np.uint8)
        kwargs = {"threshold": segmenter.threshold, "keep_largest": segmenter.keep_largest, "fill_holes": True}
        quality_features(prob, **kwargs)
        start = time.perf_counter()
        for _ in range(repeats):
            features = quality_features(prob, **kwargs)
        seconds = (time.perf_counter() - start) / repeats
        segmenter.quality.estimate(features)
        start = time.perf_counter()
        for _ in range(repeats):
            segmenter.quality.estimate(features)
        estimate = (time.perf_counter() - start) / repeats
    share = (seconds + estimate) / per_image
    print(
        f"29 MP (6600×4400) photo, working scale {work[0]}×{work[1]}: features {seconds * 1000:.2f} ms + estimate "
        f"{estimate * 1000:.3f} ms per image; `skinseg infer` {per_image:.3f} s per image (summary.json, 4 photos); "
        f"share {share:.2%}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=None, help="the ONNX model (default: the bundled one)")
    ap.add_argument("--data", type=Path, default=DATA, help="the shared data folder (isic-raw, isic-256 inside)")
    ap.add_argument("--samples", type=Path, help="cache the segmented features in this JSON file")
    ap.add_argument("--only", choices=("isic-raw", "isic-256"), help="fit on one folder only")
    ap.add_argument("--folder", type=Path, help="segment this folder (images/, masks/) instead of the isic ones")
    ap.add_argument("--extra", type=Path, nargs="+", default=[], help="--samples files added to every fit")
    ap.add_argument("--extra-weight", type=float, default=1.0, help="the weight of each --extra sample (default 1)")
    ap.add_argument("--write", type=Path, help="store the fitted estimator in this ONNX file's metadata")
    ap.add_argument("--generic", action="store_true", help="print the estimator as runtime.quality.GENERIC's literal")
    ap.add_argument("--json", type=Path, help="also write the fitted estimator and figures as JSON")
    ap.add_argument("--cost", action="store_true", help="only measure the cost per image on a 29 MP photograph")
    args = ap.parse_args()

    if args.cost:
        cost(args.model)
        return
    from skinseg.data.quality_fit import cross_validate, fit

    samples = collect_all(args.model, args.data, args.samples, args.folder)
    if args.only:
        samples = [s for s in samples if s.source == args.only]
    sources = sorted({s.source for s in samples})
    extra = [s for file in args.extra for s in read_samples(file)[1]]
    result = fit(samples, data=sources, extra=extra, extra_weight=args.extra_weight)
    baseline = cross_validate(samples, features=("mean_prob",))
    with_extra = f"; {len(extra)} extra samples at weight {args.extra_weight:g} in every fit" if extra else ""
    print(f"model {args.model or 'bundled'}{with_extra}; {result.summary()}\n")
    print("| estimator | images | failures | Spearman | recall | precision | flagged | MAE |")
    print("|---|---|---|---|---|---|---|---|")
    rows = [("quality (all features)", result.cv), ("mean_prob alone", baseline)]
    for name, cv in rows:
        print(figures_line(f"{name}, all images", cv))
        for source, part in sorted(cv.get("by_source", {}).items()):
            print(figures_line(f"{name}, {source}", {**part, "images": part["images"], "failures": part["failures"]}))
    print(f"\nreview below {result.model.review_below:.3f} (chosen on out-of-fold estimates for 80% recall)")
    print("coefficients (standardized): " + ", ".join(
        f"{f} {c:+.2f}" for f, c in zip(result.model.features, result.model.coef, strict=True)
    ))  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"model": result.model.to_dict(), "cv": result.cv}, indent=2))
    if args.generic:
        print("\nGENERIC = parse_quality(" + json.dumps(_short(result.model.to_dict()), indent=4) + ")")
    if args.write:
        from skinseg.exporters.quality_fit import embed_quality

        embed_quality(args.write, result.model)
        print(f"wrote the estimator into {args.write}")


def _short(d: dict) -> dict:
    """The estimator with its numbers at 6 significant digits (a literal that reads)."""

    def r(v):
        if isinstance(v, float):
            return float(f"{v:.6g}")
        if isinstance(v, list):
            return [r(x) for x in v]
        if isinstance(v, dict):
            return {k: r(x) for k, x in v.items()}
        return v

    return r(d)


if __name__ == "__main__":
    main()
