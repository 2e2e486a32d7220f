"""`skinseg train`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from skinseg.app import (
    QuietOpt,
    SeedOpt,
    app,
    cli_errors,
    err,
    load_config_for_cli,
    out,
    require_tensorflow,
)
from skinseg.options import output_path

# ---------------------------------------------------------------------------------------------- train


STOPPED = {
    "epochs": "finished",
    "early_stopping": "early stopping",
    "stop_file": "stopped by the STOP file",
    "interrupt": "interrupted",
}


@app.command()
@cli_errors
def train(
    config: Annotated[Path, typer.Option("--config", "-c", help="The train_eval_infer.config to train from.")],
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", parser=output_path, help="Run directory (overrides \\[train] model_dir)."),
    ] = None,
    epochs: Annotated[int | None, typer.Option("--epochs", min=1, help="Overrides \\[train] epochs.")] = None,
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", min=1, help="Overrides \\[train] batch_size.")
    ] = None,
    learning_rate: Annotated[
        float | None, typer.Option("--learning-rate", help="Overrides \\[model] learning_rate.")
    ] = None,
    steps_per_epoch: Annotated[
        int | None, typer.Option("--steps-per-epoch", min=1, help="Overrides \\[train] steps_per_epoch.")
    ] = None,
    patience: Annotated[int | None, typer.Option("--patience", min=1, help="Overrides \\[train] patience.")] = None,
    seed: SeedOpt = None,
    init_weights: Annotated[
        Path | None,
        typer.Option(
            "--init-weights",
            help="Fine-tune: start from this trained .keras model (same \\[model] settings; overrides "
            "\\[train] init_weights).",
        ),
    ] = None,
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

    Example: skinseg train --config configs/isic_reference.config --epochs 30 --output runs/reference
    """
    require_tensorflow()
    cfg = load_config_for_cli(
        config,
        {
            "train.epochs": epochs,
            "train.batch_size": batch_size,
            "model.learning_rate": learning_rate,
            "train.steps_per_epoch": steps_per_epoch,
            "train.patience": patience,
            "train.seed": seed,
            "train.model_dir": output,
            "train.init_weights": init_weights,
        },
    )
    from skinseg.progress import TrainProgress
    from skinseg.training.trainer import train as run_training

    run_dir = cfg.train.model_dir
    with TrainProgress(console=err, quiet=quiet) as progress:
        result = run_training(
            cfg, run_dir=run_dir, force=force, resume=resume, skip_bad=skip_bad, on_event=progress.handle
        )
    out.print(
        f"{STOPPED[result.stopped_by]} after {result.epochs_run} epoch(s) in {result.seconds:.0f} s; "
        f"best {result.monitor} {result.best_value:.4f} at epoch {result.best_epoch}; run directory: {run_dir}"
    )
