"""What skinseg leaves in the repository: `make bench` writes its figures to build/ unless asked to update the
docs, and everything the README's walk-throughs create there is ignored by git and removed by `make distclean`."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("make") is None or shutil.which("git") is None, reason="needs make, git")


def _dry_run(*args: str) -> list[list[str]]:
    done = subprocess.run(["make", "-n", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return [shlex.split(line) for line in done.stdout.splitlines() if line.strip()]


def _written_by_bench(*args: str) -> list[str]:
    targets = []
    for words in _dry_run("bench", *args):
        if any(w.startswith("benchmarks/bench_") for w in words):
            targets += [words[i + 1] for i, w in enumerate(words[:-1]) if w in ("--markdown", "--out")]
    return targets


def test_make_bench_writes_its_figures_to_build_unless_asked_to_update_the_docs():
    plain = _written_by_bench()
    assert plain and all(t.startswith("build/bench/") for t in plain), plain
    updating = _written_by_bench("UPDATE_DOCS=1")
    assert {"docs/folder_performance.md", "docs/performance.md", "benchmarks/results.json"} == set(updating)


# what the README's commands create inside the repository
MADE_BY_THE_README = ["demo_output/", "runs/", "eval/", "clinic/", "grid.png", "build/", "runs/demo-data/"]


@pytest.mark.parametrize("path", MADE_BY_THE_README)
def test_what_the_walkthroughs_create_is_ignored_by_git(path):
    done = subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT, timeout=30)
    assert done.returncode == 0, f"{path} is not ignored by .gitignore"


def test_make_distclean_removes_everything_skinseg_made_and_clean_keeps_trained_models():
    removed_by_clean = {w for words in _dry_run("clean") if words[:2] == ["rm", "-rf"] for w in words[2:]}
    removed = removed_by_clean | {w for words in _dry_run("distclean") if words[:2] == ["rm", "-rf"] for w in words[2:]}
    for path in MADE_BY_THE_README:
        assert path.split("/")[0] in removed, path  # a folder goes with its contents
    assert ".venv" in removed and "runs" not in removed_by_clean  # clean never deletes a trained model
