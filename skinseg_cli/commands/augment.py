"""`skinseg augment-preview`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from skinseg.app import (
    ConfigArg,
    SeedOpt,
    app,
    cli_errors,
    load_config_for_cli,
    out,
)
from skinseg.flags import output_path

# ---------------------------------------------------------------------------------------------- augment-preview


@app.command("augment-preview")
@cli_errors
def augment_preview(
    config: ConfigArg,
    count: Annotated[int, typer.Option("--count", "-n", min=1, max=256, help="Number of augmented pairs.")] = 16,
    output: Annotated[Path, typer.Option("--output", "-o", parser=output_path, help="PNG file to write.")] = Path(
        "augment_preview.png"
    ),
    seed: SeedOpt = None,
) -> None:
    """Draw augmented training pairs, mask outlines on the images, as one picture.

    Example: skinseg augment-preview configs/isic_reference.config --count 16 --output grid.png
    """
    import numpy as np

    from skinseg.runtime.imageio import write_png_atomic
    from skinseg.training.augment import Augmenter, preview_grid
    from skinseg.training.data import load_example
    from skinseg.training.recipe import augment_params, find_splits, sample_spec

    cfg = load_config_for_cli(config, {"train.seed": seed})
    splits = find_splits(cfg, skip_bad=True)
    spec = sample_spec(cfg)
    augmenter = Augmenter(augment_params(cfg))
    rng = np.random.default_rng(cfg.train.seed)
    pairs = []
    for i in range(count):
        pair = splits.train[i % len(splits.train)]
        image, mask = load_example(pair, spec)
        if spec.train_scale is not None:
            from skinseg.training.data import crop_tile

            image, mask = crop_tile(image, mask, spec.tile, rng)
        pairs.append(augmenter(image, mask, rng))
    write_png_atomic(output, preview_grid(pairs))
    out.print(f"wrote {output} ({count} augmented pairs)")
