"""Export a training run: find its model, describe it (metadata), verify it, and make int8/fp16 variants.

This is what ``skinseg export`` calls. The run directory written by ``skinseg train``
(:mod:`skinseg.data.run_folder`) supplies the metadata: the tile size and training scale (from
``config.resolved.ini``), the data summary (``split.json``), the validation metrics of the best epoch
(``history.csv``), and validation images for the parity check.
"""

from __future__ import annotations

import dataclasses
import gc
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from skinseg.data.run_folder import BEST_MODEL, EXPORTED_MODEL, RunFolder, Split
from skinseg.runtime.defaults import DEFAULT_THRESHOLD
from skinseg.runtime.errors import UsageError, param, render
from skinseg.runtime.imageio import file_sha256
from skinseg.runtime.metadata import ModelMetadata, Scale
from skinseg.runtime.preprocess import describe as describe_color_constancy

AGREEMENT_WARN = 0.98  # mean mask IoU of a quantized variant against fp32 below this is a warning (error with strict)


@dataclass
class VariantReport:
    """A quantized variant and how it compares with the fp32 model on this machine."""

    kind: str
    path: Path
    size_mb: float
    speedup: float
    mean_iou: float
    max_abs_diff: float
    images: int
    warning: str = ""


@dataclass
class RunExport:
    fp32_path: Path
    max_abs_diff: float
    check_images: int
    size_mb: float
    layout: str
    opset: int
    metadata: ModelMetadata
    variants: list[VariantReport] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    quality: str = ""  # how the model's quality estimator was fitted, or why it has none


def locate_model(source: Path) -> tuple[Path, Path | None]:
    """(the .keras file, its run directory or None) for a run directory or a model path."""
    if source.is_dir():
        model = RunFolder(source).best_model
        if not model.is_file():
            raise UsageError(f"{source}: no {BEST_MODEL} in this run directory; train first or pass the .keras file")
        return model, source
    if not source.exists():
        raise UsageError(f"{source}: no such run directory or model file")
    if source.suffix.lower() != ".keras":
        raise UsageError(f"{source}: expected a run directory or a .keras model (got {source.suffix or 'no'} suffix)")
    run = RunFolder.of_model(source)
    return source, run.path if run else None


def run_config(run_dir: Path | None):
    """The run's resolved config, or None without a run directory."""
    if run_dir is None:
        return None
    from skinseg.data.config import load_config

    return load_config(RunFolder(run_dir).config_resolved)


def whole_image_scale(tile: tuple[int, int]) -> Scale:
    """The inference scale for a model trained on whole images resized to ``tile`` (the seed's way).

    Such a model saw each image squashed to the tile. Measured on the held-out split (docs/strategies.md), keeping
    the aspect and bringing the short side to the tile's (tiling the long side) segments better than squashing
    the image back (mean Jaccard 0.859 against 0.849), so that is what the metadata asks for; ``--scale tile``
    reproduces the squash.
    """
    return Scale("short_side", float(min(tile)))


def build_metadata(model: Any, run_dir: Path | None, *, threshold: float = DEFAULT_THRESHOLD) -> ModelMetadata:
    """Metadata for the exported file from the run directory (or, without one, from the model's input shape)."""
    from skinseg import __version__

    cfg = run_config(run_dir)
    recommended: dict[str, Any] = {}
    if cfg is not None:
        tile = (cfg.model.image_height, cfg.model.image_width)
        if cfg.infer.scale is not None:
            scale = Scale.parse(cfg.infer.scale)
        elif cfg.train.train_scale is None:
            scale = whole_image_scale(tile)
        else:
            scale = Scale.parse(cfg.train.train_scale)
        recommended = {
            "color_constancy": describe_color_constancy(cfg.model.color_constancy, cfg.model.color_constancy_p),
            "tta": cfg.infer.tta,
            "keep_largest": cfg.infer.keep_largest,
            "fill_holes": cfg.infer.fill_holes,
        }
        run = RunFolder(run_dir)
        split = run.read_split() or Split()
        folders = sorted({str(Path(p).parent) for p in split.train_files})
        data = {
            "train_images": len(split.train),
            "valid_images": len(split.valid),
            "folders": folders,
            "seed": cfg.train.seed,
            "augmentation": cfg.generator.augmentation,
        }
        metrics = run.best_epoch_metrics()
    else:
        shape = model.inputs[0].shape
        if shape[1] is None or shape[2] is None:
            raise UsageError("the model has no fixed input size and no run directory: export it from its run directory")
        tile = (int(shape[1]), int(shape[2]))
        scale, data, metrics = whole_image_scale(tile), {}, {}
    return ModelMetadata(
        tile_size=tile,
        train_scale=scale,
        threshold=threshold,
        skinseg_version=__version__,
        training_data=data,
        validation_metrics=metrics,
        **recommended,
    )


