"""The container recipe (Dockerfile): the runtime image builds, and `skinseg infer` in it segments a mounted folder
as an unprivileged user, with no network and a read-only root file system (nothing is written but --output).

Slow (it installs the runtime into an image) and skipped where no Docker engine runs. The base image is not pulled:
SKINSEG_DOCKER_BASE names one present locally (default python:3.11-slim, the Dockerfile's own)."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BASE = os.environ.get("SKINSEG_DOCKER_BASE", "python:3.11-slim")
IMAGE = "skinseg-test:latest"


def _docker(*args: str, timeout: int = 120, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, **kwargs)


def _usable() -> str | None:
    """Why the test cannot run here, or None."""
    if shutil.which("docker") is None:
        return "no docker command"
    if _docker("info", timeout=30).returncode != 0:
        return "no Docker engine runs here"
    if _docker("image", "inspect", BASE, timeout=30).returncode != 0:
        return f"base image {BASE} is not present locally (set SKINSEG_DOCKER_BASE)"
    return None


pytestmark = [pytest.mark.slow, pytest.mark.skipif(_usable() is not None, reason=str(_usable()))]


@pytest.fixture(scope="module")
def image():
    env = dict(os.environ)
    if _docker("buildx", "version", timeout=30).returncode != 0:
        env["DOCKER_BUILDKIT"] = "0"  # an engine without buildx builds with the classic builder
    built = _docker(
        "build", "--network", "host", "--build-arg", f"BASE={BASE}", "-t", IMAGE, str(ROOT), timeout=3600, env=env
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    return IMAGE


def _run(image: str, *args: str, mounts: dict[Path, str] = {}) -> subprocess.CompletedProcess:
    volumes = [v for host, inside in mounts.items() for v in ("-v", f"{host}:{inside}")]
    user = f"{os.getuid()}:{os.getgid()}"
    return _docker(
        "run", "--rm", "--read-only", "--network", "none", "--user", user, *volumes, image, *args, timeout=600
    )


def test_the_image_segments_a_mounted_folder(image, tmp_path):
    photos, masks = tmp_path / "photos", tmp_path / "masks"
    photos.mkdir()
    masks.mkdir()
    for sample in sorted((ROOT / "samples").glob("*.jpg")):
        shutil.copy(sample, photos / sample.name)
    mounts = {photos: "/in:ro", masks: "/out"}
    first = _run(image, "infer", "/in", "--output", "/out", "--quiet", mounts=mounts)
    assert first.returncode == 0, first.stdout + first.stderr
    rows = list(csv.DictReader((masks / "results.csv").open()))
    assert len(rows) == 5 and {r["status"] for r in rows} == {"ok"}
    assert all((masks / f"{p.stem}_mask.png").is_file() for p in photos.iterdir())
    assert (masks / "index.html").is_file()
    again = _run(image, "infer", "/in", "--output", "/out", "--quiet", mounts=mounts)  # cron's next night
    assert again.returncode == 0 and "5 skipped" in again.stdout
    assert {r["status"] for r in csv.DictReader((masks / "results.csv").open())} == {"skipped"}


def test_the_image_has_no_tensorflow_and_says_usage_errors_in_one_line(image, tmp_path):
    probe = _docker(
        "run", "--rm", "--entrypoint", "python", image, "-c",
        "import importlib.util as u, sys; sys.exit(u.find_spec('tensorflow') is not None)",
    )  # fmt: skip
    assert probe.returncode == 0, probe.stderr
    missing = _run(image, "infer", "/nowhere", "--output", "/tmp/out")
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1, missing.stderr
    info = _run(image, "model", "info")
    assert info.returncode == 0 and "skinseg_default.onnx (bundled)" in info.stdout
