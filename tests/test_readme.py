"""The README's commands work as written: every `skinseg …` line of its code blocks parses against the real CLI
(commands, options, arguments), every `make` target exists and every pip extra is defined."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import tomllib
import typer

from skinseg.cli import app

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _code_lines() -> list[str]:
    lines: list[str] = []
    for block in re.findall(r"```bash\n(.*?)```", README, flags=re.S):
        joined = block.replace("\\\n", " ")
        for line in joined.splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                lines.append(line)
    return lines


def _commands(prefix: str) -> list[list[str]]:
    found = []
    for line in _code_lines():
        for part in re.split(r"\s(?:&&|\|\||;)\s", line):
            words = shlex.split(part, comments=True)
            if words and words[0] == prefix:
                found.append(words)
    return found


SKINSEG = _commands("skinseg")


def test_the_readme_shows_the_main_commands():
    shown = {" ".join(w[1:3]) for w in SKINSEG}
    for needed in ("infer samples/", "data prepare", "train --config", "evaluate --images", "export runs/reference"):
        assert any(s.startswith(needed) for s in shown), needed


@pytest.mark.parametrize("words", SKINSEG, ids=lambda w: " ".join(w)[:70])
def test_every_skinseg_command_of_the_readme_parses(words):
    command = typer.main.get_command(app)
    args = words[1:]
    name = "skinseg"
    while getattr(command, "commands", None) and args and args[0] in command.commands:
        name, command, args = args[0], command.commands[args[0]], args[1:]
    assert not getattr(command, "commands", None), f"{' '.join(words)}: not a command"
    try:
        command.make_context(name, list(args))
    except typer.Exit:
        pass
    except Exception as e:  # Typer's own click raises its UsageError for a wrong option or argument
        pytest.fail(f"{' '.join(words)}: {getattr(e, 'format_message', e.__str__)()}")


def test_the_parse_check_catches_a_wrong_option():
    command = typer.main.get_command(app).commands["infer"]
    with pytest.raises(Exception, match="No such option"):
        command.make_context("infer", ["samples/", "--output", "o", "--no-such-option"])


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
@pytest.mark.parametrize("words", _commands("make"), ids=lambda w: " ".join(w))
def test_every_make_target_of_the_readme_exists(words):
    done = subprocess.run(["make", "-n", *words[1:]], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_every_pip_extra_of_the_readme_exists():
    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    named = set()
    for words in _commands("pip"):
        for word in words:
            if m := re.fullmatch(r"(?:\.|skinseg-edge)\[([\w,\-]+)\]", word):
                named |= set(m.group(1).split(","))
    assert named and named <= extras, named - extras
