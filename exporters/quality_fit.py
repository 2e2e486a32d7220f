"""Give an exported model its own quality estimator: fit it on the run's validation images and store it in the file.

``skinseg export`` calls :func:`fit_run_quality` right after the fp32 file is written (before the int8/fp16
variants, which copy its metadata): the run's validation images (``split.json``) are paired with their masks
from the folders the run's config names, segmented by the exported file exactly as ``skinseg infer`` would,
and :func:`skinseg.data.quality_fit.fit` fits the estimator; :func:`embed_quality` writes it into the file's
``skinseg`` metadata (``ModelMetadata.quality``). Without validation masks, or with too few failures among them
to place a review threshold, the file carries none and the runtime uses the generic estimator; the caller is
told why.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from skinseg.runtime.errors import SkinsegError
from skinseg.runtime.quality import QualityModel

__all__ = ["QualityReport", "embed_quality", "fit_run_quality", "run_validation_pairs"]


@dataclass
class QualityReport:
    """What :func:`fit_run_quality` did: the fitted estimator (None when it fitted none) and a sentence on it."""

    model: QualityModel | None
    message: str


def embed_quality(path: str | os.PathLike[str], quality: QualityModel | None) -> None:
    """Replace the ``quality`` entry of the ONNX file's ``skinseg`` metadata (atomically); ModelError when the file
    has no skinseg metadata."""
    from skinseg.exporters import graph
    from skinseg.exporters.keras_to_onnx import atomic_output, save_model
    from skinseg.exporters.quantize import load_onnx, read_metadata
    from skinseg.runtime.metadata import METADATA_KEY

    path = Path(path)
    proto = load_onnx(path)
    meta = read_metadata(proto, str(path))
    graph.set_metadata(proto, METADATA_KEY, dataclasses.replace(meta, quality=quality).to_json())
    with atomic_output(path) as tmp:
        save_model(proto, tmp)


def run_validation_pairs(run_dir: Path | None) -> list[Any]:
    """The run's validation images (``split.json``) paired with their masks, found in the image/mask folders its
    config names (``[train]`` and ``[eval]`` folders, or ``data_root``); images without a mask are left out."""
    from skinseg.data.pairing import pair_folders
    from skinseg.exporters.from_run import run_config, run_images

    images = run_images(run_dir, "valid_files")
    cfg = run_config(run_dir) if images else None
    if cfg is None:
        return []
    folders: list[tuple[Path, Path]] = []
    for section in (cfg.train, cfg.eval):
        image_dirs, mask_dirs = _as_list(section.image_datapath), _as_list(section.mask_datapath)
        folders += list(zip(image_dirs, mask_dirs, strict=False))
    if getattr(cfg.train, "data_root", None) is not None:
        root = Path(cfg.train.data_root)
        folders += [
            (root / "valid" / "images", root / "valid" / "masks"),
            (root / "train" / "images", root / "train" / "masks"),
        ]
    wanted = {os.path.realpath(p) for p in images}
    pairs: dict[str, Any] = {}
    for image_dir, mask_dir in folders:
        if not Path(image_dir).is_dir() or not Path(mask_dir).is_dir():
            continue
        for pair in pair_folders(Path(image_dir), Path(mask_dir)).pairs:
            key = os.path.realpath(pair.image)
            if key in wanted:
                pairs.setdefault(key, pair)
    return [pairs[k] for k in sorted(pairs)]


def _as_list(value: Any) -> list[Path]:
    if value is None:
        return []
    return [Path(v) for v in value] if isinstance(value, (list, tuple)) else [Path(value)]


def fit_run_quality(
    onnx_path: Path,
    run_dir: Path | None,
    *,
    on_progress: Callable[[int, int], None] | None = None,
) -> QualityReport:
    """Fit the exported model's quality estimator on its run's validation images and embed it in ``onnx_path``."""
    from skinseg.data.quality_fit import collect, fit
    from skinseg.runtime.segmenter import Segmenter

    pairs = run_validation_pairs(run_dir)
    if not pairs:
        return QualityReport(
            None, "no quality estimator fitted: the run's validation images and masks were not found (the model "
            "uses the generic one)"
        )  # fmt: skip
    folders = sorted({str(Path(p.image).parent) for p in pairs})
    try:
        samples = collect(Segmenter(onnx_path, device="cpu"), pairs, source="validation", on_progress=on_progress)
        result = fit(samples, data=folders)
        embed_quality(onnx_path, result.model)
    except SkinsegError as e:  # the export itself succeeded: say why the model carries no estimator of its own
        return QualityReport(None, f"no quality estimator fitted: {e} (the model uses the generic one)")
    return QualityReport(result.model, f"quality estimator fitted on the validation images: {result.summary()}")
