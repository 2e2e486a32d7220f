"""The project's exceptions.

Every problem a user can fix is a :class:`SkinsegError` whose message is one line naming the file or value,
the rule it broke and the fix. Only the CLI catches them: it prints the message and exits with ``exit_code``.
They live in ``runtime`` (the lowest layer) so the TensorFlow-free install has them too.

The library speaks its own parameters: a message names a setting by its keyword parameter, marked with
:func:`param` (``f"{param('overlap')} must be within [0, 0.9]"``). ``str(error)`` shows it as the parameter
(``overlap must be within …``), and ``error.param`` is the one the error is about. Only the command line knows its
flags: while it runs a command it installs them with :func:`parameter_names` (``overlap`` → ``--overlap``), so the
same error, and a batch's per-image rows and report, read ``--overlap must be within …`` there.
:func:`one_line` is the one formatter of an error as a single line.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Iterator, Mapping

__all__ = [
    "ConfigError",
    "DataError",
    "ImageError",
    "MissingExtraError",
    "ModelError",
    "ParameterError",
    "ResourceError",
    "SkinsegError",
    "UsageError",
    "current_parameter_names",
    "one_line",
    "param",
    "parameter_names",
    "parameters",
    "render",
]

# A marked parameter: \x1f name [\x1e value] \x1f (control characters no message text has: shown() escapes them).
_PARAMETER = re.compile("\x1f([A-Za-z_][A-Za-z0-9_]*)(?:\x1e([^\x1e\x1f]*))?\x1f")
_names: Mapping[str, str] = {}  # how parameters are shown in this process now (the CLI's flags during a command)
_thread = threading.local()  # ... or in this thread (a Dask worker's task)


def param(name: str, value: object = None) -> str:
    """The library's parameter ``name`` (a keyword argument, such as ``"overlap"``), marked for an error message;
    with ``value``, the setting ``name=value``. Shown as ``overlap`` / ``overlap=0.9`` by the library and as
    ``--overlap`` / ``--overlap 0.9`` while the command line runs a command (see :func:`parameter_names`)."""
    return f"\x1f{name}\x1f" if value is None else f"\x1f{name}\x1e{value}\x1f"


def render(text: str, names: Mapping[str, str] | None = None) -> str:
    """``text`` with its marked parameters shown as ``names`` says (the names installed by
    :func:`parameter_names` when None); a parameter ``names`` lacks is shown as itself."""
    if names is None:
        here = getattr(_thread, "names", None)
        names = _names if here is None else here

    def one(m: re.Match[str]) -> str:
        name, value = m.group(1), m.group(2)
        if name in names:
            return names[name] if value is None else f"{names[name]} {value}"
        return name if value is None else f"{name}={value}"

    return _PARAMETER.sub(one, text) if "\x1f" in text else text


def parameters(text: str) -> list[str]:
    """The parameters marked in ``text``, in order."""
    return [m.group(1) for m in _PARAMETER.finditer(text)]


@contextlib.contextmanager
def parameter_names(names: Mapping[str, str], *, this_thread: bool = False) -> Iterator[None]:
    """Show each parameter ``name`` as ``names[name]`` in every error message rendered in this process (all its
    threads; only this one with ``this_thread``) until the block ends. The command line wraps each command in it
    with its flags; a Dask worker's task (``this_thread``) with the flags of the command that sent it."""
    global _names
    if this_thread:
        saved_here, _thread.names = getattr(_thread, "names", None), names
        try:
            yield
        finally:
            _thread.names = saved_here
        return
    saved, _names = _names, names
    try:
        yield
    finally:
        _names = saved


def current_parameter_names() -> dict[str, str]:
    """How parameters are shown here now (what :func:`parameter_names` installed; empty: as themselves)."""
    here = getattr(_thread, "names", None)
    return dict(_names if here is None else here)


class SkinsegError(Exception):
    """A problem the user can fix. ``str(error)`` is a one-line message.

    ``param``: the library parameter the error is about (given, or the first one the message marks), else None.
    """

    exit_code = 1

    def __init__(self, *args: object, param: str | None = None) -> None:
        super().__init__(*args)
        self._param = param

    @property
    def param(self) -> str | None:
        if getattr(self, "_param", None):
            return self._param
        found = parameters(super().__str__())
        return found[0] if found else None

    def __str__(self) -> str:
        return render(super().__str__())


class UsageError(SkinsegError):
    """Bad command-line input, config, or model file: nothing was done (exit code 2)."""

    exit_code = 2


class ParameterError(UsageError, ValueError):
    """A parameter's value that it does not accept (``.param`` names it): a usage error to the command line, a
    ``ValueError`` to Python code."""


class ConfigError(UsageError):
    """A config file that cannot be loaded or validated."""


class ModelError(UsageError):
    """A model file that is missing, corrupt, or not a skinseg-compatible image model."""


class DataError(UsageError):
    """A dataset that cannot be used as given (unpaired, unreadable or mis-sized files)."""


class ImageError(SkinsegError):
    """One image could not be read or processed; a batch records it and goes on."""


class MissingExtraError(UsageError):
    """An optional dependency is not installed; the message says which `pip install` fixes it."""


class ResourceError(ImageError):
    """One image could not be processed for lack of memory (or another resource of this machine): not the file's
    fault, so a batch records it and retries it on its next run."""


_OUT_OF_MEMORY = ("failed to allocate", "bad_alloc", "out of memory", "cannot allocate")


def one_line(error: BaseException, limit: int = 300, *, typed: bool = True) -> str:
    """``error`` as one line of at most ``limit`` characters: whitespace collapsed, cut at a word (`` …``); an
    error that is not a :class:`SkinsegError` is prefixed by its type (``typed``; its type alone when it says
    nothing), and running out of memory is said plainly with what to change. The one formatter of the batch's rows
    and of the messages that quote another library's error."""
    text = " ".join(str(error).split())
    if not isinstance(error, SkinsegError) and any(s in text.lower() for s in _OUT_OF_MEMORY):
        return render(f"out of memory: use a smaller {param('tile')} or {param('batch_size')}, or free memory")
    if not text:
        text = type(error).__name__
    elif typed and not isinstance(error, SkinsegError):
        text = f"{type(error).__name__}: {text}"
    if len(text) <= limit:
        return text
    return text[: text.rfind(" ", 0, limit - 1) if " " in text[: limit - 1] else limit - 1] + " …"
