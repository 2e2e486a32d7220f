"""The `skinseg` Typer app and what its commands share: consoles, error handling, option aliases.

The command line is a thin shell that parses options, calls the core with keywords, and prints.

Problems the user can fix arrive as :class:`skinseg.runtime.errors.SkinsegError` and are printed as one red line
(exit code 2 for usage errors, 1 otherwise). Heavy imports (TensorFlow) happen inside the commands that need them.
"""

from __future__ import annotations

import contextlib
import functools
import signal
import sys
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from skinseg import __version__, install_hint
from skinseg.runtime.errors import MissingExtraError, SkinsegError, parameter_names, render
from skinseg.runtime.names import shown


def _click_style_help() -> None:
    """Help as click writes it: Typer 0.2x shows a type after every flag (``--help <bool>``) and arguments as
    ``{path}`` and ``{SOURCE...}...`` in the usage line. Here flags show no type, and arguments read ``PATH``,
    ``[PATH]`` and ``SOURCE...`` (tests/test_cli_help.py reads every command's help). Each patch applies only where
    Typer has the method it replaces."""
    from typer import core

    option, argument = getattr(core, "TyperOption", None), getattr(core, "TyperArgument", None)
    if option is not None and hasattr(option, "display_type_rich"):
        typed = option.display_type_rich

        def display_type_rich(self: Any, ctx: Any) -> str | None:
            return None if self.is_flag or self.count else typed(self, ctx)

        option.display_type_rich = display_type_rich
    if argument is not None and isinstance(getattr(argument, "display_name_raw", None), property):

        def display_name_raw(self: Any) -> str:
            return self.metavar or (self.name or "").upper()

        def usage_name(self: Any) -> str:
            name = display_name_raw(self)
            name += "..." if self.nargs != 1 and not name.endswith("...") else ""
            return name if self.required else f"[{name}]"

        argument.display_name_raw = property(display_name_raw)
        argument._usage_display_name = usage_name


def _fold_rich_tables() -> None:
    """Typer draws options as a rich table whose cells end in "…" where a terminal is narrow: at 80 columns
    ``--overlay-opacity`` read ``--overlay-opac…`` and file names in the help were cut. Its tables fold such cells
    onto the next line instead (a long flag may continue on the next line, but no character is lost)."""
    from rich.columns import Columns
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text
    from typer import rich_utils

    if not hasattr(rich_utils, "Table") or getattr(rich_utils.Table, "folds", False):
        return

    def fold(renderable: Any) -> Any:
        if isinstance(renderable, Text):
            renderable.overflow = "fold"
        for inner in getattr(renderable, "renderables", ()) if isinstance(renderable, (Group, Columns)) else ():
            fold(inner)
        return renderable

    class FoldingTable(Table):
        folds = True

        def add_row(self, *renderables: Any, **kwargs: Any) -> None:
            super().add_row(*map(fold, renderables), **kwargs)
            for column in self.columns:
                column.overflow = "fold"

    rich_utils.Table = FoldingTable  # type: ignore[misc]


def _folding_help_tables() -> None:
    """:func:`_fold_rich_tables` when a help is drawn, not at start-up: importing Typer's rich help (rich's
    markdown among it) costs every command, a cron job's included, about 50 ms."""
    from typer import core

    for cls in (getattr(core, "TyperCommand", None), getattr(core, "TyperGroup", None)):
        if cls is None or not hasattr(cls, "format_help"):
            continue

        def format_help(self: Any, ctx: Any, formatter: Any, _drawn: Any = cls.format_help) -> None:
            _fold_rich_tables()
            return _drawn(self, ctx, formatter)

        cls.format_help = format_help


_click_style_help()
_folding_help_tables()

