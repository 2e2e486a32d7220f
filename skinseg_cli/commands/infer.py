"""`skinseg infer`: segment files, folders or globs of images with an ONNX model (no TensorFlow needed)."""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from enum import Enum
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.markup import escape

from skinseg.app import app, cli_errors, err, out, sigterm_as_interrupt
from skinseg.flags import (
    BatchSizeOpt,
    Device,
    DeviceOpt,
    FillHolesOpt,
    InferQuietOpt,
    KeepLargestOpt,
    LogFileOpt,
    MaxInFlightOpt,
    MaxPixelsOpt,
    MemoryLimitOpt,
    OverlapOpt,
    OverlayColorOpt,
    OverlayOpacityOpt,
    OverlaySizeOpt,
    ReviewBelowOpt,
    ScaleOpt,
    ThreadsOpt,
    ThresholdOpt,
    TileOpt,
    TtaOpt,
    infer_options,
    output_path,
    segment_options,
)
from skinseg.runtime.defaults import set_decoder_limit
from skinseg.runtime.errors import UsageError
from skinseg.runtime.names import shown
from skinseg.runtime.options import InferOptions

DEFAULTS = InferOptions()  # the flags' defaults are the options' own


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


def busy_workers() -> bool:
    """Whether an image worker thread is still at work (a daemon thread, perhaps inside onnxruntime)."""
    from skinseg.runtime.runners import WORKER_THREAD_NAME

    return any(t.is_alive() and t.name.startswith(WORKER_THREAD_NAME) for t in threading.enumerate())


