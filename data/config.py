"""Load, validate and resolve ``train_eval_infer.config`` files.

The format is the INI of the Tensorflow-Image-Segmentation-API project. Differences from that toolkit:

- values are parsed with :func:`ast.literal_eval` (numbers, strings, booleans, tuples, lists, None), never ``eval``;
- every section and key is checked against a typed schema (the dataclasses below); an unknown key, or a value of
  the wrong type, is a :class:`ConfigError` naming the file, line, key and a close valid spelling;
- the seed's misspelling ``alpah`` is read as ``alpha`` with a warning;
- relative paths resolve against the config file's folder (checked only by the command that needs them);
- CLI options override file values (:func:`apply_overrides`).
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from skinseg.runtime.defaults import COLOR_CONSTANCY_METHODS
from skinseg.runtime.errors import ConfigError

BLOCKS = ("standard", "separable")
ENCODERS = ("none", "efficientnet_lite0")  # skinseg.training.encoders
LR_SCHEDULES = ("plateau", "cosine")
Probability = Union[bool, float]  # noqa: UP007  an augmentation op: on/off, or its probability per sample


@dataclass
class ModelSection:
    """[model]: the UNet and its optimizer."""

    model: str = "TensorflowUNet"
    generator: bool = True
    image_width: int = 256
    image_height: int = 256
    image_channels: int = 3
    num_classes: int = 1
    base_filters: int = 16
    base_kernels: tuple[int, int] = (3, 3)
    num_layers: int = 6
    dropout_rate: float = 0.05
    learning_rate: float = 1e-3
    clipvalue: float | None = 0.5
    dilation: tuple[int, int] = (1, 1)
    loss: str = "bce_dice_loss"
    metrics: list[str] = field(default_factory=lambda: ["binary_accuracy"])
    show_summary: bool = False
    normalization: bool = False
    activation: str = "relu"
    optimizer: str = "Adam"
    dropout_seed_fixing: bool = False
    block: str = "standard"  # "standard" (two 3×3 convolutions a level) or "separable" (depthwise-separable)
    color_constancy: str = "none"  # "none" or "shades_of_gray": in training and, via the metadata, at inference
    color_constancy_p: float = 6.0  # the Minkowski norm of Shades of Gray
    encoder: str = "none"  # "none" (the seed UNet) or "efficientnet_lite0" (a UNet on that ImageNet encoder)
    encoder_weights: Path | None = None  # the encoder's weights (.npz); unset: the bundled ImageNet weights


@dataclass
class TrainSection:
    """[train]: data, schedule and run directory."""

    epochs: int = 50
    batch_size: int = 8
    steps_per_epoch: int | None = None
    validation_steps: int | None = None
    patience: int = 10
    metrics: list[str] = field(default_factory=lambda: ["binary_accuracy", "val_binary_accuracy"])
    model_dir: Path = Path("./models")
    eval_dir: Path | None = None
    image_datapath: list[Path] | None = None  # one folder, or a list of folders paired with mask_datapath
    mask_datapath: list[Path] | None = None
    data_root: Path | None = None
    create_backup: bool = False
    learning_rate_reducer: bool = True
    reducer_patience: int = 5
    reducer_factor: float = 0.5
    save_weights_only: bool = False
    dataset_splitter: bool = False
    valid_ratio: float = 0.2
    seed: int = 137
    seedreset_callback: bool = False
    show_history: bool = False
    train_scale: float | None = None
    exclude_stems_file: Path | None = None
    lr_schedule: str = "plateau"  # "plateau" (halve on a validation plateau) or "cosine" (decay to 0 over epochs)
    warmup_epochs: float = 0.0  # cosine: linear warm-up from 0 over this many epochs
    # bfloat16 compute with float32 weights: True, False, or "auto" (where the CPU computes bfloat16 natively, AVX-512
    # BF16 or AMX, or on a GPU; emulated bfloat16 on other CPUs is slower than float32)
    mixed_precision: bool | str = False
    init_weights: Path | None = None  # start from a trained .keras model (same architecture)
    freeze_encoder_epochs: float = 0.0  # a pretrained encoder stays frozen (decoder only) for this many epochs
    validation_freq: int = 1  # validate every N epochs (and always after the last); best model chosen among those


@dataclass
class DataPathsSection:
    """[eval] and [test]: an images/masks pair of folders."""

    image_datapath: list[Path] | None = None
    mask_datapath: list[Path] | None = None
    output_dir: Path | None = None


@dataclass
class InferSection:
    """[infer]: how the exported model segments by default (recorded in its metadata), and the seed's folders."""

    images_dir: Path | None = None
    output_dir: Path | None = None
    merged_dir: Path | None = None
    sharpening: bool = False
    mask_colorize: bool = False
    scale: str | None = None  # the model's default --scale (None: short side at the training size)
    tta: bool | None = None  # the model's default --tta
    keep_largest: bool | None = None  # the model's default --keep-largest
    fill_holes: bool | None = None  # the model's default --fill-holes


