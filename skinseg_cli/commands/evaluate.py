"""`skinseg evaluate`: score a model against ground-truth masks (Jaccard, Dice, ISIC score…) at full resolution."""

from __future__ import annotations

import importlib.metadata
import platform
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table
from skinseg import __version__
from skinseg.app import QuietOpt, app, cli_errors, err, out, require_tensorflow
from skinseg.options import (
    BatchSizeOpt,
    Device,
    DeviceOpt,
    FillHolesOpt,
    KeepLargestOpt,
    MaxPixelsOpt,
    OverlapOpt,
    ScaleOpt,
    ThreadsOpt,
    ThresholdOpt,
    TileOpt,
    TtaOpt,
    infer_options,
)
from skinseg.runtime.defaults import DEFAULT_BATCH_SIZE
from skinseg.runtime.errors import DataError, ModelError, UsageError

KERAS_HINT = (
    "evaluating a .keras model needs TensorFlow: install the train extra with `pip install 'skinseg[train]'`, "
    "or evaluate its exported .onnx file"
)
RESULTS, SUMMARY, WORST = "results.csv", "summary.json", "worst.png"


@app.command()
@cli_errors
def evaluate(
    images: Annotated[Path, typer.Option("--images", help="Folder of images.", show_default=False)],
    masks: Annotated[
        Path,
        typer.Option("--masks", help="Folder of masks: <stem>.png, <stem>_segmentation.png, _mask or _lesion."),
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for the reports (created if needed).")],
    model: Annotated[
        Path | None, typer.Option("--model", "-m", help="An .onnx or .keras model (default: the bundled model).")
    ] = None,
    stems: Annotated[
        Path | None,
        typer.Option("--stems", help="Evaluate only the stems listed in this file (one a line, # comments)."),
    ] = None,
    worst: Annotated[int, typer.Option("--worst", min=0, help="Images shown in worst.png (0: none).")] = 8,
    device: DeviceOpt = Device.auto,
    threads: ThreadsOpt = None,
    tile: TileOpt = None,
    scale: ScaleOpt = None,
    overlap: OverlapOpt = 0.25,
    batch_size: BatchSizeOpt = DEFAULT_BATCH_SIZE,
    threshold: ThresholdOpt = None,
    keep_largest: KeepLargestOpt = None,
    fill_holes: FillHolesOpt = None,
    tta: TtaOpt = None,
    max_pixels: MaxPixelsOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Score a model on images with ground-truth masks, through the same pipeline as `skinseg infer`.

    Writes results.csv (one row per image), summary.json (means, medians, model, options) and worst.png (the
    lowest-Jaccard images, ground truth outlined in green and the prediction in magenta) to --output.

    Exit code 0 when every image was scored, 1 when some could not be (unpaired or mis-sized files; the others
    are scored), 2 for usage errors.

    Example: skinseg evaluate --model model.onnx --images isic/images --masks isic/masks --output eval/
    """
    from skinseg.data.pairing import pair_folders
    from skinseg.progress import progress_callback
    from skinseg.runtime.batch import default_model_path
    from skinseg.runtime.evaluation import evaluate as run_evaluation
    from skinseg.runtime.evaluation import write_results_csv, write_summary_json, write_worst_png
    from skinseg.runtime.imageio import file_sha256
    from skinseg.runtime.outputs import prepare_output

    options = infer_options(
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
    wanted = read_stems(stems) if stems is not None else None
    report = pair_folders(images, masks)
    pairs = [p for p in report.pairs if wanted is None or p.stem in wanted]
    skipped = unpaired_rows(report, wanted)
    if not pairs and not skipped:
        raise DataError(f"{images}: no images to evaluate (none paired with {masks}); check --images and --masks")
    output = prepare_output(output)
    segmenter = load_segmenter(model_path, options)
    segment_fn = segment_like_infer(segmenter, options.max_pixels)

    with progress_callback("evaluating", total=len(pairs), quiet=quiet, console=err) as advance:
        result = run_evaluation(
            segment_fn, pairs, skipped=skipped, worst=worst, on_event=lambda e: advance(e["done"], e["total"])
        )

    summary = {
        **result.summary(),
        "model": {"path": str(model_path), "sha256": file_sha256(model_path), "provider": segmenter.provider},
        "data": {"images": str(images), "masks": str(masks), "stems": None if stems is None else str(stems)},
        "options": resolved_options(segmenter, options, worst=worst),
        "versions": versions(keras=model_path.suffix.lower() == ".keras"),
    }
    write_results_csv(output / RESULTS, result.rows)
    write_summary_json(output / SUMMARY, summary)
    wrote_worst = write_worst_png(output / WORST, result)

    for row in result.errors:
        err.print(f"[red]{row.status}:[/red] {escape(row.error)}", soft_wrap=True)
    out.print(summary_table(summary))
    files = [RESULTS, SUMMARY] + ([WORST] if wrote_worst else [])
    out.print(f"wrote {', '.join(files)} to {escape(str(output))}", soft_wrap=True)
    if result.errors:
        err.print(
            f"[red]{len(result.errors)} image(s) not scored[/red] (listed above and in {RESULTS} with the reason)",
            soft_wrap=True,
        )
        raise typer.Exit(1)


# ---------------------------------------------------------------------------------------------- helpers


def read_stems(path: Path) -> set[str]:
    """Stems listed one per line in ``path``; ``#`` starts a comment. DataError for an unreadable or empty list."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        reason = getattr(e, "strerror", None) or str(e)
        raise DataError(f"--stems {path}: cannot read the stem list ({reason}); give a UTF-8 text file") from None
    stems = {s for line in lines if (s := line.split("#", 1)[0].strip())}
    if not stems:
        raise DataError(f"--stems {path}: lists no stems; write one image stem (file name without suffix) a line")
    return stems


def unpaired_rows(report: Any, wanted: set[str] | None) -> list[Any]:
    """``skipped`` rows for unpaired or ambiguous files and for listed stems with neither image nor mask."""
    from skinseg.data.pairing import mask_key
    from skinseg.runtime.evaluation import unpaired

    rows = [
        unpaired(p.stem, f"{p}: no mask found in the masks folder (expected <stem>.png or <stem>_segmentation.png)", p)
        for p in report.images_without_mask
    ]
    rows += [
        unpaired(mask_key(m), f"{m}: mask without an image (no image named {mask_key(m)}.* in the images folder)")
        for m in report.masks_without_image
    ]
    for text in report.ambiguous:  # "<image>: several masks match (...); keep one"
        image = Path(text.partition(": several masks match")[0])
        rows.append(unpaired(image.stem, text, image))
    if wanted is None:
        return rows
    rows = [r for r in rows if r.stem in wanted]
    found = {p.stem for p in report.pairs} | {r.stem for r in rows}
    rows += [unpaired(s, f"{s}: listed in --stems but no image or mask has this stem") for s in sorted(wanted - found)]
    return rows


def load_segmenter(model_path: Path, options: Any) -> Any:
    """A :class:`~skinseg.runtime.segmenter.Segmenter` for an ``.onnx`` model, made as `skinseg infer` makes it, or a
    :class:`~skinseg.training.keras_segmenter.KerasSegmenter` for a ``.keras`` one."""
    suffix = model_path.suffix.lower()
    if suffix == ".keras":
        if not model_path.is_file():
            raise ModelError(f"{model_path}: file not found")
        require_tensorflow(KERAS_HINT)
        if options.device not in ("auto", "cpu"):
            err.print("[yellow]warning:[/yellow] --device applies to ONNX models; the .keras model runs on TensorFlow")
        from skinseg.training.keras_segmenter import KerasSegmenter

        kwargs = {k: v for k, v in options.segmenter_kwargs().items() if k != "device"}
        return KerasSegmenter(model_path, **kwargs)
    if suffix != ".onnx":
        raise UsageError(f"--model {model_path}: expected an .onnx or .keras file (got {suffix or 'no'} suffix)")
    from skinseg.runtime.segmenter import Segmenter

    return Segmenter(model_path, **options.segmenter_kwargs())


def segment_like_infer(segmenter: Any, max_pixels: int) -> Callable[[Path], Any]:
    """The mask `skinseg infer` writes for a file (:meth:`Segmenter.segment_file`: the image read whole)."""
    return lambda path: segmenter.segment_file(path).mask


def resolved_options(segmenter: Any, options: Any, *, worst: int) -> dict[str, Any]:
    """The options as used: the model's defaults filled in where none was given."""
    return {
        **segmenter.options(),
        "device": options.device,
        "threads": options.threads,
        "max_pixels": options.max_pixels,
        "worst": worst,
    }


def versions(*, keras: bool = False) -> dict[str, str]:
    """Versions of the packages that shape the figures."""
    import cv2
    import onnxruntime

    found = {
        "skinseg": __version__,
        "python": platform.python_version(),
        "numpy": importlib.metadata.version("numpy"),
        "opencv": cv2.__version__,
        "onnxruntime": onnxruntime.__version__,
    }
    if keras:
        for name in ("tensorflow", "keras"):
            module = sys.modules.get(name)
            found[name] = getattr(module, "__version__", "unknown")
    return found


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


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
