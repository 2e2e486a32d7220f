"""Turn the archives a user downloads from the ISIC challenge site (and PH2) into the folders the configs read.

``skinseg data prepare`` reads the official archives, as downloaded (zip files, or the folders they unzip to),
and writes one folder per data set: ``<set>/images/<stem>.jpg`` and ``<set>/masks/<stem>.png`` (0 = skin,
255 = lesion, the image's size) and ``<set>/manifest.json`` (what was read and written, what was left out and why).
Nothing is downloaded: a missing archive is reported with its official address.

Sizes follow the reference recipe (configs/isic_reference.config and the bundled model's data): a training set is
squashed to ``train_size`` × ``train_size`` (256, aspect not kept, as ``isic2017-train`` was made); a validation or
test set keeps its photographs' aspect with the long side at most ``long_side`` px (1600, as ``isic-raw``). Masks
are resized with area interpolation and thresholded at 128. The ISIC 2017 validation set goes to ``isic-raw`` (the
folder the reference recipe validates on; here all 150 photographs, where the project's own ``isic-raw`` holds 98).

Pure data-layer code (OpenCV and the standard library, no TensorFlow): one function per step, the CLI prints.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import zipfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from skinseg.runtime.errors import DataError, UsageError, param

__all__ = [
    "DATA_SETS",
    "ISIC_DATA_PAGE",
    "Archive",
    "DataSet",
    "PrepareReport",
    "default_sets",
    "find_archives",
    "prepare",
]

ISIC_DATA_PAGE = "https://challenge.isic-archive.com/data/"
_ISIC = "https://isic-challenge-data.s3.amazonaws.com/"
TRAIN_SIZE = 256  # px: a training set's images and masks, squashed (isic2017-train)
LONG_SIDE = 1600  # px: the long side of validation and test photographs at most (isic-raw)
JPEG_QUALITY = 95
MANIFEST = "manifest.json"
MAX_MEMBER_BYTES = 512 << 20  # one image or mask in an archive: larger is not a dermoscopy photograph
_STEM_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


@dataclass(frozen=True)
class Archive:
    """One file as the data set's site distributes it; ``holds``: ``images``, ``masks`` or ``both``."""

    name: str
    url: str
    holds: str

    @property
    def folder_name(self) -> str:
        """The folder the archive unzips to (accepted in its place)."""
        return self.name.rsplit(".", 1)[0]


@dataclass(frozen=True)
class DataSet:
    """One output folder: its archives, how big its images are made, how many pairs the release has."""

    name: str
    title: str
    archives: tuple[Archive, ...]
    training: bool  # squashed to train_size (else: the long side at most long_side, aspect kept)
    pairs: int  # in the official release
    layout: str = "isic"  # how images and masks are named inside the archives: "isic" or "ph2"


def _isic(year: int, images: str, masks: str) -> tuple[Archive, ...]:
    return (
        Archive(images, f"{_ISIC}{year}/{images}", "images"),
        Archive(masks, f"{_ISIC}{year}/{masks}", "masks"),
    )


DATA_SETS: dict[str, DataSet] = {
    s.name: s
    for s in (
        DataSet(
            "isic2016-train",
            "ISIC 2016 Part 1 training set",
            _isic(2016, "ISBI2016_ISIC_Part1_Training_Data.zip", "ISBI2016_ISIC_Part1_Training_GroundTruth.zip"),
            True,
            900,
        ),
        DataSet(
            "isic2016-test",
            "ISIC 2016 Part 1 test set",
            _isic(2016, "ISBI2016_ISIC_Part1_Test_Data.zip", "ISBI2016_ISIC_Part1_Test_GroundTruth.zip"),
            False,
            379,
        ),
        DataSet(
            "isic2017-train",
            "ISIC 2017 Task 1 training set",
            _isic(2017, "ISIC-2017_Training_Data.zip", "ISIC-2017_Training_Part1_GroundTruth.zip"),
            True,
            2000,
        ),
        DataSet(
            "isic-raw",
            "ISIC 2017 Task 1 validation set (raw photographs)",
            _isic(2017, "ISIC-2017_Validation_Data.zip", "ISIC-2017_Validation_Part1_GroundTruth.zip"),
            False,
            150,
        ),
        DataSet(
            "isic2017-test",
            "ISIC 2017 Task 1 test set",
            _isic(2017, "ISIC-2017_Test_v2_Data.zip", "ISIC-2017_Test_v2_Part1_GroundTruth.zip"),
            False,
            600,
        ),
        DataSet(
            "isic2018-train",
            "ISIC 2018 Task 1 training set",
            _isic(2018, "ISIC2018_Task1-2_Training_Input.zip", "ISIC2018_Task1_Training_GroundTruth.zip"),
            True,
            2594,
        ),
        DataSet(
            "isic2018-valid",
            "ISIC 2018 Task 1 validation set",
            _isic(2018, "ISIC2018_Task1-2_Validation_Input.zip", "ISIC2018_Task1_Validation_GroundTruth.zip"),
            False,
            100,
        ),
        DataSet(
            "isic2018-test",
            "ISIC 2018 Task 1 test set",
            _isic(2018, "ISIC2018_Task1-2_Test_Input.zip", "ISIC2018_Task1_Test_GroundTruth.zip"),
            False,
            1000,
        ),
        DataSet(
            "ph2",
            "PH2 (Hospital Pedro Hispano, Matosinhos): 200 dermoscopic images with lesion masks",
            (Archive("PH2Dataset.rar", "https://www.fc.up.pt/addi/ph2%20database.html", "both"),),
            False,
            200,
            layout="ph2",
        ),
    )
}


