"""`skinseg export`: a trained model to a self-describing, verified ONNX file (plus int8/fp16 variants)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from skinseg import install_hint
from skinseg.app import app, cli_errors, err, out, require_modules, require_tensorflow
from skinseg.flags import output_path
from skinseg.runtime.errors import UsageError

EXPORT_HINT = f"skinseg export needs TensorFlow and tf2onnx: install the train extra, {install_hint('train')}"


class Layout(str, Enum):
    nhwc = "nhwc"
    nchw = "nchw"


class Quantize(str, Enum):
    int8 = "int8"
    fp16 = "fp16"


@app.command()
@cli_errors
def export(
    source: Annotated[
        Path,
        typer.Argument(help="A run directory (from skinseg train), a .keras model, or with --check an .onnx file."),
    ],
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", parser=output_path, help="The .onnx file to write (default: RUN_DIR/model.onnx)."
        ),
    ] = None,
    opset: Annotated[int, typer.Option("--opset", help="ONNX opset (13–18).")] = 17,
    layout: Annotated[
        Layout, typer.Option("--layout", help="Input layout: nhwc, or nchw without the input transpose.")
    ] = Layout.nhwc,
    quantize: Annotated[
        list[Quantize] | None,
        typer.Option(
            "--quantize",
            help="Also write a variant: int8 (static QDQ) or fp16. Repeatable. With one --quantize, --output names "
            "that variant's file (the fp32 model goes next to it as NAME.fp32.onnx).",
        ),
    ] = None,
    calibration: Annotated[
        Path | None,
        typer.Option(
            "--calibration", help="Folder of images to calibrate int8 on (default: the run's training images)."
        ),
    ] = None,
    calibration_count: Annotated[
        int, typer.Option("--calibration-count", min=1, help="Number of calibration images.")
    ] = 32,
    strict: Annotated[
        bool, typer.Option("--strict", help="Fail when a variant agrees with fp32 below 0.98 mean mask IoU.")
    ] = False,
    check: Annotated[
        bool, typer.Option("--check", help="Only check SOURCE (an .onnx file): checker, metadata, a dummy run.")
    ] = False,
) -> None:
    """Export a trained model to ONNX with its metadata, verified against Keras (max abs diff ≤ 1e-4).

    Prints every file it writes.

    Example: skinseg export runs/reference --quantize int8

    Example: skinseg export --check runs/reference/model.onnx
    """
    if check:
        _check(source)
        return
    require_tensorflow(EXPORT_HINT)
    from skinseg.exporters.from_run import export_run

    result = export_run(
        source,
        output=output,
        opset=opset,
        layout=layout.value,
        quantize=[q.value for q in quantize or []],
        calibration=calibration,
        calibration_count=calibration_count,
        strict=strict,
        on_event=lambda e: err.print(f"[dim]{e['message']}[/dim]", highlight=False),
    )
    for w in result.warnings:
        err.print(f"[yellow]warning:[/yellow] {w}", highlight=False)
    out.print(
        f"wrote {result.fp32_path} ({result.size_mb:.1f} MB, opset {result.opset}, {result.layout}); "
        f"max |keras - onnx| = {result.max_abs_diff:.2e} on {result.check_images} image(s)",
        highlight=False,
    )
    if result.quality:
        out.print(result.quality, highlight=False, markup=False)
    for v in result.variants:
        out.print(
            f"wrote {v.path} ({v.size_mb:.1f} MB, {v.speedup:.2f}× fp32 speed on this machine); "
            f"agreement with fp32: mean mask IoU {v.mean_iou:.4f}, max abs diff {v.max_abs_diff:.3f} "
            f"on {v.images} image(s)",
            highlight=False,
        )
        if v.warning:
            err.print(f"[yellow]warning:[/yellow] {v.warning}", highlight=False)


def _check(path: Path) -> None:
    require_modules(
        "onnx", hint="skinseg export --check needs the onnx package: `pip install onnx` (or the train extra)"
    )
    from skinseg.exporters.check import check_model, has_errors

    if path.is_dir():
        raise UsageError(f"{path}: --check takes an .onnx file")
    findings = check_model(path)
    for f in findings:
        (err if f.level == "error" else out).print(str(f), highlight=False, markup=False, soft_wrap=True)
    if has_errors(findings):
        raise typer.Exit(1)