def load_tiles(
    paths: list[Path], tile: tuple[int, int], limit: int, color_constancy: dict[str, Any] | None = None
) -> np.ndarray:
    """Up to ``limit`` images resized whole to ``tile`` (h, w), pre-processed as the model's metadata says
    (``color_constancy``): (N, h, w, 3) float32 RGB 0–255, what the model sees."""
    import cv2

    from skinseg.runtime.errors import ImageError
    from skinseg.runtime.imageio import read_image
    from skinseg.runtime.preprocess import apply_color_constancy

    out = []
    for p in paths:
        if len(out) >= limit:
            break
        try:
            image = read_image(p)
        except ImageError:
            continue
        image = cv2.resize(image, (tile[1], tile[0]), interpolation=cv2.INTER_AREA)
        out.append(apply_color_constancy(image, **(color_constancy or {"method": "none"})))
    return np.stack(out).astype(np.float32) if out else np.zeros((0, *tile, 3), np.float32)


def check_writable(path: Path) -> None:
    """UsageError now, before minutes of conversion, when ``path`` cannot be written."""
    folder = path.parent
    if path.suffix.lower() != ".onnx":
        raise UsageError(f"{param('output', path)}: the file name must end in .onnx")
    if path.is_dir():
        raise UsageError(f"{param('output', path)}: is a folder; give the .onnx file to write")
    try:
        import secrets

        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".skinseg-probe-{secrets.token_hex(4)}"
        os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        probe.unlink()
    except OSError as e:
        raise UsageError(
            f"{param('output', path)}: cannot write there ({e.strerror or e}); choose a writable folder"
        ) from None


def run_images(run_dir: Path | None, key: str) -> list[Path]:
    """Image files of the run's split ``key`` (``valid_files`` or ``train_files``) that still exist."""
    return RunFolder(run_dir).split_files(key) if run_dir is not None else []


def folder_images(folder: Path) -> list[Path]:
    from skinseg.data.pairing import list_images

    if not folder.is_dir():
        raise UsageError(f"{folder}: {param('calibration')} must be a folder of images")
    return list_images(folder)


def export_run(
    source: Path,
    *,
    output: Path | None = None,
    opset: int = 17,
    layout: str = "nhwc",
    quantize: list[str] | None = None,
    calibration: Path | None = None,
    calibration_count: int = 32,
    check_count: int = 8,
    strict: bool = False,
    fit_quality: bool = True,
    on_event: Callable[[dict[str, Any]], None] | None = None,
) -> RunExport:
    """Export ``source`` (run directory or .keras) to fp32 ONNX, verify parity, then make the requested variants.

    With ``fit_quality``, the per-image quality estimator is fitted on the run's validation images and stored in the
    fp32 file before the variants are made (:mod:`skinseg.exporters.quality_fit`; ``RunExport.quality`` says how).
    Variants are compared with fp32 on the validation images (mean mask IoU at the recommended threshold);
    agreement below 0.98 is a warning, and an error with ``strict`` (the variant file is then removed).
    A failed export leaves no file (``strict`` keeps the fp32 model of a refused variant): every file is made under a
    temporary name and renamed once all are made.
    Options that cannot work (int8 without calibration images) are refused before the conversion.
    """
    emit = on_event or (lambda e: None)
    model_path, run_dir = locate_model(source)
    variant_output = None
    if output is not None and len(quantize or []) == 1:
        # A user asking for `--output q.onnx --quantize int8` wants the int8 model at q.onnx.
        variant_output, output = output, output.with_name(f"{output.stem}.fp32{output.suffix}")
    output = output or (run_dir or model_path.parent) / EXPORTED_MODEL
    for target in (output, variant_output):
        if target is not None:
            check_writable(target)
    calib_paths = _check_variants(quantize or [], calibration, run_dir)  # before minutes of conversion
    staged: list[tuple[Path, Path]] = []  # (temporary, final): nothing gets its final name before all is done
    try:
        result = _export(
            model_path, run_dir, output, variant_output, staged, calib_paths, emit,
            opset=opset, layout=layout, quantize=quantize or [], calibration_count=calibration_count,
            check_count=check_count, strict=strict, fit_quality=fit_quality,
        )  # fmt: skip
        for temporary, final in staged:
            os.replace(temporary, final)
    except BaseException:  # a failed export leaves no file, and an earlier export's files as they were
        for temporary, _ in staged:
            temporary.unlink(missing_ok=True)
        raise
    return result


def _check_variants(quantize: list[str], calibration: Path | None, run_dir: Path | None) -> list[Path]:
    """UsageError for a variant that cannot be made; the int8 calibration images (none without int8)."""
    for kind in quantize:
        if kind not in ("int8", "fp16"):
            raise UsageError(f"{param('quantize', kind)}: choose int8 or fp16")
    if "int8" not in quantize:
        return []
    paths = folder_images(calibration) if calibration else run_images(run_dir, "train_files")
    if not paths:
        where = f"{calibration} holds no images" if calibration else "no training images of a run to calibrate on"
        raise UsageError(
            f"int8 needs calibration images ({where}): pass {param('calibration', 'DIR')} (a folder of typical images)"
        )
    return paths


