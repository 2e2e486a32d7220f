"""Progress display for the CLI: rich bars on a terminal, one plain line per unit otherwise (cron, pipes).

The core reports progress through callbacks and typed event records (skinseg.runtime.records); only this module
knows about rich.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from skinseg.runtime.names import json_text, shown


def use_bars(console: Console, quiet: bool) -> bool:
    return console.is_terminal and not quiet


def make_progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}", markup=False, style="bold"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}", markup=False),  # file names may contain [brackets]
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


@contextlib.contextmanager
def progress_callback(
    description: str, *, total: int | None, quiet: bool, console: Console
) -> Iterator[Callable[[int, int], None]]:
    """A ``(done, total)`` callback drawing a bar on a terminal, silent otherwise (``total`` may come later)."""
    if not use_bars(console, quiet):
        yield lambda done, n: None
        return
    with make_progress(console) as progress:
        task = progress.add_task(description, total=total, info="")
        yield lambda done, n: progress.update(task, completed=done, total=n)


def _fmt_logs(logs: dict[str, float], keys: tuple[str, ...] = ("loss", "val_loss")) -> str:
    shown = [k for k in logs if k in keys or (k.startswith("val_") and k != "val_loss")][:5]
    return " ".join(f"{k} {logs[k]:.4f}" for k in shown)


class _BarsDisplay:
    """Shared by the displays: rich bars live between ``__enter__`` and ``__exit__`` when ``self.bars`` is set."""

    console: Console
    bars: bool
    progress: Progress | None

    def __enter__(self):
        if self.bars:
            self.progress = make_progress(self.console)
            self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.__exit__(*exc)


class TrainProgress(_BarsDisplay):
    """Handles trainer events: a bar per epoch on a terminal, one line per epoch otherwise."""

    def __init__(self, *, console: Console, quiet: bool):
        self.console = console
        self.bars = use_bars(console, quiet)
        self.progress: Progress | None = None
        self.task: Any = None
        self._t0 = time.perf_counter()

    def _line(self, text: str) -> None:
        if self.progress is not None:
            self.progress.console.print(text, highlight=False, soft_wrap=True)
        else:
            self.console.print(text, highlight=False, soft_wrap=True)

    def handle(self, event: dict[str, Any]) -> None:
        kind = event["event"]
        if kind == "warning":
            self._line(f"[yellow]warning:[/yellow] {escape(event['message'])}")
        elif kind == "data" and event.get("phase") == "ready":
            self._line(
                f"data: {event['train']} training and {event['valid']} validation pairs; "
                f"{event['steps']} steps per epoch; {event['params']:,} parameters"
                + (f"; {event['precision']}" if event.get("precision") else "")
            )
        elif kind == "batch" and self.progress is not None:
            desc = f"epoch {event['epoch']}/{event['epochs']}"
            if self.task is None or self.progress.tasks[self.task].description != desc:
                self.task = self.progress.add_task(desc, total=event["steps"], info="")
            self.progress.update(self.task, completed=event["step"], info=_fmt_logs(event["logs"], ("loss",)))
        elif kind == "epoch":
            mark = " *" if event["improved"] else ""
            self._line(
                f"epoch {event['epoch']}/{event['epochs']} {_fmt_logs(event['logs'])} "
                f"lr {event['logs'].get('learning_rate', 0):.2g} {event['seconds']:.1f}s{mark}"
            )


class InferProgress(_BarsDisplay):
    """Handles `skinseg infer` events.

    - ``json``: one JSON object per image (``"event": "image"``) and one for the summary, on ``out``;
    - bars (a terminal, not ``quiet``): an images bar and a tiles bar for the current image on ``console``,
      with a line for each failed image;
    - otherwise (cron, pipes): one plain line per image and a summary line on ``out``;
    - ``quiet`` (cron's mail): only what is new: images segmented or failed in this run, warnings and the summary;
      images skipped as up to date, and failures of earlier runs not retried, are counted in the summary only.

    ``log_file``: every line of the full plain (or JSON) log, whatever is shown, is appended there.

    Plain and JSON lines start with (or carry) an ISO-8601 UTC timestamp; names are shown escaped (a newline in a
    file name cannot forge a line).
    """

    def __init__(
        self,
        *,
        out: Console,
        console: Console,
        quiet: bool,
        log_format: str = "text",
        log_file: str | os.PathLike[str] | None = None,
    ):
        self.out = out
        self.console = console
        self.quiet = quiet
        self.json = log_format == "json"
        self.bars = not self.json and use_bars(console, quiet)
        self.progress: Progress | None = None
        self.images: Any = None
        self.tiles: Any = None
        self.log: Any = None
        if log_file is not None:
            from skinseg.runtime.errors import UsageError

            try:
                self.log = open(log_file, "a", encoding="utf-8", errors="backslashreplace", buffering=1)  # noqa: SIM115
            except OSError as e:
                raise UsageError(
                    f"--log-file {shown(log_file)}: cannot open it ({e.strerror}); give a file in a writable folder"
                ) from None

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        if self.log is not None:
            self.log.close()
            self.log = None

    def _log(self, text: str, *, stamp: bool = True) -> None:
        if self.log is not None:
            try:
                self.log.write(f"{now()} {text}\n" if stamp else f"{text}\n")
            except OSError as e:  # a full disk or a lost mount: the run goes on, its report is written
                name = shown(getattr(self.log, "name", ""))
                self.log = None
                self.console.print(
                    f"[yellow]warning:[/yellow] --log-file {escape(name)}: {escape(e.strerror or str(e))}; nothing "
                    "more is logged there, the run goes on",
                    highlight=False,
                    soft_wrap=True,
                )

    def _line(self, text: str, *, style: str | None = None, stamp: bool = True, show: bool = True) -> None:
        self._log(text, stamp=stamp)
        if not show:
            return
        console = self.progress.console if self.progress is not None else self.out
        if stamp and self.progress is None:
            text = f"{now()} {text}"
        console.print(text, markup=False, highlight=False, soft_wrap=True, style=style)

    def _note(self, text: str) -> None:
        """A message for the person watching, on the terminal (stderr), even when the log goes elsewhere."""
        self._log(text)
        console = self.progress.console if self.progress is not None else self.console
        console.print(text if self.progress is not None else f"{now()} {text}", markup=False, highlight=False)

    def _end_bars(self) -> None:
        """Stop the bars before the last lines, so they are not drawn again below the summary."""
        if self.progress is not None:
            self.progress.__exit__(None, None, None)
            self.progress = None

    def handle(self, event: dict[str, Any]) -> None:
        kind = event["event"]
        if kind == "waiting":
            self._note(f"waiting for another skinseg run on {shown(event['output'])} to finish…")
        elif kind == "stopping":
            self._stopping(event)
        elif kind == "warning":  # once per run, e.g. a --scale far from the model's
            if self.json:
                self._line(json_text({"event": "warning", "time": now(), "message": event["message"]}), stamp=False)
            else:
                self._note(f"warning: {shown(event['message'])}")
        elif kind == "hidden" and not self.json:
            names = ", ".join(shown(p) for p in event["examples"])
            more = ", …" if event["count"] > len(event["examples"]) else ""
            self._line(
                f"skipping {plural(event['count'], 'hidden file')} ({names}{more}): names starting with '.' are not "
                "searched; rename a photo without the dot to segment it"
            )
        elif self.json:
            if kind == "hidden":
                self._line(json_text({**plain(event), "time": now()}), stamp=False)
            elif kind == "image_done":
                text = json_text({"event": "image", "time": now(), **plain(event["row"])})
                self._line(text, stamp=False, show=not (self.quiet and _nothing_new(event["row"])))
            elif kind == "summary":
                self._line(json_text({"event": "summary", "time": now(), **plain(event["summary"])}), stamp=False)
        elif kind == "start":
            total, model, provider = event["total"], event["model"], event["provider"]
            self._line(
                f"segmenting {plural(total, 'image')} with {shown(model)} on {provider} into {shown(event['output'])}",
                show=not self.quiet,  # quiet: the summary names the provider; the log keeps the line
            )
            if self.progress is not None:
                self.images = self.progress.add_task("images", total=event["total"], info="")
                self.tiles = self.progress.add_task("tiles", total=None, info="")
        elif kind == "settings_changed":
            self._line(
                "the model or the options changed since the last run into this folder: its images will be redone"
            )
        elif kind == "tiles" and self.progress is not None:
            self.progress.update(self.tiles, completed=event["done"], total=event["total"], info=shown(event["path"]))
        elif kind == "image_done":
            row = event["row"]
            if self.progress is not None:
                self.progress.update(self.images, completed=event["done"], info=shown(row["path"]))
            if self.progress is not None:  # bars: a line for each failed image
                show = row["status"] == "failed"
            else:
                show = not (self.quiet and _nothing_new(row))
            self._line(format_image_line(row), style="red" if row["status"] == "failed" else None, show=show)
        elif kind == "summary":
            self._end_bars()
            self._line(format_summary_line(plain(event["summary"])))

    def _stopping(self, event: dict[str, Any]) -> None:
        waiting = event.get("in_flight", 0)
        finishing = f"; finishing the {plural(waiting, 'image')} in flight" if waiting else ""
        if event["reason"] == "interrupted":
            again = " (press Ctrl-C again to stop at once)" if waiting else ""
            self._note(f"stopping{finishing}{again}; the images done are kept")
        else:
            self._note(f"stopping: {event['reason']}{finishing}; a rerun does the rest")


def plain(record: Any) -> dict[str, Any]:
    """An event, row or summary as the dict the JSON log writes (a typed record's ``to_dict``; a dict as it is)."""
    return record.to_dict() if hasattr(record, "to_dict") else dict(record)


def _nothing_new(row: dict[str, Any]) -> bool:
    """An image this run did not work on: skipped as up to date, or a failure of an earlier run not retried."""
    return row["status"] == "skipped" or row.get("retried") is False


def now() -> str:
    """The current time as ISO 8601, UTC, to the second: ``2026-12-02T10:20:31Z``."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def format_image_line(row: dict[str, Any]) -> str:
    """``ok      path  lesion 12.3%  0.84s`` (the reason instead of the lesion for a failed image)."""
    status, path = row["status"], shown(row["path"])
    if status == "failed":
        before = (
            " (failed before with the same file, model, options and output folder: not retried; --retry-failed "
            "retries it)"
            if row.get("retried") is False
            else ""
        )
        return f"failed  {path}  {shown(row['error'])}{before}"
    if status == "skipped":
        return f"skipped {path}  (outputs up to date)"
    quality = row.get("quality")
    shown_quality = "" if quality is None else f"  quality {float(quality):.2f}"
    review = "  REVIEW" if row.get("review") == 1 else ""
    lesion = f"lesion {100 * float(row['area_fraction']):.1f}%"
    return f"ok      {path}  {lesion}{shown_quality}{review}  {float(row['seconds']):.2f}s"


def format_summary_line(s: dict[str, Any]) -> str:
    """One line: counts, time, throughput, provider and where the outputs are; why a run stopped early."""
    out = shown(s["output"])
    counts = [f"{s['ok']} ok", f"{s['failed']} failed"]
    if s.get("failed_before"):
        counts.append(f"{s['failed_before']} failed before (unchanged)")
    counts.append(f"{s['skipped']} skipped")
    if s.get("review"):
        counts.append(f"{s['review']} to review (estimated Jaccard below the threshold)")
    speed = f" ({s['megapixels_per_second']:.2f} MP/s on {s['provider']})" if s["ok"] else ""
    head = f"{plural(s['total'], 'image')}: {', '.join(counts)} in {s['seconds']:.1f}s{speed}"
    if s.get("stopped"):
        done = s["total"] - s.get("not_done", 0)
        reason = "interrupted" if s["stopped"] == "interrupted" else f"stopped ({s['stopped']})"
        head = f"{reason} after {done} of {plural(s['total'], 'image')}: {', '.join(counts)}; a rerun does the rest"
    folder = s.get("folder") or {}
    if folder.get("images"):
        flagged = f" ({folder['flagged']} flagged)" if folder.get("flagged") else ""
        head += (
            f"; the folder holds {plural(folder['images'], 'image')}: {folder['segmented']} segmented{flagged}, "
            f"{folder['failed']} failed"
        )
    return (
        f"{head}; masks and overlays (<stem>_mask.png, <stem>_overlay.jpg) in {out}/, report {out}/results.csv, "
        f"gallery {out}/index.html"
    )
