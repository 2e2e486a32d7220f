"""The self-description a skinseg ONNX model carries.

One JSON document under the ONNX ``metadata_props`` key ``skinseg``. The exporter writes it with
:meth:`ModelMetadata.to_json`; the runtime reads it with :func:`parse_metadata` (``json`` only, never ``eval``).
This module is the single source of truth for the schema, shared by ``exporters`` and ``runtime``.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from skinseg.runtime.defaults import DEFAULT_THRESHOLD, MAX_TILE
from skinseg.runtime.errors import ModelError
from skinseg.runtime.quality import QualityModel, parse_quality

METADATA_KEY = "skinseg"
FORMAT_VERSION = 1
LAYOUTS = ("nhwc", "nchw")
MODES = ("native", "tile", "factor", "long_side", "short_side")
MAX_LONG_SIDE = 100_000.0  # px; also rejects inf and nan
MIN_SIDE = 32.0  # px: a working image smaller than this is no segmentation
MIN_FACTOR = 0.01  # a 100× reduction already turns a 6600 px photo into 66 px
MAX_FACTOR = 8.0
COLOR_ORDERS = ("rgb", "bgr")


@dataclass(frozen=True)
class Scale:
    """How an image is brought to the model's working scale.

    ``mode`` is one of:
    - ``"native"``: the image is used at its own resolution;
    - ``"factor"``: both sides are multiplied by ``value`` (e.g. 0.25);
    - ``"long_side"``: the image is resized so its longer side is ``value`` pixels (aspect kept);
    - ``"short_side"``: the image is resized so its shorter side is ``value`` pixels (aspect kept);
    - ``"tile"``: the whole image is resized to the model's tile size, aspect not kept (how a model trained on
      whole images squashed to the tile, the seed toolkit's way, saw its data).
    """

    mode: str
    value: float | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"scale mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.mode in ("native", "tile"):
            return
        v = self.value
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
            raise ValueError(f"scale {self.mode} needs a positive number, got {v!r}")
        if self.mode == "factor" and not MIN_FACTOR <= v <= MAX_FACTOR:
            raise ValueError(f"a scale factor must be from {MIN_FACTOR:g} to {MAX_FACTOR:g}, got {v:g}")
        if self.mode in ("long_side", "short_side") and not MIN_SIDE <= v <= MAX_LONG_SIDE:
            raise ValueError(
                f"a scale in pixels must be from {MIN_SIDE:g} to {MAX_LONG_SIDE:g} px, got {v:g} (factors go up to 8)"
            )

    @classmethod
    def parse(cls, text: str | float | int) -> Scale:
        """Parse the CLI form: ``native``, ``tile``, a factor such as ``0.25`` (≤ 8), a long side in pixels
        (``1024``), or a short side in pixels (``short:256``)."""
        s = str(text).strip().lower()
        if s in ("native", "tile"):
            return cls(s)
        if s.startswith("short:"):
            try:
                v = float(s[6:])
            except ValueError:
                v = float("nan")
            if not MIN_SIDE <= v <= MAX_LONG_SIDE:
                raise ValueError(
                    f"scale short:N needs a number of pixels from {MIN_SIDE:g} to {MAX_LONG_SIDE:g}, got {text!r}"
                )
            return cls("short_side", v)
        try:
            v = float(s)
        except ValueError:
            raise ValueError(
                "scale must be 'native', 'tile', a factor such as 0.25, a long side in pixels such as 1024, "
                "or a short side such as short:256, "
                f"got {text!r}"
            ) from None
        if not 0 < v <= MAX_LONG_SIDE:
            raise ValueError(f"scale must be positive and at most {MAX_LONG_SIDE:g} px, got {text!r}")
        return cls("factor", v) if v <= MAX_FACTOR else cls("long_side", v)

    def factor_for(self, width: int, height: int, tile: tuple[int, int] | None = None) -> float:
        """The resize factor this scale gives for an image of ``width`` × ``height`` (the larger one for ``tile``)."""
        if self.mode == "native":
            return 1.0
        if self.mode == "factor":
            return float(self.value)
        if self.mode == "tile":
            if tile is None:
                raise ValueError("scale 'tile' needs the tile size")
            return max(tile[1] / width, tile[0] / height)
        if self.mode == "short_side":
            return float(self.value) / min(width, height)
        return float(self.value) / max(width, height)

    def work_size(self, width: int, height: int, tile: tuple[int, int]) -> tuple[int, int]:
        """(w, h) an image of ``width`` × ``height`` is resized to before tiling; ``tile`` is (height, width)."""
        if self.mode == "tile":
            return tile[1], tile[0]
        f = self.factor_for(width, height)
        return max(1, round(width * f)), max(1, round(height * f))

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "value": self.value}

    def __str__(self) -> str:
        if self.mode in ("native", "tile"):
            return self.mode
        if self.mode == "short_side":
            return f"short:{self.value:g}"
        return f"{self.value:g}"


@dataclass(frozen=True)
class ModelMetadata:
    """What the runtime needs to use a model without its training config, and what a user wants to know."""

    tile_size: tuple[int, int]  # (height, width) the model was trained at
    train_scale: Scale
    threshold: float = DEFAULT_THRESHOLD
    input_name: str = "image"
    output_name: str = "mask"
    layout: str = "nhwc"
    color_order: str = "rgb"
    value_range: tuple[float, float] = (0.0, 255.0)
    class_names: tuple[str, ...] = ("lesion",)
    skinseg_version: str = ""
    format_version: int = FORMAT_VERSION
    training_data: dict[str, Any] = field(default_factory=dict)
    validation_metrics: dict[str, float] = field(default_factory=dict)
    export_options: dict[str, Any] = field(default_factory=dict)
    source_model_sha256: str = ""
    # pre-processing the model was trained with, applied by the runtime before tiling (skinseg.runtime.preprocess)
    color_constancy: dict[str, Any] = field(default_factory=lambda: {"method": "none"})
    # inference settings measured best for this model; None leaves the runtime's default (skinseg.runtime.defaults)
    tta: bool | None = None
    keep_largest: bool | None = None
    fill_holes: bool | None = None
    # the per-image quality estimator fitted for this model (skinseg.runtime.quality); None: the generic one
    quality: QualityModel | None = None

    def to_json(self) -> str:
        d = asdict(self)
        d["quality"] = None if self.quality is None else self.quality.to_dict()
        d["train_scale"] = self.train_scale.to_dict()
        d["tile_size"] = list(self.tile_size)
        d["value_range"] = list(self.value_range)
        d["class_names"] = list(self.class_names)
        return json.dumps(d, sort_keys=True)


def parse_metadata(text: str, *, source: str = "model") -> ModelMetadata:
    """Parse and validate the ``skinseg`` metadata JSON; raise :class:`ModelError` naming ``source`` if bad."""
    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        raise ModelError(
            f"{source}: skinseg metadata is not valid JSON ({e.msg} at char {e.pos}); re-export the model"
        ) from None
    if not isinstance(d, dict):
        raise ModelError(f"{source}: skinseg metadata must be a JSON object; re-export the model")
    version = d.get("format_version")
    if version != FORMAT_VERSION:
        raise ModelError(
            f"{source}: skinseg metadata format_version {version!r} is not supported (this skinseg reads "
            f"{FORMAT_VERSION}); upgrade skinseg or re-export the model"
        )
    try:
        tile = d["tile_size"]
        if not (isinstance(tile, list) and len(tile) == 2 and all(_is_int(v) and 1 <= v <= MAX_TILE for v in tile)):
            raise ValueError(f"tile_size must be two integers from 1 to {MAX_TILE}, got {tile!r}")
        scale_d = d["train_scale"]
        if not isinstance(scale_d, dict):
            raise ValueError(f"train_scale must be an object with mode and value, got {scale_d!r}")
        value = scale_d.get("value")
        if value is not None and not _is_number(value):
            raise ValueError(f"train_scale value must be a number, got {value!r}")
        scale = Scale(str(scale_d["mode"]), None if value is None else float(value))
        layout = str(d.get("layout", "nhwc")).lower()
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        threshold = d.get("threshold", DEFAULT_THRESHOLD)
        if not _is_number(threshold) or not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be a number within [0, 1], got {threshold!r}")
        color_order = str(d.get("color_order", "rgb")).lower()
        if color_order not in COLOR_ORDERS:
            raise ValueError(f"color_order must be one of {COLOR_ORDERS}, got {color_order!r}")
        value_range = d.get("value_range", [0.0, 255.0])
        if not (
            isinstance(value_range, list)
            and len(value_range) == 2
            and all(_is_number(v) and math.isfinite(v) and abs(v) <= 1e6 for v in value_range)
            and value_range[1] > value_range[0]
        ):
            raise ValueError(f"value_range must be two finite numbers, low < high, got {value_range!r}")
        return ModelMetadata(
            tile_size=(tile[0], tile[1]),
            train_scale=scale,
            threshold=float(threshold),
            input_name=str(d.get("input_name", "image")),
            output_name=str(d.get("output_name", "mask")),
            layout=layout,
            color_order=color_order,
            value_range=(float(value_range[0]), float(value_range[1])),
            class_names=_class_names(d.get("class_names", ["lesion"])),
            skinseg_version=str(d.get("skinseg_version", "")),
            format_version=FORMAT_VERSION,
            training_data=_object(d, "training_data"),
            validation_metrics=_metrics(_object(d, "validation_metrics")),
            export_options=_object(d, "export_options"),
            source_model_sha256=str(d.get("source_model_sha256", "")),
            color_constancy=_color_constancy(d.get("color_constancy")),
            tta=_optional_bool(d, "tta"),
            keep_largest=_optional_bool(d, "keep_largest"),
            fill_holes=_optional_bool(d, "fill_holes"),
            quality=parse_quality(d.get("quality")),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as e:  # AttributeError: a field of another type
        missing = f"missing key {e}" if isinstance(e, KeyError) else str(e)
        raise ModelError(f"{source}: invalid skinseg metadata ({missing}); re-export the model") from None


def _object(d: dict[str, Any], key: str) -> dict[str, Any]:
    """A field that must be a JSON object (or absent, or null: empty)."""
    value = d.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"{key} must be an object, got {type(value).__name__} {_short(value)}")
    return dict(value)


def _metrics(values: dict[str, Any]) -> dict[str, float]:
    for name, value in values.items():
        if not _is_number(value):
            raise ValueError(f"validation_metrics {name!r} must be a number, got {_short(value)}")
    return {str(k): float(v) for k, v in values.items()}


def _class_names(value: Any) -> tuple[str, ...]:
    if not (isinstance(value, list) and value and all(isinstance(c, str) for c in value)):
        raise ValueError(f"class_names must be a list of names, got {_short(value)}")
    return tuple(value)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _color_constancy(value: Any) -> dict[str, Any]:
    """The ``color_constancy`` record, checked (ValueError names what is wrong)."""
    from skinseg.runtime.defaults import COLOR_CONSTANCY_METHODS

    if value is None:
        return {"method": "none"}
    if not isinstance(value, dict) or value.get("method") not in COLOR_CONSTANCY_METHODS:
        raise ValueError(f"color_constancy must be {{'method': one of {COLOR_CONSTANCY_METHODS}}}, got {value!r}")
    if value["method"] == "none":
        return {"method": "none"}
    p = value.get("p", 6.0)
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 1.0 <= p <= 64.0:
        raise ValueError(f"color_constancy p must be a number from 1 to 64, got {p!r}")
    return {"method": value["method"], "p": float(p)}


def _optional_bool(d: dict[str, Any], key: str) -> bool | None:
    value = d.get(key)
    if value is None or isinstance(value, bool):
        return value
    raise ValueError(f"{key} must be true, false or null, got {value!r}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
