"""Option declarations shared by `skinseg infer` and `skinseg evaluate` (declared once, used by both)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

# --overlay-color names, as RGB
OVERLAY_COLORS: dict[str, tuple[int, int, int]] = {
    "green": (0, 255, 0),
    "magenta": (255, 0, 255),
    "yellow": (255, 255, 0),
    "cyan": (0, 255, 255),
    "red": (255, 0, 0),
    "blue": (0, 0, 255),
    "white": (255, 255, 255),
    "black": (0, 0, 0),
}


def output_path(text: str | Path) -> Path:
    """``--output`` as a path; an empty one is refused (``Path("")`` would be the current folder)."""
    if not str(text).strip():
        raise typer.BadParameter("is empty; give the file or folder the results go to")
    return Path(text)


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"
    tensorrt = "tensorrt"
    openvino = "openvino"


DeviceOpt = Annotated[Device, typer.Option("--device", help="Where the model runs; the one used is reported.")]
ThreadsOpt = Annotated[
    int | None, typer.Option("--threads", min=1, help="onnxruntime threads (default: one per core).")
]
TileOpt = Annotated[int | None, typer.Option("--tile", min=1, help="Tile size in px (default: the model's).")]
ScaleOpt = Annotated[
    str | None,
    typer.Option("--scale", help="native, tile, a factor such as 0.25, or a long side in px (default: the model's)."),
]
OverlapOpt = Annotated[float, typer.Option("--overlap", help="Fraction of a tile shared with its neighbours.")]
BatchSizeOpt = Annotated[int, typer.Option("--batch-size", min=1, help="Tiles per model call.")]
ThresholdOpt = Annotated[float | None, typer.Option("--threshold", help="Probability cut-off (default: the model's).")]
ReviewBelowOpt = Annotated[
    float | None,
    typer.Option(
        "--review-below",
        metavar="JACCARD",
        help="Flag a mask for review when its estimated Jaccard (the quality column) is below this (default: the "
        "model's threshold, chosen to catch 80% of failures; docs/quality.md).",
    ),
]
KeepLargestOpt = Annotated[
    bool | None,
    typer.Option(
        "--keep-largest/--no-keep-largest",
        help="Keep only the largest lesion (default: the model's recommendation, else no).",
        show_default=False,
    ),
]
FillHolesOpt = Annotated[
    bool | None,
    typer.Option(
        "--fill-holes/--no-fill-holes",
        help="Fill holes in the mask (default: the model's recommendation, else yes).",
        show_default=False,
    ),
]
TtaOpt = Annotated[
    bool | None,
    typer.Option(
        "--tta/--no-tta",
        help="Average each tile with its three flips: 4× the model's work (default: the model's recommendation).",
        show_default=False,
    ),
]
MaxPixelsOpt = Annotated[int | None, typer.Option("--max-pixels", min=1, help="Refuse larger images (default 250 MP).")]
OverlaySizeOpt = Annotated[
    str,
    typer.Option(
        "--overlay-size",
        help="Long side of <stem>_overlay.jpg in px, or 'full' for the photo's size (the mask is always full size).",
    ),
]
MemoryLimitOpt = Annotated[
    str,
    typer.Option(
        "--memory-limit",
        help="Memory the images in flight may take together, e.g. 800M or 2G (auto: a quarter of RAM, 1G at most).",
    ),
]
MaxInFlightOpt = Annotated[int, typer.Option("--max-in-flight", min=1, help="Images worked on at once.")]
InferQuietOpt = Annotated[
    bool,
    typer.Option(
        "--quiet",
        "-q",
        help="For cron: no bars; print only this run's new and failed images, warnings and the summary "
        "(images skipped as up to date are counted, not listed; --log-file keeps every line).",
    ),
]
LogFileOpt = Annotated[
    Path | None,
    typer.Option("--log-file", help="Append the full timestamped log (every image, skipped ones too) to this file."),
]
OverlayColorOpt = Annotated[
    str,
    typer.Option(
        "--overlay-color",
        help="The overlay's colour: " + ", ".join(OVERLAY_COLORS) + " or #RRGGBB (magenta where photos have green "
        "stickers).",
    ),
]
OverlayOpacityOpt = Annotated[
    float,
    typer.Option(
        "--overlay-opacity", min=0.0, max=1.0, help="How much of the colour fills the lesion (0: outline only)."
    ),
]


def segment_options(
    *,
    device: Device | str,
    threads: int | None,
    tile: int | None,
    scale: str | None,
    overlap: float,
    batch_size: int,
    threshold: float | None,
    keep_largest: bool | None,
    fill_holes: bool | None,
    tta: bool | None,
    max_pixels: int | None,
):
    """:class:`~skinseg.runtime.options.SegmentOptions` from the segmentation flags, each by name (a renamed
    parameter is a TypeError, not a silently dropped option): ``device`` may be the enum; ``max_pixels`` None
    means the default; ``threads`` above this machine's cores is lowered to them, with a note."""
    import os

    from skinseg.runtime.options import SegmentOptions

    cores = os.cpu_count() or 1
    if threads and threads > cores:
        from skinseg.app import err

        err.print(f"note: --threads {threads} is more than this machine's {cores} cores; using {cores}")
        threads = cores
    return SegmentOptions(
        device=device.value if isinstance(device, Device) else device,
        threads=threads,
        tile=tile,
        scale=scale,
        overlap=overlap,
        batch_size=batch_size,
        threshold=threshold,
        keep_largest=keep_largest,
        fill_holes=fill_holes,
        tta=tta,
        max_pixels=SegmentOptions.max_pixels if max_pixels is None else max_pixels,
    )


