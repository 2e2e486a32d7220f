"""The `skinseg` console script: the app with every command registered."""

from __future__ import annotations

import os
import sys


def _open_standard_streams() -> None:
    """Put ``/dev/null`` on a standard descriptor (0, 1, 2) the caller closed (``skinseg infer … >&-`` from cron or
    a service manager), before anything opens a file: the first file opened would otherwise get descriptor 1 and
    receive what is printed, and Python leaves ``sys.stdout`` None."""
    for fd, name, mode in ((0, "stdin", "r"), (1, "stdout", "w"), (2, "stderr", "w")):
        try:
            os.fstat(fd)
            continue
        except OSError:
            pass
        null = os.open(os.devnull, os.O_RDWR)
        if null != fd:
            os.dup2(null, fd)
            os.close(null)
        if getattr(sys, name) is None:
            setattr(sys, name, open(fd, mode, closefd=False, encoding="utf-8", errors="backslashreplace"))  # noqa: SIM115


_open_standard_streams()

from skinseg.app import app, err  # noqa: E402  (after the standard streams exist)
from skinseg.commands import (  # noqa: E402, F401  (registers the commands)
    augment,
    config,
    data,
    evaluate,
    export,
    infer,
    model,
    synth,
    train,
)

__all__ = ["app", "main"]


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
