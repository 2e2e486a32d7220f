"""What a config may say: one dataclass per section (types and defaults), the sections, the keys skinseg reads but
ignores, and the seed toolkit's other spellings and places of a key."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

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

    # (the elastic deformation, `deformation` or the seed's `transformer`, takes its strength from [deformation])

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


# Spellings the seed toolkit used that we accept with a warning: (section or "*", old) -> new.
ALIASES: dict[tuple[str, str], str] = {("*", "alpah"): "alpha"}
# Settings the seed toolkit also wrote in another section: (section, key) -> (the setting's one section, key). The
# toolkit's [augmentor] alpah/sigmoid (its `transformer` op) are the elastic deformation's, whose section is
# [deformation]; where a file sets both, [deformation]'s value is used.
MOVED: dict[tuple[str, str], tuple[str, str]] = {
    ("augmentor", "alpha"): ("deformation", "alpha"),
    ("augmentor", "sigmoid"): ("deformation", "sigmoid"),
    ("augmentor", "sigmoids"): ("deformation", "sigmoids"),
}


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
        return {name: {k: plain(v) for k, v in dataclasses.asdict(getattr(self, name)).items()} for name in SECTIONS}


def plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return type(value)(plain(v) for v in value)
    return value