def infer_options(
    segment,
    *,
    save_prob: bool,
    contours: bool,
    overwrite: bool,
    overlay_size: str | int | None,
    retry_failed: bool,
    memory_limit: str | int | None,
    max_in_flight: int,
    overlay_color: str | tuple[int, int, int],
    overlay_opacity: float,
    review_below: float | None,
):
    """:class:`~skinseg.runtime.options.InferOptions`: the :class:`SegmentOptions` ``segment`` and the batch flags,
    each by name; sizes and colours in their CLI form are parsed (bad values are :class:`UsageError` naming the
    flag)."""
    from skinseg.runtime.options import InferOptions

    return InferOptions.of(
        segment,
        save_prob=save_prob,
        contours=contours,
        overwrite=overwrite,
        overlay_size=parse_overlay_size(overlay_size),
        retry_failed=retry_failed,
        memory_limit=parse_bytes(memory_limit, "--memory-limit"),
        max_in_flight=max_in_flight,
        overlay_color=parse_color(overlay_color),
        overlay_opacity=overlay_opacity,
        review_below=review_below,
    )


def parse_color(text: str | tuple[int, int, int]) -> tuple[int, int, int]:
    """An ``--overlay-color``: a name of :data:`OVERLAY_COLORS` or ``#RRGGBB``, as an RGB tuple."""
    from skinseg.runtime.errors import UsageError

    if isinstance(text, tuple):
        return text
    name = str(text).strip().lower()
    if name in OVERLAY_COLORS:
        return OVERLAY_COLORS[name]
    if len(name) == 7 and name.startswith("#"):
        try:
            return int(name[1:3], 16), int(name[3:5], 16), int(name[5:7], 16)
        except ValueError:
            pass
    raise UsageError(f"--overlay-color must be one of {', '.join(OVERLAY_COLORS)} or #RRGGBB, got {text!r}")


def parse_overlay_size(text: str | int | None) -> int | None:
    """``full`` → None (the photo's size); a number of pixels from 64 to 65,500 otherwise."""
    from skinseg.runtime.errors import UsageError

    if text is None or str(text).strip().lower() == "full":
        return None
    try:
        value = int(str(text).strip())
    except ValueError:
        value = 0
    if not 64 <= value <= 65_500:
        raise UsageError(f"--overlay-size must be 'full' or a number of pixels from 64 to 65500, got {text!r}")
    return value


def parse_bytes(text: str | int | None, option: str) -> int | None:
    """``auto`` → None; ``800M``, ``2G``, ``1.5g``, ``512k`` or a number of bytes otherwise (at least 64 MB)."""
    import re

    from skinseg.runtime.errors import UsageError

    if text is None or str(text).strip().lower() in ("", "auto"):
        return None
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([kKmMgGtT]?)[bB]?\s*", str(text))
    if not m:
        raise UsageError(f"{option} must be a size such as 800M or 2G (or auto), got {text!r}")
    value = int(float(m.group(1)) * 1024 ** " KMGT".index((m.group(2) or " ").upper()))
    if value < 64 << 20:
        raise UsageError(f"{option} {text} is below 64M: not even one image fits; give more, or auto")
    return value