@dataclass
class TiledInferSection:
    """[tiledinfer]: the seed's tiled inference folders and overlap (pixels)."""

    overlapping: int = 0
    images_dir: Path | None = None
    output_dir: Path | None = None
    merged_dir: Path | None = None
    split_size: int | None = None
    bitwise_blending: bool = False
    sharpening: bool = False
    mask_colorize: bool = False


@dataclass
class SegmentationSection:
    """[segmentation]: colours of the seed's colorized masks."""

    colorize: bool = False
    black: str = "black"
    white: str = "green"
    blursize: tuple[int, int] | None = None


@dataclass
class MaskSection:
    """[mask]: how ground-truth masks are binarized."""

    blur: bool = False
    blur_size: tuple[int, int] = (3, 3)
    binarize: bool = True
    threshold: int = 128


@dataclass
class GeneratorSection:
    """[generator]: online augmentation switch."""

    debug: bool = False
    augmentation: bool = True
    verbose: bool = False


@dataclass
class AugmentorSection:
    """[augmentor]: each op is True/False or its probability per sample (True means 0.5)."""

    vflip: Probability = True
    hflip: Probability = True
    rotation: Probability = True
    angles: list[float] = field(default_factory=lambda: [0, 90, 180, 270])
    shrinks: list[float] = field(default_factory=lambda: [0.8])
    shears: list[float] = field(default_factory=lambda: [0.2])
    shrink: Probability | None = None
    shear: Probability | None = None
    transformer: Probability = False
    deformation: Probability = False
    distortion: Probability = False
    barrdistortion: Probability = False
    pincdistortion: Probability = False
    brightening: Probability = False
    sharpening: Probability = False
    gamma: Probability = False
    hue_saturation: Probability = False
    blur: Probability = False
    noise: Probability = False
    hair: Probability = False
    ink: Probability = False
    ruler: Probability = False
    vignette: Probability = False
    white_balance: Probability = False
    alpha: float = 1300.0
    sigmoid: float = 8.0
    sigmoids: list[float] | None = None


@dataclass
class DeformationSection:
    """[deformation]: elastic deformation strength (alpha) and smoothness (sigmoid(s), the Gaussian sigma)."""

    alpha: float = 1300.0
    sigmoid: float = 8.0
    sigmoids: list[float] | None = None


@dataclass
class DistortionSection:
    """[distortion]: smooth random displacement."""

    gaussian_filter_rsigma: float = 40.0
    gaussian_filter_sigma: float = 0.5
    distortions: list[float] = field(default_factory=lambda: [0.02])


@dataclass
class RadialDistortionSection:
    """[barrdistortion] and [pincdistortion]: radial lens distortion."""

    radius: float = 0.3
    amount: float = 0.3
    centers: list[tuple[float, float]] = field(default_factory=lambda: [(0.5, 0.5)])