def exit_now(code: int) -> NoReturn:
    """End the process at once, the reports written and the output streams flushed: Python's own exit would stop
    a daemon thread inside onnxruntime's C++ code ("terminate called without an active exception", exit 134). The
    output folder's lock is released with the process."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


@app.command()
@cli_errors
def infer(
    sources: Annotated[
        list[str], typer.Argument(help="Image files, folders or glob patterns (quote globs).", metavar="SOURCE...")
    ],
    output: Annotated[
        Path, typer.Option("--output", "-o", parser=output_path, help="Output folder (created if needed).")
    ],
    model: Annotated[
        Path | None, typer.Option("--model", "-m", help="The .onnx model (default: the bundled model).")
    ] = None,
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
    review_below: ReviewBelowOpt = DEFAULTS.review_below,
    save_prob: Annotated[
        bool, typer.Option("--save-prob", help="Also write <stem>_prob.png (8-bit).")
    ] = DEFAULTS.save_prob,
    contours: Annotated[bool, typer.Option("--contours", help="Also write <stem>_contours.json.")] = DEFAULTS.contours,
    max_pixels: MaxPixelsOpt = None,  # None: the options' default (said in the help as 250 MP)
    overlay_size: OverlaySizeOpt = str(DEFAULTS.overlay_size),
    overlay_color: OverlayColorOpt = "green",  # DEFAULTS.overlay_color by name (tests/test_options.py checks)
    overlay_opacity: OverlayOpacityOpt = DEFAULTS.overlay_opacity,
    memory_limit: MemoryLimitOpt = "auto",  # DEFAULTS.memory_limit (None) as the CLI says it
    max_in_flight: MaxInFlightOpt = DEFAULTS.max_in_flight,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Redo images whose outputs are up to date.")
    ] = DEFAULTS.overwrite,
    retry_failed: Annotated[
        bool, typer.Option("--retry-failed", help="Retry images that failed before and have not changed since.")
    ] = DEFAULTS.retry_failed,
    wait: Annotated[bool, typer.Option("--wait", help="Wait for another run on the same --output to end.")] = False,
    quiet: InferQuietOpt = False,
    log_file: LogFileOpt = None,
    log_format: Annotated[
        LogFormat, typer.Option("--log-format", help="text lines or one JSON object per line.")
    ] = LogFormat.text,
    recursive: Annotated[bool, typer.Option("--recursive", "-r", help="Also search sub-folders.")] = False,
    scheduler: Annotated[
        str | None,
        typer.Option(
            "--scheduler",
            help="Run on a Dask cluster: local:N (N worker processes here), a scheduler file, or an address "
            "(tcp://host:8786, tls://…). Needs the cluster extra; workers must see the files (docs/cluster.md).",
        ),
    ] = None,
    tls_ca_file: Annotated[str | None, typer.Option("--tls-ca-file", help="TLS to the scheduler: CA file.")] = None,
    tls_cert: Annotated[str | None, typer.Option("--tls-cert", help="TLS to the scheduler: certificate.")] = None,
    tls_key: Annotated[str | None, typer.Option("--tls-key", help="TLS to the scheduler: private key.")] = None,
) -> None:
    """Segment images: a mask, an overlay and a report row for each, mirroring the input folders.

    Writes <stem>_mask.png and <stem>_overlay.jpg per image, plus results.csv, summary.json and index.html. With
    several folders, each one's outputs go to a sub-folder named after it.

    A rerun redoes only what changed: new or changed photos (by content), or another model or options. An image
    that failed is not retried until it changes (--retry-failed to force), so cron can call it on a folder of new
    photos every night. A folder with no images is not an error.

    Exit code 0 when all images succeed, 1 when some failed (the others are done), 2 for usage errors, 130 when
    interrupted (the images done so far are kept and reported).

    Example: skinseg infer photos/ --recursive --model model.onnx --output masks/
    """
    if model is not None and model.suffix.lower() == ".keras":
        raise UsageError(
            f"--model {model}: infer runs ONNX models; export it first with `skinseg export {model.parent}` "
            f"(or `skinseg evaluate` scores a .keras model)"
        )
    set_decoder_limit(max_pixels or DEFAULTS.max_pixels)  # before OpenCV loads: its decoders refuse larger images
    quiet_opencv()
    from skinseg.progress import InferProgress
    from skinseg.runtime.batch import iter_batch
    from skinseg.runtime.imageio import SUPPORTED_EXTENSIONS
    from skinseg.runtime.model_cache import default_model_path
    from skinseg.runtime.runners import MAX_IN_FLIGHT

    segment = segment_options(
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
    options = infer_options(
        segment,
        save_prob=save_prob,
        contours=contours,
        overwrite=overwrite,
        overlay_size=overlay_size,
        retry_failed=retry_failed,
        memory_limit=memory_limit,
        max_in_flight=max_in_flight,
        overlay_color=overlay_color,
        overlay_opacity=overlay_opacity,
        review_below=review_below,
    )
    if options.max_in_flight > MAX_IN_FLIGHT:  # the runner caps it; the command line says so
        err.print(f"note: --max-in-flight {options.max_in_flight} is more than {MAX_IN_FLIGHT}; using {MAX_IN_FLIGHT}")
    model_path = model if model is not None else default_model_path()
    security = None
    if scheduler is not None:
        from skinseg.runtime.cluster import tls_security

        security = tls_security(tls_ca_file, tls_cert, tls_key)
    elif tls_ca_file or tls_cert or tls_key:
        raise UsageError("--tls-ca-file, --tls-cert and --tls-key go with --scheduler")
    progress = InferProgress(out=out, console=err, quiet=quiet, log_format=log_format.value, log_file=log_file)
    try:
        with sigterm_as_interrupt(), progress:
            run = iter_batch(
                sources,
                model_path,
                output,
                options,
                recursive=recursive,
                wait=wait,
                on_event=progress.handle,
                scheduler=scheduler,
                security=security,
            )
            try:
                for _row in run:  # each image's row as it completes; the progress events print them
                    pass
            finally:  # an interrupt between two rows: the batch stops here, its reports written
                run.close()
            summary = run.summary
            assert summary is not None  # the iteration ended: the batch is complete
    except KeyboardInterrupt:
        if busy_workers():  # an image past the grace: Python's exit would abort in onnxruntime (exit 134)
            exit_now(130)
        raise typer.Exit(130) from None  # the progress printed what was done; the reports are written
    if summary.total == 0:
        where = ", ".join(escape(shown(s)) for s in sources)
        kinds = ", ".join(sorted(SUPPORTED_EXTENSIONS))
        err.print(
            f"no images in {where} (looked for {kinds}{'' if recursive else '; --recursive searches sub-folders'})"
        )
        return
    if summary.exit_code:
        raise typer.Exit(summary.exit_code)
