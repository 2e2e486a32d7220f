"""A model's card: the figures measured with one model file, kept next to it as ``<model stem>.card.json``.

The ONNX metadata says how a model was made and how to run it; what it scored is measured afterwards (MODEL_CARD.md,
docs/strategies.md), so it lives in a small JSON file beside the model that names the file's SHA-256: a card is
used only with the very file it describes. ``skinseg model info`` shows it, and a ``--scale`` far from the model's
own names the loss measured there (:meth:`skinseg.runtime.segmenter.Segmenter.scale_warning`).

::

    {"model_sha256": "…", "evaluated_on": "isic-raw: …", "source": "MODEL_CARD.md",
     "figures": {"mean_jaccard": 0.786, …},
     "scale_figures": [{"scale": "tile", "mean_jaccard": 0.784, "seconds_per_image": 0.06}, …]}
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["CARD_SUFFIX", "ModelCard", "ScaleFigure", "card_path", "read_card"]

CARD_SUFFIX = ".card.json"


@dataclass(frozen=True)
class ScaleFigure:
    """The model's mean Jaccard (and time) when run at ``scale`` (a ``--scale`` value)."""

    scale: str
    mean_jaccard: float
    seconds_per_image: float | None = None


@dataclass(frozen=True)
class ModelCard:
    model_sha256: str
    evaluated_on: str = ""
    source: str = ""
    figures: dict[str, float] = field(default_factory=dict)
    scale_figures: tuple[ScaleFigure, ...] = ()
    scale_source: str = ""

    def nearest_scale(self, ratio_of: Any, ratio: float) -> tuple[ScaleFigure, float] | None:
        """The measured scale whose ratio to the model's own (``ratio_of(scale)``) is nearest ``ratio``, with that
        ratio; None without scale figures."""
        options = []
        for figure in self.scale_figures:
            try:
                r = float(ratio_of(figure.scale))
            except (ValueError, TypeError, ZeroDivisionError):
                continue
            if r > 0:
                options.append((abs(math.log(r) - math.log(ratio)), figure, r))
        if not options:
            return None
        _, figure, r = min(options, key=lambda o: o[0])
        return figure, r


def card_path(model_path: str | Path) -> Path:
    """``skinseg_default.onnx`` → ``skinseg_default.card.json`` (``x.int8.onnx`` → ``x.int8.card.json``)."""
    path = Path(model_path)
    return path.with_name(path.stem + CARD_SUFFIX)


def read_card(model_path: str | Path, sha256: str) -> ModelCard | None:
    """The card beside ``model_path`` when it describes the file of this ``sha256``; None otherwise (no card, an
    unreadable one, or one of another file: figures are never shown for a model they were not measured with)."""
    try:
        data = json.loads(card_path(model_path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("model_sha256") != sha256:
        return None
    try:
        figures = {str(k): float(v) for k, v in (data.get("figures") or {}).items()}
        scales = tuple(
            ScaleFigure(
                str(f["scale"]),
                float(f["mean_jaccard"]),
                None if f.get("seconds_per_image") is None else float(f["seconds_per_image"]),
            )
            for f in data.get("scale_figures") or []
        )
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
    return ModelCard(
        model_sha256=sha256,
        evaluated_on=str(data.get("evaluated_on", "")),
        source=str(data.get("source", "")),
        figures=figures,
        scale_figures=scales,
        scale_source=str(data.get("scale_source", "")),
    )
