"""What a batch tells its caller, as typed records: :class:`ImageRow` (one image's result, a row of ``results.csv``)
and the progress events handed to ``on_event`` callbacks (:data:`Event`).

Each record reads like the plain dict it replaces (``row["status"]``, ``row.get("quality")``, ``event["event"]``),
so callbacks written for dicts keep working; :meth:`Record.to_dict` gives the dict that the JSON log writes, keys in
their documented order (README, "The JSON log").
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from skinseg.runtime.report import BatchSummary

__all__ = [
    "Event",
    "HiddenFiles",
    "ImageDone",
    "ImageRow",
    "ImageStart",
    "Record",
    "RunWarning",
    "SettingsChanged",
    "Start",
    "Stopping",
    "SummaryEvent",
    "Tiles",
    "Waiting",
]


class Record(Mapping):
    """Read access by name, as for the dicts these records replace (a read-only mapping of :meth:`to_dict`)."""

    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]  # the keys the dict has: an unset extra (ImageRow's retried, stop) is none

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_dict())

    def __len__(self) -> int:
        return len(self.to_dict())

    @classmethod
    def _names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, Any]:
        """The record as a plain dict (an event's kind first, under ``event``)."""
        head = {"event": self.EVENT} if hasattr(self, "EVENT") else {}
        return {**head, **{name: getattr(self, name) for name in self._names()}}


# --------------------------------------------------------------------------------------------------- rows


@dataclass(frozen=True)
class ImageRow(Record):
    """One image's result: the columns of ``results.csv`` in their order (:data:`~skinseg.runtime.report.
    CSV_FIELDS`), then two that are not columns: ``retried`` (False for an image that failed before, unchanged since,
    and was not tried again) and ``stop`` (why no image can follow this one, e.g. ``disk full``)."""

    path: str
    input: str | None = None
    width: int | None = None
    height: int | None = None
    area_px: int | None = None
    area_fraction: float | None = None
    bbox_x: int | None = None
    bbox_y: int | None = None
    bbox_w: int | None = None
    bbox_h: int | None = None
    n_components: int | None = None
    mean_prob: float | None = None
    quality: float | None = None  # the estimated Jaccard of the mask, 0-1 (skinseg.runtime.quality)
    review: int | None = None  # 1: the estimate is below the review threshold, a person should check the mask
    seconds: float | None = None
    status: str = ""  # ok, skipped or failed
    error: str = ""  # why it failed, one line
    fingerprint: str | None = None  # the input's content: size and hash
    settings: str | None = None  # the digest of the model and the options (a failure's: what it depended on)
    model_sha256: str | None = None  # the model that made the mask (its file's SHA-256), as its record says
    skinseg_version: str | None = None
    retried: bool | None = None
    stop: str | None = None

    _EXTRA: ClassVar[tuple[str, ...]] = ("retried", "stop")

    @classmethod
    def columns(cls) -> tuple[str, ...]:
        """The columns of ``results.csv``, in order: the fields but ``retried`` and ``stop``."""
        return tuple(name for name in cls._names() if name not in cls._EXTRA)

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> ImageRow:
        names = cls._names()
        return cls(**{k: v for k, v in row.items() if k in names})

    def to_dict(self) -> dict[str, Any]:
        """The columns, then ``retried`` and ``stop`` where set (as the JSON log writes a row)."""
        d = {name: getattr(self, name) for name in self._names() if name not in self._EXTRA}
        for name in self._EXTRA:
            if getattr(self, name) is not None:
                d[name] = getattr(self, name)
        return d


# --------------------------------------------------------------------------------------------------- events


@dataclass(frozen=True)
class Waiting(Record):
    """Another run holds the output folder's lock; this one waits (``wait=True``)."""

    EVENT: ClassVar[str] = "waiting"
    output: str


@dataclass(frozen=True)
class HiddenFiles(Record):
    """Before ``start``: image files skipped for their hidden names (``.x.jpg``), how many and a few of them."""

    EVENT: ClassVar[str] = "hidden"
    count: int
    examples: list[str]


@dataclass(frozen=True)
class RunWarning(Record):
    """Said once per run, e.g. a scale far from the model's (``kind`` ``scale``)."""

    EVENT: ClassVar[str] = "warning"
    kind: str
    message: str


@dataclass(frozen=True)
class Start(Record):
    """The batch starts: ``total`` inputs, the provider that runs the model, the model and the output folder."""

    EVENT: ClassVar[str] = "start"
    total: int
    provider: str
    model: str
    output: str


@dataclass(frozen=True)
class SettingsChanged(Record):
    """Right after ``start``: the folder holds outputs of another model or other options; they will be redone."""

    EVENT: ClassVar[str] = "settings_changed"
    output: str
    previous: dict[str, Any] | None
    current: dict[str, Any]


@dataclass(frozen=True)
class ImageStart(Record):
    """An image is being worked on (``index``: its place among the inputs)."""

    EVENT: ClassVar[str] = "image_start"
    index: int
    path: str


@dataclass(frozen=True)
class Tiles(Record):
    """Tiles done of an image's total."""

    EVENT: ClassVar[str] = "tiles"
    index: int
    path: str
    done: int
    total: int


@dataclass(frozen=True)
class ImageDone(Record):
    """An image's result: ``done`` of ``total`` inputs have one now."""

    EVENT: ClassVar[str] = "image_done"
    index: int
    done: int
    total: int
    row: ImageRow


@dataclass(frozen=True)
class Stopping(Record):
    """An interrupt or a full disk: no more images start; ``in_flight`` are finishing."""

    EVENT: ClassVar[str] = "stopping"
    reason: str
    in_flight: int


@dataclass(frozen=True)
class SummaryEvent(Record):
    """The batch ended and its reports are written."""

    EVENT: ClassVar[str] = "summary"
    summary: BatchSummary


Event = (
    Waiting
    | HiddenFiles
    | RunWarning
    | Start
    | SettingsChanged
    | ImageStart
    | Tiles
    | ImageDone
    | Stopping
    | SummaryEvent
)
"""The events a batch hands to ``on_event``, in the calling thread."""