def default_sets() -> list[str]:
    """The data sets the reference recipe (configs/isic_reference.config) reads, by their folder names."""
    from skinseg.data.config import DATA_KEYS, load_config, recipe_path

    cfg = load_config(recipe_path())
    names: list[str] = []
    for section, keys in DATA_KEYS.items():
        for key in keys:
            value = getattr(getattr(cfg, section), key)
            for path in value if isinstance(value, list) else [value] if value is not None else []:
                for candidate in (path.name, path.parent.name):
                    if candidate in DATA_SETS and candidate not in names:
                        names.append(candidate)
    return names or ["isic2017-train", "isic-raw"]


# ---------------------------------------------------------------------------------------------- sources


class _Source:
    """An archive opened for reading: its members (POSIX paths) and their bytes."""

    label: str

    def members(self) -> list[str]: ...

    def read(self, member: str) -> bytes: ...

    def describe(self) -> dict[str, Any]: ...

    def close(self) -> None:
        return None


class _ZipSource(_Source):
    def __init__(self, path: Path):
        self.path, self.label = path, path.name
        try:
            self._zip = zipfile.ZipFile(path)
            self._infos = {i.filename: i for i in self._zip.infolist() if not i.is_dir()}
        except (zipfile.BadZipFile, OSError, ValueError) as e:
            raise DataError(f"{path}: not a readable zip archive ({e}); download it again") from None
        self._lock = threading.Lock()

    def members(self) -> list[str]:
        return sorted(self._infos)

    def read(self, member: str) -> bytes:
        info = self._infos[member]
        if info.file_size > MAX_MEMBER_BYTES:
            size = info.file_size / 1e6
            raise DataError(f"{self.path}: {member} is {size:.0f} MB unpacked; not an image of this set")
        try:
            with self._lock:  # one reader of the zip at a time; decoding, resizing and writing run in parallel
                return self._zip.read(info)
        except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as e:
            raise DataError(f"damaged in the archive ({e}); download {self.label} again") from None

    def crc(self, member: str) -> str:
        return f"{self._infos[member].CRC:08x}"

    def describe(self) -> dict[str, Any]:
        st = self.path.stat()
        return {"path": str(self.path.resolve()), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}

    def close(self) -> None:
        self._zip.close()


class _FolderSource(_Source):
    def __init__(self, path: Path, *, label: str | None = None, temporary: bool = False):
        self.path, self.label, self.temporary = path, label or path.name, temporary
        self._files = {p.relative_to(path).as_posix(): p for p in path.rglob("*") if p.is_file()}

    def members(self) -> list[str]:
        return sorted(self._files)

    def read(self, member: str) -> bytes:
        path = self._files[member]
        if path.stat().st_size > MAX_MEMBER_BYTES:
            raise DataError(f"{path}: {path.stat().st_size / 1e6:.0f} MB; not an image of this set")
        return path.read_bytes()

    def crc(self, member: str) -> str:
        return f"{zlib.crc32(self._files[member].read_bytes()) & 0xFFFFFFFF:08x}"

    def describe(self) -> dict[str, Any]:
        return {"path": str(self.path.resolve()), "files": len(self._files)}

    def close(self) -> None:
        if self.temporary:
            shutil.rmtree(self.path, ignore_errors=True)


# RAR (PH2 is distributed as one): Python reads no RAR, so an installed extractor unpacks it to a temporary folder.
_RAR_TOOLS = (("unar", ["-quiet", "-force-overwrite", "-output-directory", "{out}", "{rar}"]),
              ("bsdtar", ["-x", "-f", "{rar}", "-C", "{out}"]),
              ("unrar", ["x", "-idq", "-o+", "{rar}", "{out}/"]),
              ("7z", ["x", "-y", "-bd", "-o{out}", "{rar}"]))  # fmt: skip


