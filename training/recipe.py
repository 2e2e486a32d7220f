"""What a config means for training, without TensorFlow: the data splits, the sample spec, the augmentation.

``skinseg augment-preview`` and the evaluation use these on an install without the ``train`` extra.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from skinseg.data import pairing
from skinseg.data.config import Config, require_dir
from skinseg.data.pairing import Pair
from skinseg.runtime.errors import ConfigError, DataError


@dataclass
class DataSplits:
    train: list[Pair]
    valid: list[Pair]
    warnings: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------- data


def _folders(images: list[Path] | None, masks: list[Path] | None, what: str) -> list[tuple[Path, Path]]:
    if not images or not masks:
        return []
    if len(images) != len(masks):
        raise ConfigError(f"[{what}] image_datapath has {len(images)} folder(s) but mask_datapath has {len(masks)}")
    for p in [*images, *masks]:
        require_dir(p, f"[{what}] data folder", "fix the path in the config (relative paths start at its folder)")
    return list(zip(images, masks, strict=True))


def find_splits(cfg: Config, *, skip_bad: bool = False) -> DataSplits:
    """Pair and split the data the config names. Order of precedence:

    1. ``[train] data_root`` with ``<root>/{train,valid}/{images,masks}`` (the seed's layout);
    2. ``[train]`` image/mask folders, with ``[eval]`` folders as validation when given,
       else a seeded split of the train pairs by stem (``valid_ratio``).
    Stems listed in ``exclude_stems_file`` (e.g. a held-out test split) never enter training or validation.
    """
    t = cfg.train
    excluded = pairing.read_stem_list(t.exclude_stems_file) if t.exclude_stems_file else set()
    warnings: list[str] = []
    if t.data_root is not None:
        root = require_dir(t.data_root, "[train] data_root", "point it at a folder with train/ and valid/ inside")
        train_f = [(root / "train" / "images", root / "train" / "masks")]
        valid_f = [(root / "valid" / "images", root / "valid" / "masks")]
    else:
        train_f = _folders(_as_list(t.image_datapath), _as_list(t.mask_datapath), "train")
        if not train_f:
            raise ConfigError(
                f"{cfg.source or 'config'}: no training data: set [train] image_datapath and mask_datapath, "
                "or [train] data_root"
            )
        valid_f = _folders(_as_list(cfg.eval.image_datapath), _as_list(cfg.eval.mask_datapath), "eval")
    train, w1 = pairing.pair_many(train_f, skip_bad=skip_bad)
    warnings += w1
    if valid_f:
        valid, w2 = pairing.pair_many(valid_f, skip_bad=skip_bad)
        warnings += w2
    else:
        train, valid = pairing.split_by_stem(train, valid_ratio=t.valid_ratio, seed=t.seed)
    train = [p for p in train if p.stem not in excluded]
    valid = [p for p in valid if p.stem not in excluded]
    overlap = {p.stem for p in train} & {p.stem for p in valid}
    if overlap:
        warnings.append(f"{len(overlap)} stem(s) are in both train and validation (e.g. {sorted(overlap)[0]})")
    train, w3 = pairing.check_readable(train, skip_bad=skip_bad)
    valid, w4 = pairing.check_readable(valid, skip_bad=skip_bad)
    warnings += w3 + w4
    if not train or not valid:
        raise DataError(f"no usable {'training' if not train else 'validation'} pairs left; check the data folders")
    return DataSplits(train, valid, warnings)


def _as_list(v: Any) -> list[Path] | None:
    if v is None:
        return None
    return list(v) if isinstance(v, (list, tuple)) else [v]


def augment_params(cfg: Config):
    """Map the seed's [augmentor] and sub-sections onto :class:`AugmentParams` (True means probability 0.5)."""
    from skinseg.training.augment import AugmentParams

    a = cfg.augmentor

    def p(v: Any, default_on: float = 0.5) -> float:
        if v is None or v is False:
            return 0.0
        return default_on if v is True else float(v)

    deformation_on = a.deformation if a.deformation is not False else a.transformer
    d = cfg.deformation  # the seed's [augmentor] alpah/sigmoid are read into [deformation] (skinseg.data.config)
    alpha = d.alpha
    sigmas = d.sigmoids or [d.sigmoid]
    return AugmentParams(
        hflip=p(a.hflip),
        vflip=p(a.vflip),
        rotation=p(a.rotation),
        angles=tuple(a.angles),
        shrink=p(a.shrink if a.shrink is not None else bool(a.shrinks)),
        shrinks=tuple(a.shrinks) or (1.0,),
        shear=p(a.shear if a.shear is not None else bool(a.shears)),
        shears=tuple(a.shears) or (0.0,),
        deformation=p(deformation_on),
        alpha=float(alpha),
        sigmas=tuple(float(s) for s in sigmas),
        distortion=p(a.distortion),
        distortion_rsigma=cfg.distortion.gaussian_filter_rsigma,
        distortion_sigma=cfg.distortion.gaussian_filter_sigma,
        distortions=tuple(cfg.distortion.distortions),
        barrel=p(a.barrdistortion),
        barrel_radius=cfg.barrdistortion.radius,
        barrel_amount=cfg.barrdistortion.amount,
        barrel_centers=tuple(cfg.barrdistortion.centers),
        pincushion=p(a.pincdistortion),
        pincushion_radius=cfg.pincdistortion.radius,
        pincushion_amount=cfg.pincdistortion.amount,
        pincushion_centers=tuple(cfg.pincdistortion.centers),
        brightness_contrast=p(a.brightening),
        contrast_alpha=cfg.brightening.alpha,
        brightness_beta=cfg.brightening.beta,
        sharpen=p(a.sharpening),
        sharpen_k=cfg.sharpening.k,
        gamma=p(a.gamma),
        hue_saturation=p(a.hue_saturation),
        blur=p(a.blur),
        noise=p(a.noise),
        hair=p(a.hair),
        ink=p(a.ink),
        ruler=p(a.ruler),
        vignette=p(a.vignette),
        white_balance=p(a.white_balance),
    )


def sample_spec(cfg: Config):
    from skinseg.training.data import SampleSpec

    return SampleSpec(
        tile=(cfg.model.image_height, cfg.model.image_width),
        train_scale=cfg.train.train_scale,
        mask_threshold=cfg.mask.threshold,
        color_constancy=cfg.model.color_constancy,
        color_constancy_p=cfg.model.color_constancy_p,
    )
