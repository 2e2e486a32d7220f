"""Static checks: ruff (with bandit rules) passes, no code execution or unsafe deserialisation, a TF-free runtime.

The source scans read Python *tokens* (not raw text), so a word in a docstring or a payload inside a test's string
literal is not a hit, while any call in code is.
"""

from __future__ import annotations

import ast
import io
import shutil
import subprocess
import sys
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY_MODULES = ("tensorflow", "keras", "tf2onnx", "tf_keras")
PICKLE_NAMES = frozenset({"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "shelve", "marshal"})


def python_sources() -> list[Path]:
    """The repo's Python files: tracked ones plus new files not yet committed (ignored files excluded)."""
    proc = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "*.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    files = [ROOT / line for line in proc.stdout.splitlines() if line]
    return sorted(p for p in set(files) if p.is_file())


def code_tokens(path: Path) -> list[tokenize.TokenInfo]:
    """The tokens of a Python file without comments, strings and layout tokens."""
    skip = {tokenize.COMMENT, tokenize.STRING, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT}
    fstring = {getattr(tokenize, n) for n in ("FSTRING_START", "FSTRING_MIDDLE", "FSTRING_END") if hasattr(tokenize, n)}
    text = path.read_text(encoding="utf-8")
    return [t for t in tokenize.generate_tokens(io.StringIO(text).readline) if t.type not in skip | fstring]


def unsafe_calls(path: Path) -> list[str]:
    """``file:line: what`` for every eval or exec call, pickle-like module, shell=True, os.system or os.popen."""
    tokens = code_tokens(path)
    hits = []
    for i, tok in enumerate(tokens):
        nxt = tokens[i + 1].string if i + 1 < len(tokens) else ""
        after = tokens[i + 2].string if i + 2 < len(tokens) else ""
        prev = tokens[i - 1].string if i else ""
        what = None
        if tok.type == tokenize.NAME and tok.string in ("eval", "exec") and nxt == "(" and prev != "def":
            what = f"{tok.string}("
        elif tok.type == tokenize.NAME and tok.string in PICKLE_NAMES:
            what = tok.string
        elif tok.string in ("shell", "allow_pickle") and nxt == "=" and after == "True":
            what = f"{tok.string}=True"
        elif tok.string == "os" and nxt == "." and after in ("system", "popen"):
            what = f"os.{after}"
        if what:
            name = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
            hits.append(f"{name}:{tok.start[0]}: {what}")
    return hits


def imported_modules(path: Path) -> set[str]:
    """Top-level names of every module a file imports, anywhere in it (also inside functions)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
            "import_module",
            "__import__",
        ):
            names.update(a.value.split(".")[0] for a in node.args[:1] if isinstance(a, ast.Constant))
    return names


# ------------------------------------------------------------------------------------------------------ tests


def test_ruff_with_the_project_config_passes():
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed")
    proc = subprocess.run(
        [ruff, "check", "--no-cache", "--output-format", "concise", "."],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


def test_project_config_selects_the_bandit_rules():
    try:
        import tomllib
    except ImportError:  # pragma: no cover - Python 3.10
        pytest.skip("tomllib needs Python 3.11")
    lint = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["ruff"]["lint"]
    assert "S" in lint["select"], "the bandit (S) rules must stay selected"
    ignored = set(lint.get("ignore", []))
    assert not ignored & {"S", "S102", "S301", "S307", "S602", "S605"}, ignored
    for pattern, rules in lint.get("per-file-ignores", {}).items():
        if "S" in rules:
            assert pattern.startswith(("tests", "benchmarks")), f"bandit rules are off for {pattern}"


def test_sources_have_no_eval_exec_pickle_shell_or_os_system():
    sources = python_sources()
    assert len(sources) > 30 and ROOT / "runtime" / "batch.py" in sources
    hits = [hit for path in sources for hit in unsafe_calls(path)]
    assert hits == []


def test_the_scanner_finds_what_it_looks_for(tmp_path):
    """The scanner itself: every pattern is found in code, nothing in strings, comments or literal_eval."""
    bad = tmp_path / "probe.py"
    ev, ex = "eval", "exec"  # spelled apart so that this file itself holds no call for a scanner to flag
    bad.write_text(
        "import os, pickle, subprocess\n"
        "import ast\n"
        f'x = {ev}("1")\n'
        f"{ex}(compile('', '', 'exec'))\n"
        "subprocess.run('ls', shell=True)\n"
        "os.system('ls')\n"
        "os.popen('ls')\n"
        "ast.literal_eval('1')  # eval( in a comment\n"
        f"s = '{ex}(pickle) shell=True os.system'\n"
        f'"""{ev}(x) in a docstring"""\n'
    )
    found = [h.split(": ", 1)[1] for h in unsafe_calls(bad)]
    assert found == ["pickle", f"{ev}(", f"{ex}(", "shell=True", "os.system", "os.popen"]


def test_runtime_never_imports_tensorflow_keras_or_tf2onnx(tmp_path):
    files = sorted((ROOT / "runtime").rglob("*.py"))
    assert ROOT / "runtime" / "segmenter.py" in files
    offenders = {
        str(p.relative_to(ROOT)): sorted(imported_modules(p) & set(HEAVY_MODULES))
        for p in files
        if imported_modules(p) & set(HEAVY_MODULES)
    }
    assert offenders == {}
    # The scan sees imports inside functions too, where a lazy TensorFlow import would hide.
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import numpy\n"
        "def f():\n"
        "    import tensorflow.keras as tk\n"
        "    from tf2onnx import convert\n"
        "    importlib.import_module('keras.layers')\n"
    )
    assert imported_modules(probe) == {"numpy", "tensorflow", "tf2onnx", "keras"}
