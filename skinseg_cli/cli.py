"""The `skinseg` command line: a thin shell that parses options, calls the core with keywords, and prints.

Problems the user can fix arrive as :class:`runtime.errors.SkinsegError` and are printed as one red line
(exit code 2 for usage errors, 1 otherwise). Heavy imports (TensorFlow) happen inside the commands that need them.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from runtime.errors import MissingExtraError, SkinsegError
from skinseg_cli import __version__

app = typer.Typer(
    name="skinseg",
    help="Skin-lesion segmentation at the edge: train a UNet, export it to ONNX, segment large dermoscopy images.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
config_app = typer.Typer(help="Read, check and write train_eval_infer.config files.", no_args_is_help=True)
app.add_typer(config_app, name="config")

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

TRAIN_EXTRA_HINT = (
    "skinseg train needs TensorFlow: install the train extra with `pip install 'skinseg[train]'` (or `make install`)"
)


def cli_errors(fn):
    """Turn a SkinsegError into one red line and its exit code; never a traceback for a user's mistake."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SkinsegError as e:
            err.print(f"[red]error:[/red] {escape(str(e))}", soft_wrap=True)
            raise typer.Exit(e.exit_code) from None

    return wrapper


def require_tensorflow(hint: str = TRAIN_EXTRA_HINT) -> None:
    """Fail with one line when TensorFlow is not installed; otherwise import it without its start-up chatter."""
    import importlib.util
    import os

    if importlib.util.find_spec("tensorflow") is None or importlib.util.find_spec("keras") is None:
        raise MissingExtraError(hint)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # TensorFlow's C++ layer logs oneDNN/CUDA notices to fd 2 before any setting applies: mute fd 2 while importing.
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            import tensorflow  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _version(value: bool) -> None:
    if value:
        out.print(f"skinseg {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", help="Print the version and exit.", callback=_version, is_eager=True)
    ] = False,
) -> None:
    """skinseg: train, export, infer, evaluate."""


# ---------------------------------------------------------------------------------------------- shared options

ConfigArg = Annotated[Path, typer.Argument(help="A train_eval_infer.config file.", show_default=False)]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="Random seed (overrides [train] seed).")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Plain lines only, no progress bars.")]


def _load(config: Path, overrides: dict[str, Any] | None = None):
    from skinseg_cli.config import apply_overrides, load_config

    cfg = load_config(config)
    if overrides:
        apply_overrides(cfg, overrides)
    for w in cfg.warnings:
        err.print(f"[yellow]warning:[/yellow] {escape(w)}", soft_wrap=True)
    return cfg


# ---------------------------------------------------------------------------------------------- config


@config_app.command("show")
@cli_errors
def config_show(
    config: ConfigArg,
    only_set: Annotated[bool, typer.Option("--only-set", help="Show only the keys the file sets.")] = False,
) -> None:
    """Print the resolved config: every key with its type-checked value, paths made absolute.

    Example: skinseg config show configs/isic.config
    """
    from skinseg_cli.config import render_config

    cfg = _load(config)
    out.print(render_config(cfg, comments=False, only_present=only_set), markup=False, soft_wrap=True)


@config_app.command("init")
@cli_errors
def config_init(
    path: Annotated[Path, typer.Argument(help="Where to write the new config.", show_default=False)],
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
) -> None:
    """Write a commented default config to PATH.

    Example: skinseg config init my.config
    """
    from runtime.errors import UsageError
    from skinseg_cli.config import default_config_text

    if path.exists() and not force:
        raise UsageError(f"{path}: already exists; pass --force to overwrite it")
    try:
        path.write_text(default_config_text(), encoding="utf-8")
    except OSError as e:
        raise UsageError(f"{path}: cannot write ({e.strerror}); choose another path") from None
    out.print(f"wrote {path}")


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
    from skinseg_cli.progress import progress_callback
    from skinseg_cli.synth import parse_size, write_dataset

    wh = parse_size(size)
    with progress_callback(f"synthesizing {count} images", total=count, quiet=quiet, console=err) as cb:
        pairs = write_dataset(output, count=count, size=wh, seed=seed, on_progress=cb)
    out.print(f"wrote {len(pairs)} image/mask pairs to {output}/images and {output}/masks")


