"""Rules a type cannot express: value ranges and names the trainer knows; keys that change nothing; folders a command
needs."""

from __future__ import annotations

import difflib
import math
from pathlib import Path

from skinseg.data.config.ini import raise_all
from skinseg.data.config.schema import BLOCKS, ENCODERS, IGNORED_KEYS, IGNORED_WHY, LR_SCHEDULES, Config
from skinseg.runtime.defaults import COLOR_CONSTANCY_METHODS
from skinseg.runtime.errors import ConfigError


def ignored_keys_warning(cfg: Config, source: str) -> str | None:
    """One line naming every key the file sets that skinseg ignores, or None."""
    found = [
        f"[{section}] {', '.join(k for k in keys if k in cfg.present.get(section, set()))}"
        for section, keys in IGNORED_KEYS.items()
        if any(k in cfg.present.get(section, set()) for k in keys)
    ]
    if not found:
        return None
    return f"{source}: these keys have no effect in skinseg and are ignored: {'; '.join(found)} ({IGNORED_WHY})"


def check_ranges(cfg: Config, source: str, errors: list[str] | None = None) -> None:
    """Value rules that a type cannot express. Problems are appended to ``errors``; without it, raised at once."""
    found: list[str] = [] if errors is None else errors
    epochs = max(cfg.train.epochs, 1)  # rules "within [0, epochs)": a bad epochs is its own error, said once
    rules: list[tuple[str, str, bool, str]] = [
        ("model", "image_width", cfg.model.image_width > 0, "a positive number of pixels"),
        ("model", "image_height", cfg.model.image_height > 0, "a positive number of pixels"),
        ("model", "image_channels", cfg.model.image_channels == 3, "3 (RGB)"),
        ("model", "num_classes", cfg.model.num_classes == 1, "1 (binary lesion mask)"),
        ("model", "base_filters", cfg.model.base_filters > 0, "a positive integer"),
        ("model", "num_layers", 1 <= cfg.model.num_layers <= 10, "between 1 and 10"),
        ("model", "dropout_rate", 0 <= cfg.model.dropout_rate < 1, "within [0, 1)"),
        ("model", "learning_rate", 0 < cfg.model.learning_rate < math.inf, "positive and finite"),
        ("model", "clipvalue", cfg.model.clipvalue is None or 0 < cfg.model.clipvalue < math.inf, "positive, or None"),
        ("model", "base_kernels", all(k > 0 for k in cfg.model.base_kernels), "positive sizes, e.g. (3, 3)"),
        ("model", "dilation", all(d > 0 for d in cfg.model.dilation), "positive rates, e.g. (1, 1) or (2, 2)"),
        ("train", "epochs", cfg.train.epochs > 0, "a positive integer"),
        ("train", "batch_size", cfg.train.batch_size > 0, "a positive integer"),
        ("train", "patience", cfg.train.patience > 0, "a positive integer"),
        ("train", "valid_ratio", 0 < cfg.train.valid_ratio < 1, "within (0, 1)"),
        ("train", "reducer_factor", 0 < cfg.train.reducer_factor < 1, "within (0, 1)"),
        ("mask", "threshold", 0 <= cfg.mask.threshold <= 255, "within [0, 255]"),
        ("model", "block", cfg.model.block in BLOCKS, " or ".join(f'"{b}"' for b in BLOCKS)),
        ("model", "encoder", cfg.model.encoder in ENCODERS, " or ".join(f'"{e}"' for e in ENCODERS)),
        (
            "train",
            "freeze_encoder_epochs",
            0 <= cfg.train.freeze_encoder_epochs < epochs,
            "within [0, epochs)",
        ),
        ("train", "validation_freq", cfg.train.validation_freq >= 1, "a positive integer"),
        ("train", "mixed_precision", cfg.train.mixed_precision in (True, False, "auto"), 'True, False or "auto"'),
        (
            "model",
            "color_constancy",
            cfg.model.color_constancy in COLOR_CONSTANCY_METHODS,
            " or ".join(f'"{m}"' for m in COLOR_CONSTANCY_METHODS),
        ),
        ("model", "color_constancy_p", 1 <= cfg.model.color_constancy_p <= 64, "within [1, 64] (6 is usual)"),
        ("train", "lr_schedule", cfg.train.lr_schedule in LR_SCHEDULES, " or ".join(f'"{s}"' for s in LR_SCHEDULES)),
        ("train", "warmup_epochs", 0 <= cfg.train.warmup_epochs < epochs, "within [0, epochs)"),
    ]
    for name in (
        "vflip",
        "hflip",
        "rotation",
        "shrink",
        "shear",
        "transformer",
        "deformation",
        "distortion",
        "barrdistortion",
        "pincdistortion",
        "brightening",
        "sharpening",
        "gamma",
        "hue_saturation",
        "blur",
        "noise",
        "hair",
        "ink",
        "ruler",
        "vignette",
        "white_balance",
    ):
        v = getattr(cfg.augmentor, name)
        ok = v is None or isinstance(v, bool) or 0.0 <= v <= 1.0
        rules.append(("augmentor", name, ok, "True, False, or a probability within [0, 1]"))
    for section, key, ok, rule in rules:
        if not ok:
            where = located(cfg, source, section, key)
            found.append(f"{where}: [{section}] {key} = {getattr(getattr(cfg, section), key)!r} must be {rule}")
    _check_names(cfg, source, found)
    if errors is None:
        raise_all(found)


