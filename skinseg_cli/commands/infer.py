"""`skinseg infer`: segment files, folders or globs of images with an ONNX model (no TensorFlow needed)."""

from __future__ import annotations

import contextlib
import signal
import threading
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from skinseg.app import QuietOpt, app, cli_errors, err, out
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


class LogFormat(str, Enum):
    text = "text"
    json = "json"


def quiet_opencv() -> None:
    """OpenCV logs errors only: a corrupt file becomes one failed row, not a screenful of WARN lines."""
    import cv2

    logging = getattr(getattr(cv2, "utils", None), "logging", None)
    if logging is not None:
        logging.setLogLevel(logging.LOG_LEVEL_ERROR)
    elif hasattr(cv2, "setLogLevel"):
        cv2.setLogLevel(2)  # LOG_LEVEL_ERROR


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def sigterm_as_interrupt():
    """Let SIGTERM (cron's timeout, systemd stop) end the run like Ctrl-C: the report is written on the way out."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@app.command()
@cli_errors
def infer(
    sources: Annotated[
        list[str], typer.Argument(help="Image files, folders or glob patterns (quote globs).", metavar="SOURCE...")
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output folder (created if needed).")],
    model: Annotated[
        Path | None, typer.Option("--model", "-m", help="The .onnx model (default: the bundled model).")
    ] = None,
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
    save_prob: Annotated[bool, typer.Option("--save-prob", help="Also write <stem>_prob.png (8-bit).")] = False,
    contours: Annotated[bool, typer.Option("--contours", help="Also write <stem>_contours.json.")] = False,
    max_pixels: MaxPixelsOpt = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Redo images whose outputs are up to date.")] = False,
    wait: Annotated[bool, typer.Option("--wait", help="Wait for another run on the same --output to end.")] = False,
    quiet: QuietOpt = False,
    log_format: Annotated[
        LogFormat, typer.Option("--log-format", help="text lines or one JSON object per line.")
    ] = LogFormat.text,
    recursive: Annotated[bool, typer.Option("--recursive", "-r", help="Also search sub-folders.")] = False,
) -> None:
    """Segment images: a mask, an overlay and a report row for each, mirroring the input folders.

    Writes <stem>_mask.png and <stem>_overlay.jpg per image, plus results.csv and summary.json.

    A rerun skips images whose outputs are newer than the image, so cron can call it on a folder of new photos.

    Exit code 0 when all images succeed, 1 when some failed (the others are done), 2 for usage errors.

    Example: skinseg infer photos/ --recursive --model model.onnx --output masks/
    """
    quiet_opencv()
    from skinseg.progress import InferProgress
    from skinseg.runtime.batch import default_model_path, run_batch

    options = infer_options(locals())
    model_path = model if model is not None else default_model_path()
    with sigterm_as_interrupt(), InferProgress(out=out, console=err, quiet=quiet, log_format=log_format.value) as p:
        summary = run_batch(sources, model_path, output, options, recursive=recursive, wait=wait, on_event=p.handle)
    if summary.exit_code:
        raise typer.Exit(summary.exit_code)
