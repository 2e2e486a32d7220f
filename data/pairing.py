"""Find image/mask pairs and split them into train, validation and test sets.

Pure file-system logic (no TensorFlow): the evaluation command and the tests use it too.
A mask pairs with an image when its stem is the image's stem, optionally followed by ``_segmentation`` (ISIC, any
letter case), ``_lesion`` (PH2) or ``_mask``. Nothing is dropped silently: unpaired files are reported.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from skinseg.runtime.errors import DataError, param

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp"})
MASK_SUFFIXES = ("_segmentation", "_lesion", "_mask")
_MASK_SUFFIX_RE = re.compile(r"(?i)(?:" + "|".join(MASK_SUFFIXES) + r")$")


@dataclass(frozen=True)
class Pair:
    """One training example: an image, its mask, and the stem that identifies it across folders."""

    image: Path
    mask: Path

    @property
    def stem(self) -> str:
        return self.image.stem


@dataclass(frozen=True)
class Ambiguous:
    """An image that several mask files match (``a_mask.png`` and ``a_segmentation.png``)."""

    image: Path
    masks: tuple[Path, ...]

    def __str__(self) -> str:
        return f"{self.image}: several masks match ({', '.join(m.name for m in self.masks)}); keep one"


@dataclass(frozen=True)
class SharedStem:
    """An image whose stem another image of its folder has too (``a.png`` and ``a.jpg``): the mask would score or
    train both, and which photo it outlines is unknown."""

    image: Path
    others: tuple[Path, ...]
    masks: tuple[Path, ...]

    def __str__(self) -> str:
        images = ", ".join(sorted(p.name for p in (self.image, *self.others)))
        masks = ", ".join(m.name for m in self.masks)
        mask = f" for {'one mask' if len(self.masks) == 1 else 'its masks'} ({masks})" if self.masks else ""
        stem = self.image.stem
        return f"{self.image}: the stem {stem} has several images ({images}){mask}; keep one image or rename the others"


@dataclass
class PairingReport:
    pairs: list[Pair] = field(default_factory=list)
    images_without_mask: list[Path] = field(default_factory=list)
    masks_without_image: list[Path] = field(default_factory=list)
    ambiguous: list[Ambiguous] = field(default_factory=list)
    shared_stems: list[SharedStem] = field(default_factory=list)

    @property
    def problems(self) -> list[str]:
        out = [f"{p}: no mask found (expected <stem>.png or <stem>_segmentation.png)" for p in self.images_without_mask]
        out += [f"{p}: mask without an image" for p in self.masks_without_image]
        out += [str(a) for a in self.ambiguous]
        out += [str(s) for s in self.shared_stems]
        return out


def list_images(folder: Path, exclude: Iterable[Path] = ()) -> list[Path]:
    """Image files directly in ``folder`` (any letter case of the extension), sorted by name, except the files
    ``exclude`` names (compared with every link resolved)."""
    skip = {os.path.realpath(p) for p in exclude}
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and (not skip or os.path.realpath(p) not in skip)
    )


def mask_key(mask_path: Path) -> str:
    """The image stem a mask file belongs to: ``ISIC_1_Segmentation.png`` -> ``ISIC_1``."""
    return _MASK_SUFFIX_RE.sub("", mask_path.stem)


def pair_folders(images_dir: Path, masks_dir: Path, *, exclude: Iterable[Path] = ()) -> PairingReport:
    """Pair every image in ``images_dir`` with its mask in ``masks_dir``, leaving out the files ``exclude`` names
    (a command's own reports, when its output folder is one of these). Two images of one stem (``a.png`` and
    ``a.jpg``) that a mask matches are reported (:class:`SharedStem`), not both paired with it."""
    for folder, what in ((images_dir, "images"), (masks_dir, "masks")):
        if not folder.is_dir():
            raise DataError(f"{folder}: {what} folder not found; check the data paths in the config")
    exclude = list(exclude)
    report = PairingReport()
    masks: dict[str, list[Path]] = {}
    for m in list_images(masks_dir, exclude):
        masks.setdefault(mask_key(m), []).append(m)
    same_folder = images_dir.resolve() == masks_dir.resolve()
    candidates_of = {
        img: [c for c in masks.get(img.stem, []) if not same_folder or c != img]
        for img in list_images(images_dir, exclude)
    }
    by_stem: dict[str, list[Path]] = {}
    for img, candidates in candidates_of.items():
        if candidates:
            by_stem.setdefault(img.stem, []).append(img)
    used: set[Path] = set()
    for img, candidates in candidates_of.items():
        if not candidates:
            if not same_folder or not _MASK_SUFFIX_RE.search(img.stem):
                report.images_without_mask.append(img)
            continue
        if len(by_stem[img.stem]) > 1:
            others = tuple(o for o in by_stem[img.stem] if o != img)
            report.shared_stems.append(SharedStem(img, others, tuple(c for c in candidates if c not in others)))
            used.update(candidates)  # they have an image: reported with it, not "without an image"
            continue
        if len(candidates) > 1:
            report.ambiguous.append(Ambiguous(img, tuple(candidates)))
            used.update(candidates)  # they have an image: reported once, as ambiguous, not "without an image"
            continue
        report.pairs.append(Pair(img, candidates[0]))
        used.add(candidates[0])
    if not same_folder:
        report.masks_without_image = sorted(m for group in masks.values() for m in group if m not in used)
    return report


def pair_many(folders: Iterable[tuple[Path, Path]], *, skip_bad: bool = False) -> tuple[list[Pair], list[str]]:
    """Pair several (images, masks) folders; raise DataError listing problems unless ``skip_bad``.

    Returns the pairs and the warnings (problems skipped with ``skip_bad``).
    """
    pairs: list[Pair] = []
    problems: list[str] = []
    for images_dir, masks_dir in folders:
        report = pair_folders(images_dir, masks_dir)
        pairs += report.pairs
        problems += report.problems
    if problems and not skip_bad:
        raise DataError(_problem_summary(problems, f"pass {param('skip_bad')} to train without them"))
    return pairs, problems


def _problem_summary(problems: Sequence[str], fix: str) -> str:
    shown = "; ".join(problems[:5])
    more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
    return f"{len(problems)} unusable file(s): {shown}{more}; fix them or {fix}"


def check_readable(pairs: Sequence[Pair], *, skip_bad: bool = False) -> tuple[list[Pair], list[str]]:
    """Read each image's and mask's header: unreadable files, or masks of another size, are problems."""
    from skinseg.runtime.imageheaders import image_size  # header-only: fast on large photos

    good: list[Pair] = []
    problems: list[str] = []
    for pair in pairs:
        try:
            isize = image_size(pair.image)
            msize = image_size(pair.mask)
        except Exception as e:  # noqa: BLE001  ImageError or a decoder error: report, do not crash
            problems.append(str(e))
            continue
        if isize != msize:
            problems.append(f"{pair.mask}: mask is {msize[0]}×{msize[1]} but its image is {isize[0]}×{isize[1]}")
            continue
        good.append(pair)
    if problems and not skip_bad:
        raise DataError(_problem_summary(problems, f"pass {param('skip_bad')} to train without them"))
    return good, problems


def stable_fraction(stem: str, seed: int) -> float:
    """A number in [0, 1) fixed by (stem, seed): the split does not depend on file order or platform."""
    digest = hashlib.sha256(f"{seed}:{stem}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_by_stem(pairs: Sequence[Pair], *, valid_ratio: float, seed: int) -> tuple[list[Pair], list[Pair]]:
    """Seeded train/validation split by stem: every copy of a stem lands on the same side."""
    train = [p for p in pairs if stable_fraction(p.stem, seed) >= valid_ratio]
    valid = [p for p in pairs if stable_fraction(p.stem, seed) < valid_ratio]
    if not train or not valid:
        raise DataError(
            f"splitting {len(pairs)} pair(s) with valid_ratio {valid_ratio} left one side empty; "
            "add images or change [train] valid_ratio"
        )
    return train, valid


def read_stem_list(path: Path, *, what: str = "[train] exclude_stems_file") -> set[str]:
    """Stems listed one per line (``#`` comments allowed): e.g. a held-out test split. DataError naming ``what``
    (the option or key that gave the file) for an unreadable or empty list."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        reason = getattr(e, "strerror", None) or str(e)
        raise DataError(f"{what} {path}: cannot read the stem list ({reason}); give a UTF-8 text file") from None
    stems = {s for line in lines if (s := line.split("#", 1)[0].strip())}
    if not stems:
        raise DataError(f"{what} {path}: lists no stems; write one image stem (file name without suffix) a line")
    return stems
