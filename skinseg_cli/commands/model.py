"""`skinseg model info`: what a model is (its metadata, training data, figures, hash, tile, scale and defaults)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from skinseg.app import cli_errors, model_app, out
from skinseg.runtime.names import json_text, shown


def model_info(model: Path | None = None) -> dict[str, Any]:
    """The facts ``skinseg model info`` prints, as plain data (``model`` None: the bundled model)."""
    import hashlib
    from dataclasses import asdict

    from skinseg import __version__
    from skinseg.runtime.card import card_path, read_card
    from skinseg.runtime.errors import ModelError
    from skinseg.runtime.model_cache import default_model_path
    from skinseg.runtime.segmenter import OnnxBackend, Segmenter

    path = model if model is not None else default_model_path()
    if path.suffix.lower() == ".keras":
        raise ModelError(f"{path}: a Keras model; `skinseg export {path.parent}` makes the ONNX file this describes")
    try:
        data = path.read_bytes()
    except IsADirectoryError:
        raise ModelError(f"{path}: is a directory, not an .onnx file") from None
    except FileNotFoundError:
        raise ModelError(f"{path}: file not found") from None
    sha = hashlib.sha256(data).hexdigest()
    backend = OnnxBackend(path, device="cpu", data=data)
    meta = backend.metadata
    info: dict[str, Any] = {
        "model": str(path),
        "bundled": model is None,
        "bytes": len(data),
        "sha256": sha,
        "input": {"name": backend.input_name, "layout": backend.layout, "fixed_tile": list(backend.fixed_tile)},
        "metadata": None,
        "defaults": None,
        "card": None,
        "skinseg": __version__,
    }
    if meta is not None:
        info["metadata"] = {**asdict(meta), "train_scale": meta.train_scale.to_dict()}
        segmenter = Segmenter(backend)  # the settings the runtime uses with no options given
        settings = segmenter.settings()
        info["defaults"] = {k: v for k, v in settings.items() if k not in ("device", "threads", "max_pixels")}
        info["defaults"]["scale"] = str(segmenter.scale)
        if segmenter.quality is not None:  # the estimator behind the quality and review columns
            info["quality"] = {"own": meta.quality is not None, **segmenter.quality.to_dict()}
    card = read_card(path, sha)
    if card is not None:
        info["card"] = {**asdict(card), "file": str(card_path(path))}
    elif card_path(path).is_file():
        info["card_note"] = f"{card_path(path).name} describes another file (its sha256 differs): not shown"
    return info


_LABELS = {
    "mean_jaccard": "mean Jaccard",
    "median_jaccard": "median Jaccard",
    "thresholded_jaccard": "thresholded Jaccard",
    "dice": "Dice",
    "seconds_per_image": "s/image",
}


def _value(value: Any) -> str:
    """``int8 (activations quint8, per_channel True)`` for a nested option such as the quantization's."""
    if isinstance(value, dict):
        rest = ", ".join(f"{k} {v}" for k, v in value.items() if k != "type")
        return f"{value.get('type', '')} ({rest})".strip()
    return str(value)


def _yes(value: Any) -> str:
    return "yes" if value else "no"


def _lines(info: dict[str, Any]) -> list[str]:
    size = info["bytes"] / 1e6
    lines = [
        f"model       {shown(info['model'])}{' (bundled)' if info['bundled'] else ''}, {size:.1f} MB",
        f"sha256      {info['sha256']}",
    ]
    meta = info["metadata"]
    if meta is None:
        lines.append("metadata    none: not exported by skinseg; give --tile and --scale to run it")
        return lines
    export = meta.get("export_options") or {}
    made = ", ".join(f"{k} {_value(v)}" for k, v in export.items()) or "no export options recorded"
    lines.append(f"exported    by skinseg {meta.get('skinseg_version') or '?'} ({made})")
    if meta.get("source_model_sha256"):
        lines.append(f"source      Keras model sha256 {meta['source_model_sha256']}")
    tile = meta["tile_size"]
    lines.append(
        f"input       {meta['input_name']!r}: {meta['layout'].upper()} {meta['color_order'].upper()} "
        f"{meta['value_range'][0]:g}-{meta['value_range'][1]:g}; output {meta['output_name']!r}: lesion probability"
    )
    scale = info["defaults"]["scale"]
    lines.append(f"tile        {tile[0]}×{tile[1]} px; trained at scale {scale}")
    d = info["defaults"]
    lines.append(
        f"defaults    threshold {d['threshold']:g}, keep largest {_yes(d['keep_largest'])}, fill holes "
        f"{_yes(d['fill_holes'])}, flips (TTA) {_yes(d['tta'])}, overlap {d['overlap']:g}, colour constancy "
        f"{(d['color_constancy'] or {}).get('method', 'none')}"
    )
    data = meta.get("training_data") or {}
    if data:
        folders = ", ".join(Path(f).parent.name + "/" + Path(f).name for f in data.get("folders", [])) or "?"
        lines.append(
            f"training    {data.get('train_images', '?')} images ({folders}), {data.get('valid_images', '?')} "
            f"validation images, augmentation {_yes(data.get('augmentation'))}, seed {data.get('seed', '?')}"
        )
    quality = info.get("quality")
    if quality:
        fitted, cv = quality["fitted"], quality["fitted"].get("cross_validated") or {}
        whose = "its own estimator" if quality["own"] else "the generic estimator (the model carries none)"
        figures = ", ".join(f"{k} {cv[k]:.2f}" for k in ("spearman", "recall", "precision") if cv.get(k) is not None)
        lines.append(
            f"quality     {whose}: review below {quality['review_below']:.3f}; fitted on "
            f"{fitted.get('images', '?')} images ({fitted.get('failures', '?')} failures)"
            + (f", cross-validated {figures}" if figures else "")
        )
    metrics = meta.get("validation_metrics") or {}
    if metrics:
        epoch = metrics.get("epoch")
        shown_metrics = ", ".join(f"{k} {v:.3f}" for k, v in metrics.items() if k != "epoch")
        lines.append(f"validation  {shown_metrics}{f' (epoch {epoch:g})' if epoch is not None else ''}")
    card = info["card"]
    if card:
        figures = ", ".join(f"{_LABELS.get(k, k.replace('_', ' '))} {v:g}" for k, v in card["figures"].items())
        lines.append(f"figures     {figures}")
        lines.append(f"            on {card['evaluated_on']} ({card['source']})")
        if card["scale_figures"]:
            lines.append(f"scales      mean Jaccard by --scale ({card['scale_source']}):")
        for f in card["scale_figures"]:
            secs = f", {f['seconds_per_image']:g} s/image" if f.get("seconds_per_image") else ""
            lines.append(f"            {f['scale']}: {f['mean_jaccard']:.4f}{secs}")
    else:
        lines.append(f"figures     {info.get('card_note', 'no model card beside the file (<stem>.card.json)')}")
    return lines


@model_app.command("info")
@cli_errors
def info(
    model: Annotated[
        Path | None, typer.Argument(help="An .onnx model (default: the bundled model).", show_default=False)
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object instead of lines.")] = False,
) -> None:
    """Describe a model: file and SHA-256 (what results.csv and every mask record), how it was exported and
    trained, its tile, scale and the defaults skinseg runs it with, and the figures measured with it.

    Example: skinseg model info runs/reference/model.onnx
    """
    facts = model_info(model)
    if as_json:
        out.print(json_text(facts, indent=2), markup=False, highlight=False, soft_wrap=True)
    else:
        for line in _lines(facts):
            out.print(line, markup=False, highlight=False, soft_wrap=True)
