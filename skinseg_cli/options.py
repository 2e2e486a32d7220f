"""Option declarations shared by `skinseg infer` and `skinseg evaluate` (declared once, used by both)."""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Any

import typer


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


def infer_options(values: dict[str, Any]):
    """:class:`~skinseg.runtime.batch.InferOptions` from a command's parameters (``locals()``): the shared options
    are taken by name, others ignored; ``device`` may be the enum; ``max_pixels`` None means the default."""
    import dataclasses

    from skinseg.runtime.batch import InferOptions

    names = {f.name for f in dataclasses.fields(InferOptions)}
    chosen = {k: v for k, v in values.items() if k in names}
    if isinstance(chosen.get("device"), Device):
        chosen["device"] = chosen["device"].value
    if chosen.get("max_pixels") is None:
        chosen.pop("max_pixels", None)
    return InferOptions(**chosen)