@dataclass
class BrighteningSection:
    """[brightening]: contrast gain (alpha) and brightness offset (beta) maxima."""

    alpha: float = 1.2
    beta: float = 10.0


@dataclass
class SharpeningSection:
    """[sharpening]: unsharp-mask strength."""

    k: float = 1.0


SECTIONS: dict[str, type] = {
    "model": ModelSection,
    "train": TrainSection,
    "eval": DataPathsSection,
    "test": DataPathsSection,
    "infer": InferSection,
    "tiledinfer": TiledInferSection,
    "segmentation": SegmentationSection,
    "mask": MaskSection,
    "generator": GeneratorSection,
    "augmentor": AugmentorSection,
    "deformation": DeformationSection,
    "distortion": DistortionSection,
    "barrdistortion": RadialDistortionSection,
    "pincdistortion": RadialDistortionSection,
    "brightening": BrighteningSection,
    "sharpening": SharpeningSection,
}

# Keys of the seed's format that skinseg reads (so the seed's configs load) but that change nothing here. A config
# that sets one gets one warning listing them all, instead of silence.
IGNORED_KEYS: dict[str, tuple[str, ...]] = {
    "model": ("model", "generator", "show_summary", "dropout_seed_fixing"),
    "train": (
        "metrics",
        "eval_dir",
        "create_backup",
        "save_weights_only",
        "dataset_splitter",
        "seedreset_callback",
        "show_history",
    ),
    "eval": ("output_dir",),
    "test": ("image_datapath", "mask_datapath", "output_dir"),
    "infer": ("images_dir", "output_dir", "merged_dir", "sharpening", "mask_colorize"),
    "tiledinfer": (
        "overlapping",
        "images_dir",
        "output_dir",
        "merged_dir",
        "split_size",
        "bitwise_blending",
        "sharpening",
        "mask_colorize",
    ),
    "segmentation": ("colorize", "black", "white", "blursize"),
    "mask": ("blur", "blur_size", "binarize"),
    "generator": ("debug", "verbose"),
}
IGNORED_WHY = (
    "skinseg always seeds, checkpoints and logs; it reads [eval] folders for validation, and `skinseg infer` and "
    "`skinseg evaluate` take their folders on the command line"
)


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


# Spellings the seed toolkit used that we accept with a warning: (section or "*", old) -> new.
ALIASES: dict[tuple[str, str], str] = {("*", "alpah"): "alpha"}


@dataclass
class Config:
    """A loaded config: one attribute per section, plus where it came from."""

    model: ModelSection = field(default_factory=ModelSection)
    train: TrainSection = field(default_factory=TrainSection)
    eval: DataPathsSection = field(default_factory=DataPathsSection)
    test: DataPathsSection = field(default_factory=DataPathsSection)
    infer: InferSection = field(default_factory=InferSection)
    tiledinfer: TiledInferSection = field(default_factory=TiledInferSection)
    segmentation: SegmentationSection = field(default_factory=SegmentationSection)
    mask: MaskSection = field(default_factory=MaskSection)
    generator: GeneratorSection = field(default_factory=GeneratorSection)
    augmentor: AugmentorSection = field(default_factory=AugmentorSection)
    deformation: DeformationSection = field(default_factory=DeformationSection)
    distortion: DistortionSection = field(default_factory=DistortionSection)
    barrdistortion: RadialDistortionSection = field(default_factory=RadialDistortionSection)
    pincdistortion: RadialDistortionSection = field(default_factory=RadialDistortionSection)
    brightening: BrighteningSection = field(default_factory=BrighteningSection)
    sharpening: SharpeningSection = field(default_factory=SharpeningSection)
    source: Path | None = None
    present: dict[str, set[str]] = field(default_factory=dict)  # keys the file set, per section
    warnings: list[str] = field(default_factory=list)
    lines: dict[tuple[str, str], int] = field(default_factory=dict)  # (section, key) -> line in the file

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """The resolved values as plain Python (paths as strings), section by section."""
        return {name: {k: _plain(v) for k, v in dataclasses.asdict(getattr(self, name)).items()} for name in SECTIONS}


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    return value


