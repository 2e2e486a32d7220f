"""`skinseg synth`: synthetic dermoscopy data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from skinseg.app import (
    QuietOpt,
    app,
    cli_errors,
    err,
    out,
)

# ---------------------------------------------------------------------------------------------- synth


@app.command()
@cli_errors
def synth(
    output: Annotated[Path, typer.Argument(help="Output folder (images/ and masks/ are created inside).")],
    count: Annotated[int, typer.Option("--count", "-n", min=1, help="Number of image/mask pairs.")] = 16,
    size: Annotated[str, typer.Option("--size", help="Image size WxH, up to 20000 px a side.")] = "512x384",
    seed: Annotated[int, typer.Option("--seed", help="Random seed: the same seed writes identical files.")] = 0,
    quiet: QuietOpt = False,
) -> None:
    """Write synthetic dermoscopy-like images with their exact masks (for tests, demos and benchmarks).

    Example: skinseg synth data/synth --count 32 --size 640x480 --seed 1
    """
    from skinseg.data.synth import parse_size, write_dataset
    from skinseg.progress import progress_callback

    wh = parse_size(size)
    with progress_callback(f"synthesizing {count} images", total=count, quiet=quiet, console=err) as cb:
        pairs = write_dataset(output, count=count, size=wh, seed=seed, on_progress=cb)
    out.print(f"wrote {len(pairs)} image/mask pairs to {output}/images and {output}/masks")
