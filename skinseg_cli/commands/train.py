"""`skinseg train`."""

from __future__ import annotations

import os
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

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
from skinseg.flags import output_path
from skinseg.runtime.errors import UsageError
from skinseg.training.distribute import (
    launch_local_workers,
    pin_to_cpus_from_env,
    plan_strategy,
    worker_command,
)

# ---------------------------------------------------------------------------------------------- train


class Strategy(str, Enum):  # skinseg.training.distribute.STRATEGIES
    auto = "auto"
    single = "single"
    mirrored = "mirrored"
    multiworker = "multiworker"


STOPPED = {
    "epochs": "finished",
    "early_stopping": "early stopping",
    "stop_file": "stopped by the STOP file",
    "interrupt": "interrupted",
    "nan": "stopped: the loss became NaN or infinite (lower the learning rate, or check the data),",
}
EXIT_CODES = {"interrupt": 130, "nan": 1}  # a script's `skinseg train … && skinseg export …` must not go on


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
    strategy: Annotated[
        Strategy,
        typer.Option(
            "--strategy",
            help="single: this process, one device; mirrored: every GPU of this host; multiworker: the workers "
            "TF_CONFIG lists, each running this same command (the chief writes the run directory); auto: "
            "multiworker when TF_CONFIG is set, mirrored with several GPUs, else single.",
        ),
    ] = Strategy.auto,
    local_workers: Annotated[
        int | None,
        typer.Option(
            "--local-workers",
            min=1,
            help="Start N multiworker processes on this host (localhost ports, each its share of the cores) "
            "and wait for them; the global batch is split across them.",
        ),
    ] = None,
    quiet: QuietOpt = False,
) -> None:
    """Train the UNet a config describes; the run directory gets the best model, curves, logs and the split.

    Create a file named STOP in the run directory (or press Ctrl-C) to end cleanly with the best model saved.

    Several workers (docs/distributed_training.md): set TF_CONFIG on each host and run the same command there, or
    try it on one host with --local-workers 2.

    Example: skinseg train --config configs/isic_reference.config --epochs 30 --output runs/reference
    """
    strategy = Strategy(strategy).value
    if local_workers is not None:
        if strategy not in ("auto", "multiworker"):
            raise UsageError(f"--local-workers starts multiworker processes; drop --strategy {strategy}")
        given = {
            "--output": output,
            "--epochs": epochs,
            "--batch-size": batch_size,
            "--learning-rate": learning_rate,
            "--steps-per-epoch": steps_per_epoch,
            "--patience": patience,
            "--seed": seed,
            "--init-weights": init_weights,
        }
        args = ["train", "--config", str(config), "--strategy", "multiworker"]
        args += [a for flag, v in given.items() if v is not None for a in (flag, str(v))]
        args += [flag for flag, on in (("--force", force), ("--resume", resume), ("--skip-bad", skip_bad)) if on]
        args += ["--quiet"] if quiet else []
        code = launch_local_workers(worker_command(args), local_workers, on_event=_launcher_line)
        raise typer.Exit(code)
    plan = plan_strategy(strategy)  # a bad TF_CONFIG is one line, before TensorFlow starts
    pin_to_cpus_from_env()  # a worker of --local-workers: its share of the cores, before TensorFlow starts
    if plan.kind == "multiworker":
        # A lost worker is one line; TensorFlow's C++ log would add its own (TF_CPP_MIN_LOG_LEVEL=0 shows it).
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
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

        def handle(event: dict) -> None:
            progress.handle(event)
            if event.get("phase") == "ready" and event.get("strategy"):
                progress._line(
                    f"strategy: {event['strategy']}; global batch {cfg.train.batch_size}, "
                    f"{event['per_replica_batch']} per replica"
                )

        result = run_training(
            cfg,
            run_dir=run_dir,
            force=force,
            resume=resume,
            skip_bad=skip_bad,
            strategy=strategy,
            on_event=handle,
        )
    who = f"worker {result.worker} of {result.workers}: " if result.workers > 1 else ""
    where = "run directory (written by the chief)" if result.worker else "run directory"
    out.print(
        f"{who}{STOPPED[result.stopped_by]} after {result.epochs_run} epoch(s) in {result.seconds:.0f} s; "
        f"best {result.monitor} {result.best_value:.4f} at epoch {result.best_epoch}; {where}: {run_dir}"
    )
    if result.stopped_by in EXIT_CODES:
        if result.stopped_by == "interrupt" and result.epochs_run:
            err.print("continue it with --resume and the config and options it started with")
        raise typer.Exit(EXIT_CODES[result.stopped_by])


def _launcher_line(event: dict) -> None:
    """What --local-workers says about its workers, on stderr."""
    if event["event"] == "workers":
        cores = " | ".join(",".join(map(str, g)) for g in event["cpus"]) if event["cpus"] else "shared"
        err.print(
            f"started {event['n']} workers on this host (cores {cores}); worker 0 (the chief) reports here, "
            f"the others log to {event['logs']}",
            highlight=False,
            soft_wrap=True,
        )
    elif event["event"] == "worker_failed" and (event["worker"] or event["how"].startswith("killed")):
        said = f": {event['last_line']}" if event["last_line"] and event["how"].startswith("exit") else ""
        err.print(
            f"[red]error:[/red] worker {event['worker']} ended ({event['how']}){escape(said)}",
            highlight=False,
            soft_wrap=True,
        )
    elif event["event"] == "terminating":
        err.print(f"the other workers did not stop within {event['after_s']:.0f} s; terminated them", highlight=False)
