"""The run folder's contract: the files ``skinseg train`` writes and ``skinseg export`` (and evaluation of a
``.keras`` model) read, named in one place.

A run folder holds:

- ``best_model.keras`` (best validation loss; written atomically), ``last.keras`` (with optimizer state, for
  ``--resume``), ``state.json`` (epoch, best value, schedule counters: :class:`RunFolder.read_state`);
- ``config.given.ini`` (the file as given), ``config.resolved.ini`` (after CLI overrides);
- ``versions.json`` (Python, TensorFlow, Keras, skinseg), ``split.json`` (:class:`Split`: the stems and files of
  each split);
- ``history.csv`` (per-epoch losses and metrics: :meth:`RunFolder.read_history`) and ``curves.png``;
- ``STOP``: made by the user, it ends training cleanly after the current step.

Pure files and JSON/CSV: no TensorFlow here (the trainer in :mod:`skinseg.training.trainer` writes the models).
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from skinseg.runtime.atomic import write_json_atomic, write_text_atomic
from skinseg.runtime.errors import UsageError

__all__ = [
    "BEST_MODEL",
    "CONFIG_GIVEN",
    "CONFIG_RESOLVED",
    "CURVES",
    "EXPORTED_MODEL",
    "HISTORY",
    "LAST_MODEL",
    "SPLIT",
    "STATE",
    "STOP_FILE",
    "VERSIONS",
    "RunFolder",
    "Split",
]

BEST_MODEL = "best_model.keras"
EXPORTED_MODEL = "model.onnx"  # what `skinseg export` writes from the run by default (skinseg.exporters.from_run)
LAST_MODEL = "last.keras"
STATE = "state.json"
CONFIG_GIVEN = "config.given.ini"
CONFIG_RESOLVED = "config.resolved.ini"
VERSIONS = "versions.json"
SPLIT = "split.json"
HISTORY = "history.csv"
CURVES = "curves.png"
STOP_FILE = "STOP"


@dataclass
class Split:
    """``split.json``: the stems of the training and validation pairs (sorted), their image files (in training
    order) and the warnings of pairing. Keys a file lacks read as empty."""

    train: list[str] = field(default_factory=list)
    valid: list[str] = field(default_factory=list)
    train_files: list[str] = field(default_factory=list)
    valid_files: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @classmethod
    def of_pairs(cls, train: list[Any], valid: list[Any], warnings: list[str]) -> Split:
        """From the training and validation pairs (objects with ``stem`` and ``image``)."""
        return cls(
            train=sorted(p.stem for p in train),
            valid=sorted(p.stem for p in valid),
            train_files=[str(p.image) for p in train],
            valid_files=[str(p.image) for p in valid],
            warnings=list(warnings),
        )

    def files(self, key: str) -> list[Path]:
        """The image files of ``key`` (``train_files`` or ``valid_files``) that still exist."""
        return [Path(p) for p in getattr(self, key) if Path(p).is_file()]


@dataclass(frozen=True)
class RunFolder:
    """The paths of one run folder's files, and readers and writers of its JSON and CSV files."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @property
    def best_model(self) -> Path:
        return self.path / BEST_MODEL

    @property
    def exported_model(self) -> Path:
        return self.path / EXPORTED_MODEL

    @property
    def last_model(self) -> Path:
        return self.path / LAST_MODEL

    @property
    def state(self) -> Path:
        return self.path / STATE

    @property
    def config_given(self) -> Path:
        return self.path / CONFIG_GIVEN

    @property
    def config_resolved(self) -> Path:
        return self.path / CONFIG_RESOLVED

    @property
    def versions(self) -> Path:
        return self.path / VERSIONS

    @property
    def split(self) -> Path:
        return self.path / SPLIT

    @property
    def history(self) -> Path:
        return self.path / HISTORY

    @property
    def curves(self) -> Path:
        return self.path / CURVES

    @property
    def stop_file(self) -> Path:
        return self.path / STOP_FILE

    @classmethod
    def of_model(cls, model: str | os.PathLike[str]) -> RunFolder | None:
        """The run folder a ``.keras`` file lies in (its folder has ``config.resolved.ini``), or None."""
        folder = cls(Path(model).parent)
        return folder if folder.config_resolved.is_file() else None

    # ------------------------------------------------------------------------------------------ split.json

    def write_split(self, split: Split) -> None:
        write_json_atomic(self.split, asdict(split))

    def read_split(self) -> Split | None:
        """The split, or None when the folder has no ``split.json``; UsageError for one that cannot be read."""
        if not self.split.is_file():
            return None
        try:
            data = json.loads(self.split.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise UsageError(f"{self.split}: cannot be read ({e}); train the run again or restore the file") from None
        if not isinstance(data, dict):
            raise UsageError(f"{self.split}: not a JSON object; train the run again or restore the file")
        known = {k: list(data.get(k) or []) for k in Split.__dataclass_fields__}
        return Split(**known)

    def split_files(self, key: str) -> list[Path]:
        """The image files of the split's ``key`` (``train_files`` or ``valid_files``) that still exist; none
        without a ``split.json``."""
        split = self.read_split()
        return split.files(key) if split else []

    # ------------------------------------------------------------------------------------------ state.json

    def write_state(self, state: dict[str, Any]) -> None:
        write_json_atomic(self.state, state)

    def read_state(self) -> dict[str, Any]:
        """The saved training state, or {} when there is none or it cannot be read."""
        try:
            return json.loads(self.state.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return {}

    # ------------------------------------------------------------------------------------------ history.csv

    def read_history(self) -> list[dict[str, float]]:
        """One row per epoch (``epoch`` an int, the other columns floats; empty cells left out); [] without a
        file."""
        if not self.history.is_file():
            return []
        with self.history.open(newline="", encoding="utf-8") as f:
            rows = [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)]
        for row in rows:
            if "epoch" in row:
                row["epoch"] = int(row["epoch"])
        return rows

    def write_history(self, rows: list[dict[str, float]]) -> None:
        keys: list[str] = []
        for r in rows:
            keys += [k for k in r if k not in keys]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=keys, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        write_text_atomic(self.history, buffer.getvalue())

    def best_epoch_metrics(self) -> dict[str, float]:
        """The validation metrics (``val_*``) of the epoch with the lowest ``val_loss``, and its ``epoch``; {}
        without a history or a validated epoch."""
        rows = [r for r in self.read_history() if "val_loss" in r]
        if not rows:
            return {}
        best = min(rows, key=lambda r: r["val_loss"])
        out = {k: float(v) for k, v in best.items() if k.startswith("val_")}
        out["epoch"] = float(best.get("epoch", 0))
        return out