def located(cfg: Config, source: str, section: str, key: str) -> str:
    line = cfg.lines.get((section, key))
    return f"{source}:{line}" if line else source


# Names the trainer accepts, checked when the file is read (not minutes later in `train`). The Keras registries in
# skinseg.training (losses, metrics, activations) are tested to match these lists.
MODEL_NAMES = ("TensorflowUNet",)
OPTIMIZER_NAMES = ("Adam", "AdamW")
ACTIVATION_NAMES = ("relu", "elu", "gelu", "mish")
LOSS_NAMES = (
    "bce",
    "dice",
    "iou",
    "bce_dice",
    "bce_iou",
    "jaccard",
    "lovasz",
    "bce_jaccard",
    "bce_lovasz",
    "tversky",
    "bce_tversky",
    "binary_crossentropy",
    "bce_loss",
    "dice_loss",
    "iou_loss",
    "jacard_loss",
    "jaccard_loss",
    "jaccard_image",
    "lovasz_loss",
    "bce_dice_loss",
    "bce_iou_loss",
    "bce_jaccard_loss",
    "bce_lovasz_loss",
    "tversky_loss",
    "bce_tversky_loss",
)
METRIC_NAMES = (
    "binary_accuracy",
    "dice_coef",
    "iou_coef",
    "sensitivity",
    "specificity",
    "dice",
    "iou",
    "jacard_similarity",
    "jaccard_similarity",
)


def _check_names(cfg: Config, source: str, errors: list[str]) -> None:
    """Unknown model, optimizer, activation, loss or metric names: an error naming the file, line and a fix."""
    m = cfg.model
    checks = [
        ("model", m.model, MODEL_NAMES),
        ("optimizer", m.optimizer, OPTIMIZER_NAMES),
        ("activation", m.activation, ACTIVATION_NAMES),
        ("loss", m.loss, LOSS_NAMES),
    ] + [("metrics", name, METRIC_NAMES) for name in m.metrics]
    for key, value, valid in checks:
        if str(value).strip().lower() not in {v.lower() for v in valid}:
            close = difflib.get_close_matches(str(value).lower(), [v.lower() for v in valid], n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            shown = repr(value) if len(str(value)) <= 60 else repr(str(value)[:57] + "...")
            canonical = [v for v in valid if "_loss" not in v and v != "binary_crossentropy"][:12]
            errors.append(
                f"{located(cfg, source, 'model', key)}: [model] {key} {shown} is not one skinseg knows; "
                f"{hint}choose from: {', '.join(canonical)}"
            )


def require_dir(path: Path | None, what: str, fix: str) -> Path:
    """Check a folder the command needs; raise ConfigError naming it and how to fix it."""
    if path is None:
        raise ConfigError(f"{what} is not set; {fix}")
    if not path.is_dir():
        raise ConfigError(f"{what} {path} does not exist or is not a folder; {fix}")
    return path