def _open_rar(path: Path, scratch: Path) -> _Source:
    for tool, args in _RAR_TOOLS:
        exe = shutil.which(tool)
        if exe is None:
            continue
        out = Path(tempfile.mkdtemp(prefix=".skinseg-unrar-", dir=scratch))
        cmd = [exe, *(a.format(out=out, rar=path) for a in args)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)  # noqa: S603  (a fixed tool)
        if done.returncode == 0:
            return _FolderSource(out, label=path.name, temporary=True)
        shutil.rmtree(out, ignore_errors=True)
        reason = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no reason given"]
        raise DataError(f"{path}: {tool} could not extract it ({reason[0][:200]}); download it again")
    raise DataError(
        f"{path}: a RAR archive, which Python cannot read, and no extractor is installed (unar, bsdtar, unrar or "
        f"7z); extract it next to the archive (unrar x {path.name}) and run again: the folder {path.stem} is read"
    )


def _locate(archive: Archive, folders: Sequence[Path]) -> Path | None:
    """The archive's file, or the folder it unzips to, in one of ``folders`` (names compared case-insensitively)."""
    wanted = {archive.name.lower(), archive.folder_name.lower()}
    for folder in folders:
        if not folder.is_dir():
            continue
        for entry in sorted(folder.iterdir()):
            if entry.name.lower() in wanted and (entry.is_dir() or entry.is_file()):
                return entry
    return None


def find_archives(sets: Sequence[str], folders: Sequence[Path]) -> tuple[dict[str, Path], list[Archive]]:
    """Where each archive of ``sets`` is (its name → path), and the archives that are in none of ``folders``."""
    found: dict[str, Path] = {}
    missing: list[Archive] = []
    for name in sets:
        for archive in DATA_SETS[name].archives:
            path = _locate(archive, folders)
            if path is not None:
                found[archive.name] = path
            elif archive not in missing:
                missing.append(archive)
    return found, missing


def _open(path: Path, scratch: Path) -> _Source:
    if path.is_dir():
        return _FolderSource(path)
    if path.suffix.lower() == ".rar":
        return _open_rar(path, scratch)
    return _ZipSource(path)


# ---------------------------------------------------------------------------------------------- pairing


def _skip_member(member: str) -> bool:
    parts = PurePosixPath(member).parts
    return any(p.startswith(".") or p == "__MACOSX" for p in parts)


def _isic_member(member: str) -> tuple[str, str] | None:
    """``(kind, stem)`` of an ISIC archive member: ``image`` or ``mask``; None for other files (superpixels,
    licences, metadata)."""
    from skinseg.data.pairing import mask_key

    p = PurePosixPath(member)
    if _skip_member(member) or p.suffix.lower() not in _IMAGE_SUFFIXES:
        return None
    if p.stem.lower().endswith("_superpixels"):
        return None
    key = mask_key(Path(p.name))
    if key != p.stem:
        return ("mask", key) if p.suffix.lower() == ".png" else None
    return ("image", p.stem) if p.suffix.lower() in (".jpg", ".jpeg", ".png") else None


def _ph2_member(member: str) -> tuple[str, str] | None:
    """PH2: ``IMD002/IMD002_Dermoscopic_Image/IMD002.bmp`` and ``IMD002/IMD002_lesion/IMD002_lesion.bmp``."""
    p = PurePosixPath(member)
    if _skip_member(member) or p.suffix.lower() != ".bmp":
        return None
    if p.parent.name.lower().endswith("_dermoscopic_image"):
        return "image", p.stem
    if p.parent.name.lower().endswith("_lesion") and p.stem.lower().endswith("_lesion"):
        return "mask", p.stem[: -len("_lesion")]
    return None


_LAYOUTS: dict[str, Callable[[str], tuple[str, str] | None]] = {"isic": _isic_member, "ph2": _ph2_member}


@dataclass
class _Pair:
    stem: str
    image: tuple[_Source, str] | None = None
    mask: tuple[_Source, str] | None = None


