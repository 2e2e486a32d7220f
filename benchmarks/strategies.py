"""Scale, tiling, test-time flips and post-processing strategies, measured through `skinseg evaluate` on isic-raw.

Each strategy is one `skinseg evaluate` run (the same runtime path as `skinseg infer`), so the figures are what
users get. `isic-raw` (98 raw ISIC 2017 validation photographs, never trained on) is the set the project chooses
on. Prints markdown tables and, with --markdown, writes them into docs/strategies.md.

    python benchmarks/strategies.py --model runtime/models/skinseg_default.onnx --markdown docs/strategies.md
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "isic-raw"
sys.path.insert(0, str(ROOT))


def scales(tile: int) -> list[tuple[str, str, list[str]]]:
    """(name, what it is, extra `skinseg evaluate` options) for a model trained on ``tile``-px images."""
    return [
        ("a: whole image → tile", f"the whole image resized to {tile}×{tile} (aspect not kept, as the training "
         "images were), one tile", ["--scale", "tile"]),
        ("b: tiled at training scale", f"aspect kept, short side {tile} px, 25% overlap, Gaussian blend",
         ["--scale", f"short:{tile}"]),
        ("b': tiled, 2× finer", f"aspect kept, short side {2 * tile} px, 25% overlap, Gaussian blend",
         ["--scale", f"short:{2 * tile}"]),
        ("c: native tiles", f"{tile}-px tiles at the image's native resolution (the seed toolkit's tiled "
         "inferencer's scale)", ["--scale", "native"]),
    ]  # fmt: skip


# Every row names all of its options, so the tables do not depend on the defaults in the model's metadata.
PLAIN = ["--no-tta", "--no-keep-largest", "--fill-holes"]
TTA = [("no flips", ["--no-tta"]), ("flips (TTA)", ["--tta"])]
POST = [
    ("largest + holes", ["--no-tta", "--keep-largest", "--fill-holes"]),
    ("largest only", ["--no-tta", "--keep-largest", "--no-fill-holes"]),
    ("holes only", ["--no-tta", "--no-keep-largest", "--fill-holes"]),
    ("none", ["--no-tta", "--no-keep-largest", "--no-fill-holes"]),
    ("flips + largest + holes", ["--tta", "--keep-largest", "--fill-holes"]),
]


def run(model: Path, images: Path, masks: Path, extra: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable, "-m", "skinseg", "evaluate", "--model", str(model), "--images", str(images),
            "--masks", str(masks), "--output", tmp, "--worst", "0", "--quiet", *extra,
        ]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode not in (0, 1):
            raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr}")
        return json.loads((Path(tmp) / "summary.json").read_text())


def row(name: str, desc: str, s: dict) -> str:
    m = {k: s[k]["mean"] for k in ("jaccard", "dice", "thresholded_jaccard", "sensitivity", "specificity")}
    return (
        f"| {name} | {desc} | {m['jaccard']:.4f} | {s['jaccard']['median']:.3f} | {m['thresholded_jaccard']:.4f} | "
        f"{m['dice']:.3f} | {m['sensitivity']:.3f} | {m['specificity']:.3f} | {s['seconds_per_image']['mean']:.2f} |"
    )


HEADER = (
    "| strategy | what | mean Jaccard | median Jaccard | thresholded Jaccard | Dice | sensitivity | specificity "
    "| s/image |\n|---|---|---|---|---|---|---|---|---|"
)


def main() -> None:
    from skinseg.runtime.segmenter import Segmenter

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=ROOT / "runtime" / "models" / "skinseg_default.onnx")
    ap.add_argument("--images", type=Path, default=DATA / "images")
    ap.add_argument("--masks", type=Path, default=DATA / "masks")
    ap.add_argument("--markdown", type=Path, help="write the report here (e.g. docs/strategies.md)")
    args = ap.parse_args()
    if not args.images.is_dir():
        raise SystemExit(f"{args.images}: not found (isic-raw lives in ../shared/data/isic-raw)")
    meta = Segmenter(args.model, threads=1).metadata
    tile = meta.tile_size[0]
    default = (
        f"`--scale {meta.train_scale.mode}`"
        + (f" {meta.train_scale.value:g}" if meta.train_scale.value is not None else "")
        + f", TTA {'on' if meta.tta else 'off'}, keep largest {'on' if meta.keep_largest else 'off'}, "
        f"fill holes {'off' if meta.fill_holes is False else 'on'}"
    )

    sections: list[tuple[str, list[str]]] = []
    rows = []
    for name, desc, extra in scales(tile):
        rows.append(row(name, desc, run(args.model, args.images, args.masks, [*extra, *PLAIN])))
        print(rows[-1], flush=True)
    sections.append(("Scale and tiling (no flips; holes filled, every component kept)", rows))
    rows = []
    for name, extra in TTA:
        options = ["--scale", "tile", *extra, "--no-keep-largest", "--fill-holes"]
        desc = "whole image → tile; holes filled, every component kept"
        rows.append(row(name, desc, run(args.model, args.images, args.masks, options)))
        print(rows[-1], flush=True)
    sections.append(("Test-time flips (the tile and its three flips averaged: 4× the model work)", rows))
    rows = []
    for name, extra in POST:
        rows.append(
            row(name, "whole image → tile", run(args.model, args.images, args.masks, ["--scale", "tile", *extra]))
        )
        print(rows[-1], flush=True)
    sections.append(("Post-processing", rows))
    default_run = run(args.model, args.images, args.masks, [])
    n = default_run["n_images"]
    sections.append(("The model's defaults", [row("defaults", default, default_run)]))
    lines = [
        "# Scale, tiling, flips and post-processing, measured",
        "",
        f"Model `{args.model.name}` (trained on {tile}×{tile} images) on `isic-raw` ({n} raw ISIC 2017 validation "
        "photographs, 1024–1600 px, never trained on: the set the project chooses on), each row one "
        "`skinseg evaluate` run (the runtime path of `skinseg infer`), Jaccard at the ground truth's original "
        f"resolution. Machine: {platform.processor() or platform.machine()}, {_cores()} cores; seconds per image "
        "include decoding.",
        "",
        f"The model's metadata defaults: {default}.",
        "",
        "Reproduce: `python benchmarks/strategies.py --markdown docs/strategies.md`",
    ]
    for title, table in sections:
        lines += ["", f"## {title}", "", HEADER, *table]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.markdown:
        args.markdown.write_text(text)


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


if __name__ == "__main__":
    main()