app = typer.Typer(
    name="skinseg",
    help="Skin-lesion segmentation at the edge: train a UNet, export it to ONNX, segment large dermoscopy images.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
config_app = typer.Typer(help="Read, check and write train_eval_infer.config files.", no_args_is_help=True)
app.add_typer(config_app, name="config")
data_app = typer.Typer(help="Build the training and evaluation folders from downloaded archives.", no_args_is_help=True)
app.add_typer(data_app, name="data")
model_app = typer.Typer(help="What a model is: metadata, training data, figures, defaults.", no_args_is_help=True)
app.add_typer(model_app, name="model")


class _Guarded:
    """``sys.stdout`` or ``sys.stderr`` for a console, except that a stream that cannot be written silences that
    console instead of stopping the work: a closed pipe (``skinseg infer … | head -1``) quietly; any other error on
    stdout (a cron log on a full disk: ENOSPC, EIO) with one warning on stderr, if stderr can take it. The rest of the
    run goes on, its report is written, and nothing complains at exit.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.closed = False

    @property
    def stream(self) -> Any:
        return getattr(sys, self.name)

    def write(self, text: str) -> int:
        if self.closed or self.stream is None:
            return len(text)
        try:
            return self.stream.write(text)
        except OSError as e:
            self._close(e)
            return len(text)

    def flush(self) -> None:
        if not self.closed and self.stream is not None:
            try:
                self.stream.flush()
            except OSError as e:
                self._close(e)

    def _close(self, error: OSError) -> None:
        import contextlib
        import os

        self.closed = True
        if self.name == "stdout" and not isinstance(error, BrokenPipeError):
            with contextlib.suppress(OSError):
                err.print(
                    f"[yellow]warning:[/yellow] standard output: {escape(error.strerror or str(error))}; "
                    "nothing more is printed there, the work goes on",
                    soft_wrap=True,
                )
        try:  # later writes (and the interpreter's own flush at exit) go nowhere
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self.stream.fileno())
            os.close(devnull)
        except (OSError, ValueError, AttributeError):
            pass

    def isatty(self) -> bool:
        return not self.closed and self.stream is not None and self.stream.isatty()

    def fileno(self) -> int:
        if self.stream is None:
            raise OSError(f"standard {self.name[3:]} is closed")
        return self.stream.fileno()

    @property
    def encoding(self) -> str:
        return getattr(self.stream, "encoding", "utf-8") or "utf-8"


# emoji=False: rich would turn ":x:" in a file name into an emoji, markup or not (names are escaped for markup).
out = Console(file=_Guarded("stdout"), highlight=False, soft_wrap=True, emoji=False)  # type: ignore[arg-type]
err = Console(file=_Guarded("stderr"), highlight=False, soft_wrap=True, emoji=False)  # type: ignore[arg-type]

TRAIN_EXTRA_HINT = f"skinseg train needs TensorFlow: install the train extra, {install_hint('train')}"


def option_flags() -> dict[str, str]:
    """Each option's parameter name and its long flag (``overlap`` → ``--overlap``), read from the Typer commands'
    own declarations (one name is one flag in every command). The library's errors name its parameters; while a
    command runs they show these flags instead (:func:`cli_errors`)."""
    typers = [app, *(group.typer_instance for group in app.registered_groups)]
    return dict(_option_flags(tuple(len(t.registered_commands) for t in typers)))


@functools.cache
def _option_flags(_registered: tuple[int, ...]) -> dict[str, str]:  # again when a command was registered since
    flags: dict[str, str] = {}

    def add(command: Any) -> None:
        for p in command.params:
            longs = [o for o in p.opts if o.startswith("--")]
            if p.param_type_name == "option" and p.name and longs:
                flags.setdefault(p.name, longs[0])
        for sub in getattr(command, "commands", {}).values():
            add(sub)

    add(typer.main.get_command(app))
    return flags


class _Flags(Mapping[str, str]):
    """:func:`option_flags`, read only when a message names a parameter (reading the declarations takes 0.1 s)."""

    def __getitem__(self, name: str) -> str:
        return option_flags()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(option_flags())

    def __len__(self) -> int:
        return len(option_flags())


def cli_errors(fn):
    """Turn a SkinsegError into one red line and its exit code; never a traceback for a user's mistake. While the
    command runs, the library's errors name its options by their flags (:func:`option_flags`)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with parameter_names(_Flags()):
            try:
                return fn(*args, **kwargs)
            except SkinsegError as e:
                for message in getattr(e, "messages", None) or [e]:  # a config's problems, all at once: a line each
                    err.print(f"[red]error:[/red] {escape(shown(render(str(message))))}", soft_wrap=True)
                raise typer.Exit(e.exit_code) from None
            except OSError as e:  # a file the command writes or reads: the path and the reason, not a traceback
                where = f"{shown(e.filename)}: " if e.filename else ""
                reason = e.strerror or str(e)
                err.print(
                    f"[red]error:[/red] {escape(where + reason)}; check the path and its permissions", soft_wrap=True
                )
                raise typer.Exit(2) from None

    return wrapper


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def sigterm_as_interrupt():
    """Let SIGTERM (cron's timeout, systemd stop) end the run like Ctrl-C: the report is written on the way out."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def require_modules(*names: str, hint: str) -> None:
    """Fail with one line (``hint``: what to install) when one of the modules ``names`` is not installed."""
    import importlib.util

    if any(importlib.util.find_spec(name) is None for name in names):
        raise MissingExtraError(hint)


def require_tensorflow(hint: str = TRAIN_EXTRA_HINT) -> None:
    """Fail with one line when TensorFlow is not installed; otherwise import it without its start-up chatter."""
    import os

    from skinseg.training.tf_setup import configure_tensorflow

    require_modules("tensorflow", "keras", hint=hint)
    configure_tensorflow()
    # TensorFlow's C++ layer logs oneDNN/CUDA notices to fd 2 before any setting applies: mute fd 2 while importing.
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            import tensorflow

            tensorflow.config.list_physical_devices()  # probes CUDA now, while its "no driver" notice is muted
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _version(value: bool) -> None:
    if value:
        out.print(f"skinseg {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", help="Print the version and exit.", callback=_version, is_eager=True)
    ] = False,
) -> None:
    """skinseg: train, export, infer, evaluate."""
    configure_process()


def configure_process() -> None:
    """What the command line sets in its own process as it starts, before any command loads OpenCV or
    onnxruntime (the library sets nothing on import): OpenCV's decoder pixel limit to skinseg's ``--max-pixels``
    default unless the environment has one (:func:`~skinseg.runtime.defaults.set_decoder_limit`; `skinseg infer`
    raises it with its ``--max-pixels``), and onnxruntime's telemetry off: onnxruntime (1.2x+) otherwise writes a
    device id and an event database under ~/.cache/Microsoft at import, and warns in colour when HOME is unwritable;
    a cron job writes nothing outside --output. Both variables are read once, when their library loads."""
    import os

    from skinseg.runtime.defaults import set_decoder_limit

    set_decoder_limit(keep_existing=True)
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")


# ---------------------------------------------------------------------------------------------- shared options

ConfigArg = Annotated[Path, typer.Argument(help="A train_eval_infer.config file.", show_default=False)]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="Random seed (overrides \\[train] seed).")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Plain lines only, no progress bars.")]


def load_config_for_cli(config: Path, overrides: dict[str, Any] | None = None):
    from skinseg.data.config import apply_overrides, load_config

    cfg = load_config(config)
    if overrides:
        apply_overrides(cfg, overrides)
    for w in cfg.warnings:
        err.print(f"[yellow]warning:[/yellow] {escape(w)}", soft_wrap=True)
    return cfg
