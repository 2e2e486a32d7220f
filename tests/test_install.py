"""What `pip install` does with skinseg: the distribution is skinseg-edge (the index's `skinseg` is another project)
with the `skinseg` command and import name; every install hint names it; and a GPU install stays a GPU install
when skinseg is installed again (pip itself, offline, on stand-in wheels of the dependencies).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import tomllib

import skinseg
from skinseg import DISTRIBUTION, install_hint

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_the_distribution_name_is_skinseg_edge_with_the_skinseg_command_and_import_name():
    assert PROJECT["name"] == DISTRIBUTION == "skinseg-edge"
    assert PROJECT["scripts"] == {"skinseg": "skinseg.cli:main"}
    assert skinseg.__name__ == "skinseg"
    assert install_hint("train") == "pip install 'skinseg-edge[train]' (from a checkout: pip install -e '.[train]')"


# `pip install skinseg`, `pip install 'skinseg[train]'`, "skinseg[cluster]": the index's unrelated package
WRONG = re.compile(
    r"""pip install\s+(?:-U\s+|--upgrade\s+)?["']?skinseg(?:\[[^\]]*\])?(?=["'\s`)]|$)|["']skinseg\[\w"""
)
SCANNED = ("*.py", "*.md", "*.config", "Makefile", "Dockerfile", "*.toml", "*.txt")


def _sources() -> set[Path]:
    """The repository's files (tracked or not ignored), by git when it is there."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True
    )
    if listed.returncode == 0:
        names = [ROOT / n for n in listed.stdout.splitlines()]
        return {p for p in names if p.is_file() and any(p.match(pattern) for pattern in SCANNED)}
    return {p for pattern in SCANNED for p in ROOT.rglob(pattern) if ".venv" not in p.parts and "build" not in p.parts}


def test_no_hint_or_document_installs_the_other_projects_package():
    files = _sources()
    assert ROOT / "README.md" in files and ROOT / "runtime" / "cluster.py" in files
    wrong = []
    for path in sorted(files):
        if path == Path(__file__):
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if WRONG.search(line):
                wrong.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert wrong == [], "\n".join(wrong)


def test_the_pattern_catches_the_old_hints():
    for old in (
        "pip install 'skinseg[train]'",
        'pip install "skinseg[cluster]"',
        "pip install skinseg",
        "`pip install skinseg`",
    ):
        assert WRONG.search(old), old
    for new in ("pip install 'skinseg-edge[train]'", "pip install skinseg-edge", "pip install -e '.[cpu]'"):
        assert not WRONG.search(new), new


# ------------------------------------------------------------------------------------ pip, offline


def _wheel(folder: Path, name: str, version: str, *, requires: list[str] = (), extras: list[str] = (), files=None):
    """A minimal wheel of ``name`` (stand-in for a dependency: right name and version, no code)."""
    dist = f"{name.replace('-', '_')}-{version}"
    meta = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
    meta += [f"Provides-Extra: {e}" for e in extras] + [f"Requires-Dist: {r}" for r in requires]
    contents = {
        f"{dist}.dist-info/METADATA": "\n".join(meta) + "\n",
        f"{dist}.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        **(files or {}),
    }
    record = [f"{n},," for n in contents] + [f"{dist}.dist-info/RECORD,,"]
    contents[f"{dist}.dist-info/RECORD"] = "\n".join(record) + "\n"
    path = folder / f"{dist}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for n, text in contents.items():
            z.writestr(n, text)
    return path


def _pip(*args: str, python: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pip", "--python", str(python), "--disable-pip-version-check", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def _installed(python: Path) -> dict[str, str]:
    listed = _pip("list", "--format", "json", python=python)
    assert listed.returncode == 0, listed.stderr
    return {d["name"].lower(): d["version"] for d in json.loads(listed.stdout)}


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory):
    """skinseg-edge's real wheel, and stand-ins for its dependencies at versions its ranges accept."""
    pytest.importorskip("setuptools")
    house = tmp_path_factory.mktemp("wheels")
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(house), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    for name, version in [
        ("typer", "0.29.2"),
        ("rich", "15.0.0"),
        ("numpy", "2.4.6"),
        ("opencv-python-headless", "5.0.0.93"),
    ]:
        _wheel(house, name, version)
    module = "onnxruntime/__init__.py"
    _wheel(house, "onnxruntime", "1.32.0", files={module: "BUILD = 'cpu'\n"})
    _wheel(house, "onnxruntime-gpu", "1.31.1", extras=["cuda", "cudnn"], files={module: "BUILD = 'gpu'\n"})
    # the old arrangement, for contrast: onnxruntime among the base dependencies
    _wheel(house, "old-skinseg", "0.1.0", requires=["onnxruntime>=1.18"])
    return house


def _venv(tmp_path: Path) -> Path:
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "v")], check=True, timeout=120)
    return tmp_path / "v" / "bin" / "python"


def _ort_build(python: Path) -> str:
    done = subprocess.run(
        [str(python), "-c", "import onnxruntime; print(onnxruntime.BUILD)"], capture_output=True, text=True
    )
    return done.stdout.strip()


@pytest.mark.slow
def test_installing_skinseg_again_keeps_the_gpu_onnxruntime(wheelhouse, tmp_path):
    python = _venv(tmp_path)
    offline = ["--no-index", "--find-links", str(wheelhouse)]
    first = _pip("install", *offline, f"{DISTRIBUTION}[gpu]", python=python)
    assert first.returncode == 0, first.stderr
    assert {"skinseg-edge", "onnxruntime-gpu"} <= set(_installed(python)) and "onnxruntime" not in _installed(python)
    # the user installs skinseg again, plain: nothing brings the CPU package back over the GPU one
    for again in (["install", *offline, DISTRIBUTION], ["install", *offline, "--force-reinstall", DISTRIBUTION]):
        done = _pip(*again, python=python)
        assert done.returncode == 0, done.stderr
        assert "onnxruntime" not in _installed(python) and _ort_build(python) == "gpu"


@pytest.mark.slow
def test_the_cpu_extra_installs_onnxruntime_and_the_old_arrangement_would_fight_a_gpu_install(wheelhouse, tmp_path):
    offline = ["--no-index", "--find-links", str(wheelhouse)]
    cpu = _venv(tmp_path / "cpu")
    assert _pip("install", *offline, f"{DISTRIBUTION}[cpu]", python=cpu).returncode == 0
    assert "onnxruntime" in _installed(cpu) and "onnxruntime-gpu" not in _installed(cpu) and _ort_build(cpu) == "cpu"
    old = _venv(tmp_path / "old")  # what the test guards against: a base dependency on onnxruntime
    assert _pip("install", *offline, "onnxruntime-gpu", python=old).returncode == 0
    assert _pip("install", *offline, "old-skinseg", python=old).returncode == 0
    assert {"onnxruntime", "onnxruntime-gpu"} <= set(_installed(old)) and _ort_build(old) == "cpu"
