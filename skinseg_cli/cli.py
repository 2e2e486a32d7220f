"""The `skinseg` console script: the app with every command registered."""

from __future__ import annotations

import sys

from skinseg.app import app, err
from skinseg.commands import (  # noqa: F401  (registers the commands)
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