# ---------------------------------------------------------------------------------------------- parsing

_SECTION_RE = re.compile(r"^\[\s*([^\]]*?)\s*\]\s*(?:[;#].*)?$")
_KEY_RE = re.compile(r"^([A-Za-z_][A-Za-z0-9_.\-]*)\s*[=:]\s*(.*)$")
_BARE_STRING_RE = re.compile(r"^[A-Za-z0-9_./\\~:\-]+$")


@dataclass(frozen=True)
class RawValue:
    text: str
    line: int


class ConfigErrors(ConfigError):
    """Every problem found in a config, reported at once: ``messages`` holds one line each (file, line, key, fix)."""

    def __init__(self, messages: list[str]):
        self.messages = list(messages)
        super().__init__("\n".join(self.messages))


def _raise_all(errors: list[str]) -> None:
    """Raise :class:`ConfigErrors` with ``errors`` in the file's line order, if there are any."""
    if errors:
        raise ConfigErrors(sorted(errors, key=lambda m: int(n.group(1)) if (n := _LINE_RE.match(m)) else 0))


_LINE_RE = re.compile(r"^.*?:(\d+): ")


def parse_ini(text: str, source: str, errors: list[str] | None = None) -> dict[str, dict[str, RawValue]]:
    """Split INI text into ``{section: {key: RawValue}}`` keeping line numbers. Comments start with ; or #.

    Problems are appended to ``errors``; without it, :class:`ConfigErrors` lists them all."""
    found: list[str] = [] if errors is None else errors
    sections: dict[str, dict[str, RawValue]] = {}
    current: str | None = None
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line[0] in ";#":
            continue
        if m := _SECTION_RE.match(line):
            current = m.group(1).strip().lower()
            if current in sections:
                found.append(f"{source}:{lineno}: section [{current}] appears twice; merge the two")
            sections.setdefault(current, {})
            continue
        m = _KEY_RE.match(line)
        if m is None:
            found.append(f"{source}:{lineno}: cannot read {line[:60]!r}; expected `key = value` or `[section]`")
            continue
        if current is None:
            found.append(f"{source}:{lineno}: `{m.group(1)}` comes before any [section]; put it under one")
            continue
        key = m.group(1).lower()
        if key in sections[current]:
            first = sections[current][key].line
            found.append(f"{source}:{lineno}: [{current}] {key} is set twice (first on line {first}); keep one")
            continue
        sections[current][key] = RawValue(m.group(2).strip(), lineno)
    if errors is None:
        _raise_all(found)
    return sections


def _strip_inline_comment(text: str) -> str:
    """Remove a trailing ``; comment`` or ``# comment`` that is outside quotes."""
    quote: str | None = None
    for i, ch in enumerate(text):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch in ";#" and (i == 0 or text[i - 1].isspace()):
            return text[:i].rstrip()
    return text


def parse_literal(text: str, *, expects_str: bool) -> Any:
    """Parse one value as a Python literal; never evaluates code.

    A bare word (``relu``, ``./models``) is accepted as a string where the schema expects a string or path.
    Raises ValueError with a reason on anything else.
    """
    candidates = [text]
    stripped = _strip_inline_comment(text)
    if stripped != text:
        candidates.append(stripped)
    for candidate in candidates:
        if candidate == "":
            return None if not expects_str else ""
        try:
            return ast.literal_eval(candidate)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
    if expects_str and _BARE_STRING_RE.match(stripped):
        return stripped.strip()
    if stripped.lower() in ("true", "false", "none"):
        raise ValueError(f"{stripped!r} is not a literal: write {stripped.capitalize()} (Python's spelling)")
    raise ValueError(
        f'{stripped[:60]!r} is not a literal (number, "string", True/False, None, tuple or list); '
        "nothing in a config is evaluated as code"
    )


