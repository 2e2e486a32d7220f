"""Split a training folder by stem into folds, each with a config that trains on it (out-of-fold experiments).

For the quality estimator (docs/quality.md, "More failures to learn from"): a model trained on fold A segments
fold B, which it never saw, and the other way round. Each fold becomes ``OUT/A/images`` and ``OUT/A/masks``
(symbolic links to the originals, by stem) and ``OUT/foldA.config``: the given config with its training folders
replaced by the fold's (validation, ``[eval]``, unchanged; ``--epochs`` to shorten it). The split is a seeded
shuffle of the sorted stems, so the same seed gives the same folds.

    python benchmarks/make_folds.py ../shared/data/isic2017-train /tmp/folds --config configs/default_model.config \\
        --epochs 12 --seed 22
    skinseg train --config /tmp/folds/foldA.config --output runs/foldA     # and foldB
    skinseg export runs/foldA
    python benchmarks/fit_quality.py --model runs/foldA/model.onnx --folder /tmp/folds/B --samples oof_B.json
"""

from __future__ import annotations

import argparse
import random
import string
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source", type=Path, help="a folder with images/ and masks/ (e.g. isic2017-train)")
    ap.add_argument("out", type=Path, help="where the folds and their configs go (must not exist)")
    ap.add_argument("--config", type=Path, required=True, help="the recipe each fold model trains with")
    ap.add_argument("--folds", type=int, default=2)
    ap.add_argument("--seed", type=int, default=22)
    ap.add_argument("--epochs", type=int, help="override [train] epochs")
    args = ap.parse_args()

    from skinseg.data.config import apply_overrides, load_config, render_config
    from skinseg.data.pairing import pair_folders
    from skinseg.runtime.errors import SkinsegError

    if args.out.exists():
        raise SystemExit(f"{args.out}: already exists; give a new folder")
    if not 2 <= args.folds <= 26:
        raise SystemExit(f"--folds must be within [2, 26], got {args.folds}")
    try:
        pairs = {p.stem: p for p in pair_folders(args.source / "images", args.source / "masks").pairs}
        cfg = load_config(args.config)
    except SkinsegError as e:
        raise SystemExit(str(e)) from None
    stems = sorted(pairs)
    random.Random(args.seed).shuffle(stems)
    for i, name in enumerate(string.ascii_uppercase[: args.folds]):
        fold = args.out / name
        for sub in ("images", "masks"):
            (fold / sub).mkdir(parents=True)
        mine = stems[i * len(stems) // args.folds : (i + 1) * len(stems) // args.folds]
        for stem in mine:
            pair = pairs[stem]
            for sub, path in (("images", Path(pair.image)), ("masks", Path(pair.mask))):
                (fold / sub / path.name).symlink_to(path.resolve())
        (args.out / f"{name}.stems").write_text("\n".join(sorted(mine)) + "\n")
        overrides: dict[str, object] = {
            "train.image_datapath": (fold / "images").resolve(),
            "train.mask_datapath": (fold / "masks").resolve(),
        }
        if args.epochs:
            overrides["train.epochs"] = args.epochs
        text = render_config(apply_overrides(cfg, overrides), only_present=True)
        (args.out / f"fold{name}.config").write_text(f"; fold {name} of {args.source} (seed {args.seed})\n{text}")
        print(f"{fold}: {len(mine)} pairs; {args.out / f'fold{name}.config'}")


if __name__ == "__main__":
    main()
