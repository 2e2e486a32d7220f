"""The house rules: one installed name (``skinseg``), and layers that import only downwards.

Bottom to top: runtime ← data ← exporters ← training ← CLI. Every ``import`` in the package, at module level or
inside a function, is read from the source (AST) and checked against the direction, so a function-level import
cannot hide a cycle again. The wheel is built and its top-level names listed.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# repository folder -> installed package name (pyproject.toml [tool.setuptools] package-dir)
FOLDERS = {
    "runtime": "skinseg.runtime",
    "data": "skinseg.data",
    "exporters": "skinseg.exporters",
    "training": "skinseg.training",
    "skinseg_cli": "skinseg",
}
LAYERS = ["skinseg.runtime", "skinseg.data", "skinseg.exporters", "skinseg.training"]  # then the CLI: the rest
OLD_NAMES = tuple(FOLDERS)
SUBMODULES = {
    p.stem for p in (ROOT / "skinseg_cli").iterdir() if p.suffix == ".py" or (p / "__init__.py").is_file()
} | {name.rpartition(".")[2] for name in FOLDERS.values() if name != "skinseg"}
# What no module of a layer may import, even indirectly through a third-party package.
FORBIDDEN = {
    "skinseg.runtime": ("tensorflow", "keras", "tf2onnx", "onnx", "typer", "rich"),
    "skinseg.data": ("tensorflow", "keras", "tf2onnx", "onnx", "typer", "rich"),
}


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT)
    parts = [FOLDERS[rel.parts[0]], *rel.parts[1:]]
    parts[-1] = parts[-1].removesuffix(".py")
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer(name: str) -> int:
    """0 for the root package (``__version__`` and the lazy API), 1–4 for the layers, 5 for the CLI."""
    if name == "skinseg":
        return 0
    for i, prefix in enumerate(LAYERS, start=1):
        if name == prefix or name.startswith(prefix + "."):
            return i
    return len(LAYERS) + 1


def imports(path: Path) -> list[tuple[int, str, int]]:
    """(line, what, its layer) for every import of a skinseg module in the file, relative ones resolved.

    ``from skinseg import x`` is the layer of ``skinseg.x`` when that is a subpackage or module, else (an
    attribute of the root, such as ``__version__``) the root's.
    """
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, layer(alias.name)) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = parts[: len(parts) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            for alias in node.names:
                if module == "skinseg":
                    sub = f"skinseg.{alias.name}"
                    found.append((node.lineno, sub, layer(sub) if alias.name in SUBMODULES else 0))
                else:
                    found.append((node.lineno, f"{module}.{alias.name}", layer(module)))
    return found


def sources() -> list[Path]:
    return sorted(p for folder in FOLDERS for p in (ROOT / folder).rglob("*.py"))


def test_every_module_maps_to_the_skinseg_name():
    names = {module_name(p) for p in sources()}
    assert {"skinseg", "skinseg.cli", "skinseg.runtime.segmenter", "skinseg.data.config"} <= names
    assert all(n == "skinseg" or n.startswith("skinseg.") for n in names)


def test_imports_go_downwards_only():
    wrong = []
    for path in sources():
        source = module_name(path)
        for line, target, target_layer in imports(path):
            top = target.split(".")[0]
            where = f"{path.relative_to(ROOT)}:{line}"
            if top in OLD_NAMES:
                wrong.append(f"{where}: imports {target} (use the skinseg.* name)")
            elif top == "skinseg":
                # the root facade may name the runtime (its lazy API); everything else imports downwards
                allowed = layer(source) + (1 if layer(source) == 0 else 0)
                if target_layer > allowed:
                    wrong.append(f"{where}: {source} (layer {layer(source)}) imports {target} (layer {target_layer})")
            else:
                for prefix, banned in FORBIDDEN.items():
                    if (source == prefix or source.startswith(prefix + ".")) and top in banned:
                        wrong.append(f"{where}: {source} must not import {top}")
    assert wrong == [], "\n".join(wrong)


def test_the_direction_check_catches_a_function_level_import(tmp_path, monkeypatch):
    """The check itself can fail: an upward import hidden in a function is found."""
    folder = tmp_path / "exporters"
    folder.mkdir()
    bad = folder / "sneaky.py"
    bad.write_text("def f():\n    from skinseg.training.model import build_unet\n    return build_unet\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    source = module_name(bad)
    assert source == "skinseg.exporters.sneaky"
    ((line, target, target_layer),) = imports(bad)
    assert line == 2 and target == "skinseg.training.model.build_unet" and target_layer > layer(source)


def test_tests_and_benchmarks_use_the_installed_names():
    wrong = []
    for path in sorted([*(ROOT / "tests").rglob("*.py"), *(ROOT / "benchmarks").rglob("*.py")]):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom) and not node.level
                else []
            )
            wrong += [f"{path.relative_to(ROOT)}:{node.lineno}: {n}" for n in names if n.split(".")[0] in OLD_NAMES]
    assert wrong == [], "\n".join(wrong)


def test_no_test_module_imports_another():
    """Shared helpers live in tests/support.py and fixtures in tests/conftest.py: a test module that imports another
    runs that module's tests' imports and fixtures by accident and ties the two modules' names together."""
    wrong = []
    for path in sorted((ROOT / "tests").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [("." * node.level) + (node.module or "")]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            for name in names:
                last = name.lstrip(".").split(".")[-1] if name.lstrip(".") else ""
                if last.startswith("test_") or name.startswith(".test_") or "conftest" in name:
                    wrong.append(f"{path.relative_to(ROOT)}:{node.lineno}: {name}")
    assert wrong == [], "\n".join(wrong)


def test_the_wheel_installs_one_top_level_name(tmp_path):
    """Built from a copy of the sources (setuptools writes build/ next to them), offline."""
    import shutil

    pytest.importorskip("setuptools")
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for folder in [*FOLDERS, "configs"]:  # configs/: the recipes, installed as skinseg.configs
        shutil.copytree(ROOT / folder, src / folder, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), "."],
        cwd=src,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = tmp_path.glob("skinseg_edge-*.whl")  # the distribution is skinseg-edge (tests/test_install.py)
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"skinseg"}
    assert "skinseg/runtime/models/skinseg_default.onnx" in names and "skinseg/data/config/__init__.py" in names
    assert "skinseg/training/weights/efficientnet_lite0_imagenet.npz" in names  # the encoder for `train`
    assert "skinseg/configs/isic_reference.config" in names  # what `skinseg config init` writes from
    assert not any(n.endswith(".keras") for n in names)  # training artefacts stay out of the runtime wheel
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "skinseg = skinseg.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()