# ---------------------------------------------------------------------------------------------- typing


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if tp is Path:
        return "path string"
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if origin in (list, tuple):
        args = typing.get_args(tp)
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            return f"tuple of {_describe(args[0])}"
        if origin is tuple:
            return f"tuple of {len(args)} ({', '.join(_describe(a) for a in args)})"
        return f"list of {_describe(args[0])}"
    if tp is type(None):
        return "None"
    return getattr(tp, "__name__", str(tp))


def coerce(value: Any, tp: Any, base_dir: Path | None) -> Any:
    """Check ``value`` against type hint ``tp``; return the typed value or raise TypeError."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return coerce(value, arg, base_dir)
            except TypeError:
                continue
        raise TypeError
    if tp is type(None):
        if value is None:
            return None
        raise TypeError
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise TypeError
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise TypeError
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                return float(value)
            except OverflowError:  # an integer beyond float range
                raise TypeError from None
        raise TypeError
    if tp is str:
        if isinstance(value, str):
            return value
        raise TypeError
    if tp is Path:
        if isinstance(value, str) and value.strip():
            try:
                p = Path(value).expanduser()
            except RuntimeError:  # ~user of an unknown user
                raise TypeError from None
            return p if p.is_absolute() or base_dir is None else Path(os.path.normpath(base_dir / p))
        raise TypeError
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            if origin is list and not isinstance(value, (dict, set)):
                value = [value]  # a single value where a list is expected: [value]
            else:
                raise TypeError
        args = typing.get_args(tp)
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                raise TypeError
            return tuple(coerce(v, a, base_dir) for v, a in zip(value, args, strict=True))
        items = [coerce(v, args[0], base_dir) for v in value]
        return tuple(items) if origin is tuple else items
    raise TypeError


def _suggest(name: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.6)
    return f"did you mean `{close[0]}`?" if close else f"valid: {', '.join(sorted(valid))}"


# ---------------------------------------------------------------------------------------------- loading


def load_config(path: str | Path) -> Config:
    """Read and validate a config file. Raises :class:`ConfigError` with file, line, key and a fix."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found; create one with `skinseg config init {path}`") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read config ({e.__class__.__name__}: {e}); check the file") from None
    return parse_config(text, source=str(path), base_dir=path.resolve().parent)


def parse_config(text: str, *, source: str = "<config>", base_dir: Path | None = None) -> Config:
    """Validate INI ``text`` against the schema. ``base_dir`` anchors relative paths.

    Every problem is found in one pass: :class:`ConfigErrors` lists them all, one line each."""
    errors: list[str] = []
    raw = parse_ini(text, source, errors)
    cfg = Config(source=Path(source) if source != "<config>" else None)
    hints_cache: dict[type, dict[str, Any]] = {}
    for section, entries in raw.items():
        if section not in SECTIONS:
            errors.append(f"{source}: unknown section [{section}]; {_suggest(section, list(SECTIONS))}")
            continue
        cls = SECTIONS[section]
        hints = hints_cache.setdefault(cls, typing.get_type_hints(cls))
        values: dict[str, Any] = {}
        for key, rv in entries.items():
            name = ALIASES.get((section, key)) or ALIASES.get(("*", key)) or key
            if name != key:
                cfg.warnings.append(
                    f"{source}:{rv.line}: [{section}] `{key}` is read as `{name}` (the seed's spelling)"
                )
            if name not in hints:
                errors.append(f"{source}:{rv.line}: unknown key `{key}` in [{section}]; {_suggest(name, list(hints))}")
                continue
            tp = hints[name]
            expects_str = tp in (str, Path) or typing.get_args(tp) in ((str, type(None)), (Path, type(None)))
            try:
                literal = parse_literal(rv.text, expects_str=expects_str)
            except ValueError as e:
                errors.append(f"{source}:{rv.line}: [{section}] {key}: {e}")
                continue
            try:
                values[name] = coerce(literal, tp, base_dir)
            except TypeError:
                errors.append(
                    f"{source}:{rv.line}: [{section}] {key} = {rv.text[:60]} has the wrong type; "
                    f"expected {_describe(tp)}"
                )
        setattr(cfg, section, cls(**values))
        cfg.present[section] = set(values)
        for key, rv in entries.items():
            cfg.lines[(section, ALIASES.get((section, key)) or ALIASES.get(("*", key)) or key)] = rv.line
    _check_ranges(cfg, source, errors)
    _raise_all(errors)
    ignored = ignored_keys_warning(cfg, source)
    if ignored:
        cfg.warnings.append(ignored)
    return cfg


