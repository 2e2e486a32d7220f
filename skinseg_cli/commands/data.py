"""`skinseg data prepare`: the ISIC (and PH2) archives a user downloaded, as the folders the configs read."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from skinseg.app import QuietOpt, cli_errors, data_app, err, out
from skinseg.flags import output_path
from skinseg.runtime.errors import UsageError
from skinseg.runtime.names import shown


@data_app.command("prepare")
@cli_errors
def data_prepare(
    sets: Annotated[
        list[str] | None,
        typer.Argument(
            help="Data sets to build (default: those configs/isic_reference.config reads); --list shows them all.",
            metavar="SET...",
            show_default=False,
        ),
    ] = None,
    source: Annotated[
        list[Path] | None,
        typer.Option(
            "--from",
            help="Folder holding the downloaded archives, as zip files or unzipped (repeatable; default: here).",
            show_default=False,
        ),
    ] = None,
    output: Annotated[
        Path,
        typer.Option("--output", "-o", parser=output_path, help="Where the data set folders go."),
    ] = Path("data"),
    train_size: Annotated[
        int, typer.Option("--train-size", help="Side of the squashed training images in px (the recipe's data).")
    ] = 256,
    long_side: Annotated[
        int, typer.Option("--long-side", help="Validation and test photographs: their long side at most, in px.")
    ] = 1600,
    force: Annotated[bool, typer.Option("--force", help="Build again even when the folder is up to date.")] = False,
    list_sets: Annotated[bool, typer.Option("--list", help="List the data sets, archives and addresses.")] = False,
    quiet: QuietOpt = False,
) -> None:
    """Build data set folders (images/<stem>.jpg, masks/<stem>.png in 0/255, manifest.json) from the archives
    downloaded from the ISIC challenge site (2016, 2017, 2018 Task 1) or PH2. Nothing is downloaded: a missing
    archive is listed with its official address.

    Training sets are squashed to 256×256 as the reference recipe's data; validation and test photographs keep
    their aspect, the long side at most 1600 px. The ISIC 2017 validation set becomes isic-raw.

    Example: skinseg data prepare --from ~/Downloads --output data
    """
    from skinseg.data.prepare import DATA_SETS, ISIC_DATA_PAGE, default_sets, find_archives, iter_missing, prepare
    from skinseg.progress import progress_callback

    if list_sets:
        for data_set in DATA_SETS.values():
            kind = "training, squashed" if data_set.training else "photographs, aspect kept"
            out.print(f"{data_set.name}: {data_set.title}, {data_set.pairs} pairs ({kind})", markup=False)
            for archive in data_set.archives:
                out.print(f"  {archive.name}  {archive.url}", markup=False)
        return
    chosen = list(dict.fromkeys(sets or default_sets()))
    unknown = [s for s in chosen if s not in DATA_SETS]
    if unknown:
        import difflib

        close = difflib.get_close_matches(unknown[0], list(DATA_SETS), n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        raise UsageError(f"no data set named {unknown[0]!r}; {hint}`skinseg data prepare --list` shows them")
    folders = [p.expanduser() for p in (source or [Path(".")])]
    for folder in folders:
        if not folder.is_dir():
            raise UsageError(f"--from {folder}: not a folder; give the folder the archives were downloaded to")
    found, missing = find_archives(chosen, folders)
    if missing:
        where = ", ".join(shown(f) for f in folders)
        err.print(f"missing in {escape(where)} (download them there, from {ISIC_DATA_PAGE} or these addresses):")
        for line in iter_missing(missing):
            err.print(line, markup=False, highlight=False, soft_wrap=True)
        raise UsageError(
            f"{len(missing)} archive(s) for {', '.join(chosen)} not found in {where}; download them (addresses above) "
            "and run again, or pass --from with their folder"
        )
    for name in chosen:
        with progress_callback(name, total=None, quiet=quiet, console=err) as on_progress:
            report = prepare(
                name, found, output, train_size=train_size, long_side=long_side, force=force, on_progress=on_progress
            )
        state = "up to date" if report.up_to_date else "written"
        line = f"{name}: {report.written} of {report.expected} pairs {state} in {shown(report.folder)}"
        if report.written < report.expected:
            line += f" (the official release has {report.expected}: is the archive complete?)"
        if report.left_out:
            line += f"; {len(report.left_out)} file(s) left out, listed with the reason in manifest.json"
        out.print(line, markup=False, soft_wrap=True)
    out.print(
        f"train on them: skinseg config init my.config --data {shown(output)}, then skinseg train --config my.config",
        markup=False,
        soft_wrap=True,
    )