def _pairs(data_set: DataSet, sources: Sequence[_Source]) -> tuple[list[_Pair], list[dict[str, str]]]:
    """The image/mask pairs the archives hold, and what was left out (unpaired or duplicate files)."""
    classify = _LAYOUTS[data_set.layout]
    by_stem: dict[str, _Pair] = {}
    left_out: list[dict[str, str]] = []
    for source in sources:
        for member in source.members():
            kind_stem = classify(member)
            if kind_stem is None:
                continue
            kind, stem = kind_stem
            if not _STEM_RE.match(stem):
                left_out.append({"file": f"{source.label}:{member}", "reason": "a name skinseg does not write"})
                continue
            pair = by_stem.setdefault(stem, _Pair(stem))
            if getattr(pair, kind) is not None:
                left_out.append({"file": f"{source.label}:{member}", "reason": f"a second {kind} for {stem}"})
                continue
            setattr(pair, kind, (source, member))
    pairs = []
    for stem in sorted(by_stem):
        pair = by_stem[stem]
        if pair.image is None or pair.mask is None:
            have = pair.image or pair.mask
            assert have is not None
            what = "an image without a mask" if pair.mask is None else "a mask without an image"
            left_out.append({"file": f"{have[0].label}:{have[1]}", "reason": what})
        else:
            pairs.append(pair)
    return pairs, left_out


# ---------------------------------------------------------------------------------------------- one pair


def _decode(data: bytes, *, mask: bool, ignore_orientation: bool = False) -> Any:
    import cv2
    import numpy as np

    flags = cv2.IMREAD_GRAYSCALE if mask else cv2.IMREAD_COLOR
    if ignore_orientation:
        flags |= cv2.IMREAD_IGNORE_ORIENTATION
    image = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if image is None:
        raise DataError("cannot be decoded")
    return image


def _binary(mask: Any) -> Any:
    """0/255 from a mask in 0/255 or 0/1."""
    import numpy as np

    cut = 1 if int(mask.max()) <= 1 else 128
    return np.where(mask >= cut, np.uint8(255), np.uint8(0))