def _check_ranges(cfg: Config, source: str, errors: list[str] | None = None) -> None:
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
        ("model", "learning_rate", cfg.model.learning_rate > 0, "positive"),
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
            where = _where(cfg, source, section, key)
            found.append(f"{where}: [{section}] {key} = {getattr(getattr(cfg, section), key)!r} must be {rule}")
    _check_names(cfg, source, found)
    if errors is None:
        _raise_all(found)


def _where(cfg: Config, source: str, section: str, key: str) -> str:
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
                f"{_where(cfg, source, 'model', key)}: [model] {key} {shown} is not one skinseg knows; "
                f"{hint}choose from: {', '.join(canonical)}"
            )


# ---------------------------------------------------------------------------------------------- overrides


def apply_overrides(cfg: Config, overrides: dict[str, Any]) -> Config:
    """Return ``cfg`` with CLI values applied (CLI wins). Keys are ``section.key``; None values are ignored."""
    for dotted, value in overrides.items():
        if value is None:
            continue
        section, _, key = dotted.partition(".")
        sub = getattr(cfg, section)
        if key not in {f.name for f in dataclasses.fields(sub)}:
            raise ConfigError(
                f"override `{dotted}`: no such key; {_suggest(key, [f.name for f in dataclasses.fields(sub)])}"
            )
        setattr(sub, key, value)
        cfg.present.setdefault(section, set()).add(key)
    _check_ranges(cfg, str(cfg.source) if cfg.source else "command line")  # the file's lines, with the CLI's values
    return cfg


def require_dir(path: Path | None, what: str, fix: str) -> Path:
    """Check a folder the command needs; raise ConfigError naming it and how to fix it."""
    if path is None:
        raise ConfigError(f"{what} is not set; {fix}")
    if not path.is_dir():
        raise ConfigError(f"{what} {path} does not exist or is not a folder; {fix}")
    return path


# ---------------------------------------------------------------------------------------------- writing


def render_config(cfg: Config, *, comments: bool = True, only_present: bool = False) -> str:
    """The config as INI text, with each section's help as a comment. Round-trips through :func:`parse_config`."""
    lines: list[str] = []
    for name in SECTIONS:
        sub = getattr(cfg, name)
        keys = [f.name for f in dataclasses.fields(sub)]
        if only_present:
            keys = [k for k in keys if k in cfg.present.get(name, set())]
            if not keys:
                continue
        if comments and sub.__doc__:
            lines.append(f"; {sub.__doc__.strip()}")
        lines.append(f"[{name}]")
        width = max((len(k) for k in keys), default=0)
        for k in keys:
            lines.append(f"{k:<{width}} = {_render_value(getattr(sub, k))}")
        lines.append("")
    return "\n".join(lines)


def _render_value(v: Any) -> str:
    if isinstance(v, Path):
        return repr(v.as_posix()).replace("'", '"')
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (list, tuple)):
        return repr(_plain(v)).replace("'", '"')
    return repr(v)


# ---------------------------------------------------------------------------------------------- recipes

