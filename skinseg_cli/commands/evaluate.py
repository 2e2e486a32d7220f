"""`skinseg evaluate`: score a model against ground-truth masks (Jaccard, Dice, ISIC score…) at full resolution."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from skinseg import install_hint
from skinseg.app import QuietOpt, app, cli_errors, err, out, require_tensorflow, sigterm_as_interrupt
from skinseg.flags import (
    BatchSizeOpt,
    Device,
    DeviceOpt,
    FillHolesOpt,
    KeepLargestOpt,
    MaxPixelsOpt,
    OverlapOpt,
    ReviewBelowOpt,
    ScaleOpt,
    ThreadsOpt,
    ThresholdOpt,
    TileOpt,
    TtaOpt,
    output_path,
    segment_options,
)
from skinseg.runtime.errors import UsageError
from skinseg.runtime.options import SegmentOptions

DEFAULTS = SegmentOptions()  # the flags' defaults are the options' own

KERAS_HINT = (
    f"evaluating a .keras model needs TensorFlow: install the train extra, {install_hint('train')}, "
    "or evaluate its exported .onnx file"
)


@app.command()
@cli_errors
def evaluate(
    images: Annotated[Path, typer.Option("--images", help="Folder of images.", show_default=False)],
    masks: Annotated[
        Path,
        typer.Option("--masks", help="Folder of masks: <stem>.png, <stem>_segmentation.png, _mask or _lesion."),
    ],
    output: Annotated[
        Path, typer.Option("--output", "-o", parser=output_path, help="Folder for the reports (created if needed).")
    ],
    model: Annotated[
        Path | None, typer.Option("--model", "-m", help="An .onnx or .keras model (default: the bundled model).")
    ] = None,
    stems: Annotated[
        Path | None,
        typer.Option("--stems", help="Evaluate only the stems listed in this file (one a line, # comments)."),
    ] = None,
    worst: Annotated[int, typer.Option("--worst", min=0, help="Images shown in worst.png (0: none).")] = 8,
    device: DeviceOpt = Device(DEFAULTS.device),
    threads: ThreadsOpt = DEFAULTS.threads,
    tile: TileOpt = DEFAULTS.tile,
    scale: ScaleOpt = DEFAULTS.scale,
    overlap: OverlapOpt = DEFAULTS.overlap,
    batch_size: BatchSizeOpt = DEFAULTS.batch_size,
    threshold: ThresholdOpt = DEFAULTS.threshold,
    keep_largest: KeepLargestOpt = DEFAULTS.keep_largest,
    fill_holes: FillHolesOpt = DEFAULTS.fill_holes,
    tta: TtaOpt = DEFAULTS.tta,
    review_below: ReviewBelowOpt = None,
    max_pixels: MaxPixelsOpt = None,  # None: the options' default (said in the help as 250 MP)
    quiet: QuietOpt = False,
) -> None:
    """Score a model on images with ground-truth masks, through the same pipeline as `skinseg infer`.

    Writes results.csv (one row per image), summary.json (means, medians, model, options) and worst.png (the
    lowest-Jaccard images, ground truth outlined in green and the prediction in magenta) to --output. Each image's
    quality estimate stands beside its true Jaccard, and the summary says how well the estimate ranks the images
    (Spearman) and how many failures (Jaccard < 0.65) the review flag caught.

    Exit code 0 when every image was scored, 1 when some could not be (unpaired or mis-sized files; the others
    are scored), 2 for usage errors (another evaluation writing to --output included), 130 when interrupted.

    Example: skinseg evaluate --model model.onnx --images isic/images --masks isic/masks --output eval/
    """
    from skinseg.data.evaluate import evaluate_folders
    from skinseg.progress import progress_callback
    from skinseg.runtime.model_cache import default_model_path
    from skinseg.training.keras_segmenter import open_segmenter

    for folder, option in ((images, "--images"), (masks, "--masks")):
        if not folder.is_dir():
            what = "not a folder (it is a file)" if folder.exists() else "folder not found"
            raise UsageError(f"{option} {folder}: {what}; give the folder of {option[2:]}")
    options = segment_options(
        device=device,
        threads=threads,
        tile=tile,
        scale=scale,
        overlap=overlap,
        batch_size=batch_size,
        threshold=threshold,
        keep_largest=keep_largest,
        fill_holes=fill_holes,
        tta=tta,
        max_pixels=max_pixels,
    )
    model_path = model if model is not None else default_model_path()
    if model_path.suffix.lower() == ".keras" and model_path.is_file():
        require_tensorflow(KERAS_HINT)
        if options.device not in ("auto", "cpu"):
            err.print("[yellow]warning:[/yellow] --device applies to ONNX models; the .keras model runs on TensorFlow")
    done = [0, 0]  # images scored, of how many: what an interrupt reports

    def progress(n: int, total: int) -> None:
        done[:] = [n, total]
        advance(n, total)

    try:
        segmenter = open_segmenter(model_path, options)
        with sigterm_as_interrupt(), progress_callback("evaluating", total=None, quiet=quiet, console=err) as advance:
            run = evaluate_folders(
                segmenter,
                images=images,
                masks=masks,
                output=output,
                model_path=model_path,
                stems=stems,
                worst=worst,
                on_progress=progress,
                review_below=review_below,
            )
    except KeyboardInterrupt:  # Typer would exit 130 without a word
        scored, total = done
        if total and scored == total:
            err.print(f"[yellow]interrupted[/yellow] while writing the reports to {escape(str(output))}; run it again")
        else:
            err.print(
                f"[yellow]interrupted[/yellow] after {scored} of {total or '?'} image(s): no report written "
                "(they are written once every image is scored)",
                soft_wrap=True,
            )
        raise typer.Exit(130) from None

    for row in run.errors:
        err.print(f"[red]{row.status}:[/red] {escape(row.error)}", soft_wrap=True)
    out.print(summary_table(run.summary))
    if run.summary.get("quality"):
        out.print(quality_line(run.summary["quality"]), highlight=False, markup=False, soft_wrap=True)
    out.print(f"wrote {', '.join(run.files)} to {escape(str(run.output))}", soft_wrap=True)
    if run.errors:
        err.print(
            f"[red]{len(run.errors)} image(s) not scored[/red] (listed above and in {run.files[0]} with the reason)",
            soft_wrap=True,
        )
        raise typer.Exit(1)


# ---------------------------------------------------------------------------------------------- helpers


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


def quality_line(q: dict[str, Any]) -> str:
    """The quality estimate against the truth, in one line."""
    rho = "n/a" if q["spearman"] is None else f"{q['spearman']:.3f}"
    recall = "n/a" if q["recall"] is None else f"{q['recall']:.2f}"
    precision = "n/a" if q["precision"] is None else f"{q['precision']:.2f}"
    return (
        f"quality estimate: Spearman {rho} against the true Jaccard over {q['images']} image(s); review flag "
        f"(estimate < {q['review_below']:.3f}): {q['caught']} of {q['failures']} failure(s) (Jaccard < "
        f"{q['failure_below']:g}) caught, recall {recall}; {q['flagged']} flagged, precision {precision}"
    )


def summary_table(summary: dict[str, Any], metrics: Iterable[str] | None = None) -> Table:
    """A rich table of each metric's mean and median over the scored images."""
    from skinseg.runtime.metrics import METRICS

    table = Table(title=f"{summary['n_images']} image(s) scored, {summary['n_errors']} error(s)", title_justify="left")
    table.add_column("metric")
    table.add_column("mean", justify="right")
    table.add_column("median", justify="right")
    for name in metrics or METRICS:
        table.add_row(name, _fmt(summary[name]["mean"]), _fmt(summary[name]["median"]))
    seconds = summary["seconds_per_image"]
    table.add_row("seconds / image", _fmt(seconds["mean"]), _fmt(seconds["median"]), style="dim")
    return table