def target_size(width: int, height: int, *, training: bool, train_size: int, long_side: int) -> tuple[int, int]:
    """``(w, h)`` a ``width × height`` photograph is written at."""
    if training:
        return train_size, train_size
    scale = min(1.0, long_side / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def _convert(pair: _Pair, out: Path, *, training: bool, train_size: int, long_side: int) -> dict[str, Any]:
    """Write one pair; its manifest entry. DataError with the reason when it cannot be used."""
    import cv2

    from skinseg.runtime.atomic import write_bytes_atomic

    assert pair.image is not None and pair.mask is not None
    (isource, imember), (msource, mmember) = pair.image, pair.mask
    image_bytes, mask_bytes = isource.read(imember), msource.read(mmember)
    mask = _binary(_decode(mask_bytes, mask=True))
    image = _decode(image_bytes, mask=False)
    if image.shape[:2] != mask.shape[:2]:  # an EXIF rotation the mask does not have
        image = _decode(image_bytes, mask=False, ignore_orientation=True)
    if image.shape[:2] != mask.shape[:2]:
        (ih, iw), (mh, mw) = image.shape[:2], mask.shape[:2]
        raise DataError(f"the image is {iw}×{ih} px but its mask {mw}×{mh}")
    height, width = mask.shape[:2]
    size = target_size(width, height, training=training, train_size=train_size, long_side=long_side)
    if size != (width, height):
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        mask = _binary(cv2.resize(mask, size, interpolation=cv2.INTER_AREA))
    ok_i, jpg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    ok_m, png = cv2.imencode(".png", mask)
    if not (ok_i and ok_m):
        raise DataError("cannot be encoded")
    image_path, mask_path = _files(out, pair.stem)
    write_bytes_atomic(image_path, jpg.tobytes())
    write_bytes_atomic(mask_path, png.tobytes())
    return {
        "stem": pair.stem,
        "image": f"{isource.label}:{imember}",
        "mask": f"{msource.label}:{mmember}",
        "original_size": [width, height],
        "size": list(size),
        "lesion_fraction": round(float((mask > 0).mean()), 4),
        "source_crc32": [getattr(isource, "crc")(imember), getattr(msource, "crc")(mmember)],  # noqa: B009
    }


# ---------------------------------------------------------------------------------------------- a data set


@dataclass
class PrepareReport:
    """What :func:`prepare` did to one data set."""

    name: str
    folder: Path
    written: int = 0
    left_out: list[dict[str, str]] = field(default_factory=list)
    up_to_date: bool = False
    expected: int = 0

    @property
    def complete(self) -> bool:
        return self.written == self.expected


def _files(folder: Path, stem: str) -> tuple[Path, Path]:
    """The image and the mask of ``stem`` in a data set folder."""
    return folder / "images" / f"{stem}.jpg", folder / "masks" / f"{stem}.png"


def _recipe(data_set: DataSet, train_size: int, long_side: int) -> dict[str, Any]:
    if data_set.training:
        return {"resize": "squashed", "size": [train_size, train_size], "jpeg_quality": JPEG_QUALITY}
    return {"resize": "long side at most", "long_side": long_side, "jpeg_quality": JPEG_QUALITY}


def _read_manifest(path: Path) -> dict[str, Any] | None:
    with contextlib.suppress(OSError, ValueError):
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else None
    return None


def prepare(
    name: str,
    archives: dict[str, Path],
    output: str | os.PathLike[str],
    *,
    train_size: int = TRAIN_SIZE,
    long_side: int = LONG_SIDE,
    force: bool = False,
    threads: int | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> PrepareReport:
    """Write data set ``name`` from its ``archives`` (name → path, from :func:`find_archives`) into
    ``output/name``: images, masks and the manifest. A rerun with the same archives and sizes, whose files are all
    there, does nothing (``force`` redoes it). Files of an earlier preparation that this one no longer writes are
    removed; other files in the folder are left alone. ``on_progress(done, total)`` after each pair.
    """
    from skinseg.runtime.atomic import write_text_atomic

    data_set = DATA_SETS[name]
    if not 32 <= train_size <= 4096 or not 64 <= long_side <= 20000:
        raise UsageError(
            f"{param('train_size')} must be 32–4096 px and {param('long_side')} 64–20000 px, got {train_size}, "
            f"{long_side}"
        )
    folder = Path(output) / name
    report = PrepareReport(name, folder, expected=data_set.pairs)
    scratch = Path(output)
    scratch.mkdir(parents=True, exist_ok=True)
    sources = [_open(archives[a.name], scratch) for a in data_set.archives]
    try:
        read = [
            {"archive": a.name, "url": a.url, **s.describe()} for a, s in zip(data_set.archives, sources, strict=True)
        ]
        recipe = _recipe(data_set, train_size, long_side)
        manifest_path = folder / MANIFEST
        previous = _read_manifest(manifest_path)
        if (
            not force
            and previous is not None
            and previous.get("archives") == read
            and previous.get("recipe") == recipe
            and all(p.is_file() for e in previous.get("pairs", []) for p in _files(folder, e["stem"]))
        ):
            report.written, report.left_out, report.up_to_date = len(previous["pairs"]), previous["left_out"], True
            return report
        pairs, left_out = _pairs(data_set, sources)
        if not pairs:
            names = ", ".join(s.label for s in sources)
            raise DataError(f"{names}: no image/mask pairs found; is this the {data_set.title}? Download it again")
        for sub in ("images", "masks"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        entries: list[dict[str, Any] | None] = [None] * len(pairs)
        done = 0
        lock = threading.Lock()

        def work(index: int) -> None:
            nonlocal done
            pair = pairs[index]
            try:
                entries[index] = _convert(
                    pair, folder, training=data_set.training, train_size=train_size, long_side=long_side
                )
            except Exception as e:  # noqa: BLE001  one bad pair never stops the set: it is left out with the reason
                image = f"{pair.image[0].label}:{pair.image[1]}" if pair.image else pair.stem
                with lock:
                    left_out.append({"file": image, "reason": str(e)})
            with lock:
                done += 1
                if on_progress is not None:
                    on_progress(done, len(pairs))

        workers = threads or min(4, os.cpu_count() or 1)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for _ in pool.map(work, range(len(pairs))):
                pass
        written = [e for e in entries if e is not None]
        stems = {e["stem"] for e in written}
        for old in (previous or {}).get("pairs", []):  # what an earlier preparation wrote and this one did not
            if isinstance(old, dict) and old.get("stem") not in stems and _STEM_RE.match(str(old.get("stem"))):
                for path in _files(folder, old["stem"]):
                    with contextlib.suppress(OSError):
                        path.unlink()
        from skinseg import __version__

        manifest = {
            "data_set": name,
            "title": data_set.title,
            "made_by": f"skinseg {__version__} data prepare",
            "made_at": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "archives": read,
            "recipe": recipe,
            "layout": {"images": "images/<stem>.jpg", "masks": "masks/<stem>.png (0 = skin, 255 = lesion)"},
            "expected_pairs": data_set.pairs,
            "pairs": written,
            "left_out": sorted(left_out, key=lambda e: e["file"]),
        }
        write_text_atomic(manifest_path, json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
        report.written, report.left_out = len(written), manifest["left_out"]
        return report
    finally:
        for s in sources:
            s.close()


def iter_missing(missing: Sequence[Archive]) -> Iterator[str]:
    """One line per missing archive: its name and official address."""
    width = max((len(a.name) for a in missing), default=0)
    for a in missing:
        yield f"  {a.name:<{width}}  {a.url}"
