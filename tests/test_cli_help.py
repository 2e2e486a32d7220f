"""Every command's help reads as click writes it: flags without a type, arguments as PATH / [PATH] / SOURCE....;
the examples name config files that exist, and -q means --quiet everywhere."""

from __future__ import annotations

import re

import click
import pytest
import typer
from typer.testing import CliRunner

from skinseg.cli import app
from tests.support import ROOT, invoke

runner = CliRunner()


def _commands(group: click.Command, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = [prefix]
    for name, command in (getattr(group, "commands", None) or {}).items():  # Typer's groups are click Commands
        found += _commands(command, (*prefix, name))
    return found


COMMANDS = _commands(typer.main.get_command(app))


def test_every_command_is_checked():
    assert {("infer",), ("config", "init"), ("data", "prepare"), ("model", "info")} <= set(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "skinseg")
def test_help_shows_no_type_after_flags_and_plain_argument_names(command):
    result = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "<bool>" not in result.output  # `--help <bool>`, `--force <bool>` before
    usage = next(line for line in result.output.splitlines() if "Usage:" in line)
    assert "{" not in usage and "}" not in usage, usage  # `{path}`, `{SOURCE...}...` before
    assert "......" not in result.output and "...}..." not in usage and "[[" not in usage
    # argument names in capitals, as in the usage line: PATH, SOURCE..., [MODEL]
    for name in re.findall(r"\s([\[\]A-Za-z_.]+)\s*$", usage):
        assert name == "[OPTIONS]" or name.strip("[].").isupper(), usage


def test_a_missing_argument_is_named_as_the_usage_line_names_it():
    result = runner.invoke(app, ["config", "init"], env={"COLUMNS": "200"})
    assert result.exit_code == 2 and "Missing argument 'PATH'" in result.output


@pytest.mark.parametrize("command", ["train", "export", "infer", "evaluate", "config"])
def test_help_keeps_section_names_and_examples_name_files_that_exist(command):
    result = invoke(command, "--help") if command != "config" else invoke("config", "show", "--help")
    assert result.exit_code == 0
    text = result.output
    if command == "train":
        assert "[train]" in text
    for word in text.split():
        if word.startswith("configs/") and word.endswith(".config"):
            assert (ROOT / word).is_file(), word


def test_q_means_quiet_everywhere():
    import re

    for command in ("infer", "evaluate", "export", "train"):
        text = re.sub(r"\x1b\[[0-9;]*m", "", invoke(command, "--help").output)
        for line in text.splitlines():
            if re.search(r"(^|[\s,│])-q\b", line):
                assert "--quiet" in line, (command, line)
    assert "-q" not in re.sub(r"\x1b\[[0-9;]*m", "", invoke("export", "--help").output).split("--quantize")[1][:30]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "skinseg")
def test_at_80_columns_no_flag_or_word_of_the_help_is_cut(command):
    """Rich's tables ended narrow cells in "…": `--overlay-opac…`, `<stem>_contours…` at 80 columns (an SSH
    session). Folded cells keep every character."""
    result = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    cells = re.sub(r"[│╭╮╰╯─]", " ", result.output)
    assert not re.search(r"\w…", cells.replace("tls://…", "")), result.output