# The recipes shipped with skinseg: the repository's configs/*.config, installed as the package skinseg.configs.
RECIPES_PACKAGE = "skinseg.configs"
REFERENCE_RECIPE = "isic_reference"  # the reference recipe: what `skinseg config init` writes
# [section] keys naming data folders or files: `config init` moves them under the user's data folder
DATA_KEYS = {
    "train": ("image_datapath", "mask_datapath", "data_root", "exclude_stems_file"),
    "eval": ("image_datapath", "mask_datapath"),
    "test": ("image_datapath", "mask_datapath"),
}

CONFIG_HEADER = """\
; skinseg train_eval_infer.config: the recipe `{recipe}` (configs/{recipe}.config of skinseg), written by
; `skinseg config init`.
; Only keys that act are set; every other key keeps its default (`skinseg config show THIS_FILE` lists them all).
; Values are Python literals: numbers, "strings", True/False, None, (tuples) and [lists]. Nothing is evaluated.
; Relative paths resolve against this file's folder. CLI options (--epochs, --batch-size, ...) override values here.
; The data folders are those `skinseg data prepare --output {data}` makes from the ISIC archives.
; Train with:  skinseg train --config THIS_FILE
"""


def recipe_path(name: str = REFERENCE_RECIPE) -> Path:
    """The shipped recipe ``name`` (a file of ``configs/``, without ``.config``); ConfigError if there is none."""
    import importlib.resources

    try:
        folder = Path(str(importlib.resources.files(RECIPES_PACKAGE)))
    except (ModuleNotFoundError, TypeError):
        folder = Path(__file__).resolve().parents[1] / "configs"  # a checkout that was not installed
    path = folder / f"{name}.config"
    if not path.is_file():
        known = sorted(p.stem for p in folder.glob("*.config")) if folder.is_dir() else []
        raise ConfigError(f"no recipe named {name!r}; {_suggest(name, known) if known else 'reinstall skinseg'}")
    return path


def init_config_text(config_path: str | Path, *, data: str | Path = "data", recipe: str = REFERENCE_RECIPE) -> str:
    """The config ``skinseg config init`` writes to ``config_path``: the shipped ``recipe``, read from its file (so
    it follows the recipe), with only the keys that act. Its data folders move under ``data`` (taken from the
    current folder, written relative to the new file), keeping the data sets' names (``isic2017-train/images``); its run
    directory becomes ``runs/<config stem>`` next to the new file; other paths stay where the recipe points."""
    source = recipe_path(recipe)
    cfg = load_config(source)
    where = Path(os.path.abspath(config_path)).parent
    data_root = Path(os.path.abspath(data))
    found = [
        (section, key, getattr(getattr(cfg, section), key))
        for section, keys in DATA_KEYS.items()
        for key in keys
        if key in cfg.present.get(section, set()) and getattr(getattr(cfg, section), key) is not None
    ]
    paths = [p for _, _, v in found for p in (v if isinstance(v, list) else [v])]
    # the recipe's data root: above its data sets' folders (…/isic2017-train/images → …), so their names stay
    common = Path(os.path.commonpath([p.parent.parent for p in paths])) if paths else None

    def moved(p: Path) -> Path:
        assert common is not None
        target = data_root / (p.relative_to(common) if p != common else Path())
        return Path(os.path.relpath(target, where))

    for section, key, value in found:
        setattr(getattr(cfg, section), key, [moved(p) for p in value] if isinstance(value, list) else moved(value))
    if "model_dir" in cfg.present.get("train", set()):
        cfg.train.model_dir = Path("runs") / Path(config_path).stem
    for section, keys in IGNORED_KEYS.items():
        cfg.present[section] = cfg.present.get(section, set()) - set(keys)
    header = CONFIG_HEADER.format(recipe=recipe, data=Path(data).as_posix())
    return header + "\n" + render_config(cfg, only_present=True)


def default_config_text() -> str:
    """What ``skinseg config init my.config`` writes: the reference recipe, data under ``data/``."""
    return init_config_text("my.config")