# ---------------------------------------------------------------------------------------------- augment-preview


@app.command("augment-preview")
@cli_errors
def augment_preview(
    config: ConfigArg,
    count: Annotated[int, typer.Option("--count", "-n", min=1, max=256, help="Number of augmented pairs.")] = 16,
    output: Annotated[Path, typer.Option("--output", "-o", help="PNG file to write.")] = Path("augment_preview.png"),
    seed: SeedOpt = None,
) -> None:
    """Draw augmented training pairs, mask outlines on the images, as one picture.

    Example: skinseg augment-preview configs/isic.config --count 16 --output grid.png
    """
    import numpy as np

    from runtime.imageio import write_png_atomic
    from skinseg_cli.training.augment import Augmenter, preview_grid
    from skinseg_cli.training.data import load_example
    from skinseg_cli.training.recipe import augment_params, find_splits, sample_spec

    cfg = _load(config, {"train.seed": seed})
    splits = find_splits(cfg, skip_bad=True)
    spec = sample_spec(cfg)
    augmenter = Augmenter(augment_params(cfg))
    rng = np.random.default_rng(cfg.train.seed)
    pairs = []
    for i in range(count):
        pair = splits.train[i % len(splits.train)]
        image, mask = load_example(pair, spec)
        if spec.train_scale is not None:
            from skinseg_cli.training.data import crop_tile

            image, mask = crop_tile(image, mask, spec.tile, rng)
        pairs.append(augmenter(image, mask, rng))
    write_png_atomic(output, preview_grid(pairs))
    out.print(f"wrote {output} ({count} augmented pairs)")


# ---------------------------------------------------------------------------------------------- train


@app.command()
@cli_errors
def train(
    config: Annotated[Path, typer.Option("--config", "-c", help="The train_eval_infer.config to train from.")],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Run directory (overrides [train] model_dir).")
    ] = None,
    epochs: Annotated[int | None, typer.Option("--epochs", min=1, help="Overrides [train] epochs.")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", min=1, help="Overrides [train] batch_size.")] = None,
    learning_rate: Annotated[
        float | None, typer.Option("--learning-rate", help="Overrides [model] learning_rate.")
    ] = None,
    steps_per_epoch: Annotated[
        int | None, typer.Option("--steps-per-epoch", min=1, help="Overrides [train] steps_per_epoch.")
    ] = None,
    patience: Annotated[int | None, typer.Option("--patience", min=1, help="Overrides [train] patience.")] = None,
    seed: SeedOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing run in the run directory.")] = False,
    resume: Annotated[
        bool,
        typer.Option("--resume", help="Continue the run in the run directory, optimizer state included."),
    ] = False,
    skip_bad: Annotated[
        bool, typer.Option("--skip-bad", help="Warn about unpaired or unreadable files instead of stopping.")
    ] = False,
    quiet: QuietOpt = False,
) -> None:
    """Train the UNet a config describes; the run directory gets the best model, curves, logs and the split.

    Create a file named STOP in the run directory (or press Ctrl-C) to end cleanly with the best model saved.

    Example: skinseg train --config configs/isic.config --epochs 30 --output runs/isic
    """
    require_tensorflow()
    cfg = _load(
        config,
        {
            "train.epochs": epochs,
            "train.batch_size": batch_size,
            "model.learning_rate": learning_rate,
            "train.steps_per_epoch": steps_per_epoch,
            "train.patience": patience,
            "train.seed": seed,
            "train.model_dir": output,
        },
    )
    from skinseg_cli.progress import TrainProgress
    from skinseg_cli.training.trainer import train as run_training

    run_dir = cfg.train.model_dir
    with TrainProgress(console=err, quiet=quiet) as progress:
        result = run_training(
            cfg, run_dir=run_dir, force=force, resume=resume, skip_bad=skip_bad, on_event=progress.handle
        )
    out.print(
        f"{result.stopped_by.replace('_', ' ')} after {result.epochs_run} epoch(s) in {result.seconds:.0f} s; "
        f"best {result.monitor} {result.best_value:.4f} at epoch {result.best_epoch}; run directory: {run_dir}"
    )


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
