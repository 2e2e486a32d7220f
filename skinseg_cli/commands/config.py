"""`skinseg config show|init`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

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
    data: Annotated[
        Path,
        typer.Option("--data", help="The data folder `skinseg data prepare --output` made (its paths go in the file)."),
    ] = Path("data"),
    recipe: Annotated[
        str,
        typer.Option(
            "--recipe",
            help="Which shipped recipe: isic_reference (the reference recipe), default_model (the bundled "
            "model's), finetune, demo.",
        ),
    ] = "isic_reference",
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
) -> None:
    """Write a config to PATH: the reference training recipe (configs/isic_reference.config), with only the
    keys that act, its data folders under --data and its run directory runs/<name>.

    Example: skinseg config init my.config --data data
    """
    from skinseg.data.config import init_config_text
    from skinseg.runtime.atomic import write_text_atomic
    from skinseg.runtime.errors import UsageError

    if path.exists() and not force:
        raise UsageError(f"{path}: already exists; pass --force to overwrite it")
    text = init_config_text(path, data=data, recipe=recipe)
    try:
        write_text_atomic(path, text)
    except OSError as e:
        raise UsageError(f"{path}: cannot write ({e.strerror}); choose another path") from None
    out.print(f"wrote {escape(str(path))}: the {recipe} recipe; train with: skinseg train --config {escape(str(path))}")