def _staged(final: Path, staged: list[tuple[Path, Path]]) -> Path:
    """A temporary name next to ``final`` that :func:`export_run` renames to it once every file is made. The
    temporary files a killed export left for ``final`` (and theirs) are removed first."""
    from skinseg.runtime import atomic

    def ours(name: str) -> bool:  # a temporary file for final, or for one of final's temporary files
        return name == final.name or atomic.temp_target(name) == final.name

    atomic.remove_stale_temps(final.parent, target=ours)
    temporary = final.with_name(atomic.temp_name(final.name))
    staged.append((temporary, final))
    return temporary


def _export(
    model_path: Path,
    run_dir: Path | None,
    output: Path,
    variant_output: Path | None,
    staged: list[tuple[Path, Path]],
    calib_paths: list[Path],
    emit: Callable[[dict[str, Any]], None],
    *,
    opset: int,
    layout: str,
    quantize: list[str],
    calibration_count: int,
    check_count: int,
    strict: bool,
    fit_quality: bool,
) -> RunExport:
    from skinseg.exporters.keras_to_onnx import export_onnx, load_keras_model
    from skinseg.exporters.quantize import compare_models, convert_fp16, quantize_int8

    emit({"event": "stage", "message": f"loading {model_path}"})
    model, _ = load_keras_model(model_path)
    meta = build_metadata(model, run_dir)
    valid = load_tiles(run_images(run_dir, "valid_files"), meta.tile_size, check_count, meta.color_constancy)
    emit(
        {
            "event": "stage",
            "message": f"converting (opset {opset}, {layout}); parity on {len(valid) or 'synthetic'} images",
        }
    )
    report = export_onnx(
        model,
        _staged(output, staged),
        metadata=meta,
        opset=opset,
        layout=layout,
        check_inputs=valid if len(valid) else None,
        model_sha256=file_sha256(model_path),
    )
    del model  # the variants work from the ONNX file: a large network's Keras weights are not needed any more
    gc.collect()
    result = RunExport(
        fp32_path=output,
        max_abs_diff=report.max_abs_diff,
        check_images=report.check_images,
        size_mb=report.size_bytes / 1e6,
        layout=layout,
        opset=report.opset,
        metadata=meta,
        warnings=list(report.warnings),
    )
    if fit_quality:  # before the variants: they copy the fp32 file's metadata
        from skinseg.exporters.quality_fit import fit_run_quality

        emit({"event": "stage", "message": "fitting the per-image quality estimator on the validation images"})
        fitted = fit_run_quality(report.path, run_dir)
        result.quality = fitted.message
        if fitted.model is not None:
            result.metadata = meta = dataclasses.replace(meta, quality=fitted.model)
    compare_on = valid if len(valid) else _synthetic(meta.tile_size)
    for kind in quantize or []:
        path = variant_output or output.with_name(f"{output.stem}.{kind}{output.suffix}")
        made = _staged(path, staged)
        emit({"event": "stage", "message": f"making the {kind} variant"})
        if kind == "int8":
            calib = load_tiles(calib_paths, meta.tile_size, calibration_count, meta.color_constancy)
            if not len(calib):
                raise UsageError(
                    f"int8 needs calibration images: none of them could be read; pass {param('calibration', 'DIR')}"
                )
            quantize_int8(report.path, made, list(calib))
        else:
            convert_fp16(report.path, made)
        cmp = compare_models(report.path, made, compare_on, threshold=meta.threshold)
        variant = VariantReport(
            kind=kind,
            path=path,
            size_mb=cmp["cand_size_mb"],
            speedup=cmp["speedup"],
            mean_iou=cmp["mean_iou"],
            max_abs_diff=cmp["max_abs_diff"],
            images=len(compare_on),
        )
        if variant.mean_iou < AGREEMENT_WARN:
            variant.warning = render(
                f"{path.name}: mean mask IoU against fp32 is {variant.mean_iou:.3f} (< {AGREEMENT_WARN}); "
                + (
                    f"calibrate on more typical images ({param('calibration')}) or use fp32"
                    if kind == "int8"
                    else "use fp32 (this network's values do not fit float16)"
                )
            )
            if strict:  # the fp32 model is good: it is kept, the variant is not
                fp32 = staged.pop(0)
                os.replace(*fp32)
                raise UsageError(
                    variant.warning + f" ({param('strict')}: the variant was not kept; the fp32 model is {output})"
                )
        result.variants.append(variant)
    return result


def _synthetic(tile: tuple[int, int], count: int = 4) -> np.ndarray:
    """Dermoscopy-like stand-ins when the run's validation images are not available."""
    from skinseg.data.synth import synthesize

    rng = np.random.default_rng(0)
    return np.stack([synthesize(tile[1], tile[0], rng)[0] for _ in range(count)]).astype(np.float32)
