"""`skinseg config show|init`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from skinseg.app import (
    ConfigArg,
    cli_errors,
    config_app,
    load_config_for_cli,
    out,
)

# ---------------------------------------------------------------------------------------------- config


@config_app.command("show")
@cli_errors
def config_show(
    config: ConfigArg,
    only_set: Annotated[bool, typer.Option("--only-set", help="Show only the keys the file sets.")] = False,
) -> None:
    """Print the resolved config: every key with its type-checked value, paths made absolute.

    Example: skinseg config show configs/isic_reference.config
    """
    from skinseg.data.config import render_config

    cfg = load_config_for_cli(config)
    out.print(render_config(cfg, comments=False, only_present=only_set), markup=False, soft_wrap=True)


@config_app.command("init")
@cli_errors
def config_init(
    path: Annotated[Path, typer.Argument(help="Where to write the new config.", show_default=False)],
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
) -> None:
    """Write a commented default config to PATH.

    Example: skinseg config init my.config
    """
    from skinseg.data.config import default_config_text
    from skinseg.runtime.errors import UsageError

    if path.exists() and not force:
        raise UsageError(f"{path}: already exists; pass --force to overwrite it")
    try:
        path.write_text(default_config_text(), encoding="utf-8")
    except OSError as e:
        raise UsageError(f"{path}: cannot write ({e.strerror}); choose another path") from None
    out.print(f"wrote {path}")
