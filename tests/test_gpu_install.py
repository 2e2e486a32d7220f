"""A GPU install stays a GPU install: skinseg's onnxruntime comes from one extra (cpu, gpu, gpu-cuda12, openvino),
never from the base dependencies; asking for a device that cannot run says what to install; the GPU libraries that
onnxruntime-gpu's extras install are loaded before a CUDA session. No GPU here: the selection and the messages are
tested with onnxruntime's provider lists faked.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

from skinseg.runtime import providers
from skinseg.runtime.errors import MissingExtraError, UsageError
from skinseg.runtime.providers import (
    CPU,
    CUDA,
    RUNTIME_PACKAGES,
    TENSORRT,
    check_provider_used,
    load_gpu_libraries,
    resolve_providers,
)

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _runtime_packages(requirements: list[str]) -> list[str]:
    names = [r.split(";")[0].split("[")[0].split(">")[0].split("<")[0].split("=")[0].strip() for r in requirements]
    return [n for n in names if n in RUNTIME_PACKAGES]


def test_the_base_install_brings_no_onnxruntime_and_each_runtime_extra_brings_one():
    assert _runtime_packages(PROJECT["dependencies"]) == []  # else reinstalling skinseg brings the CPU package back
    extras = PROJECT["optional-dependencies"]
    assert _runtime_packages(extras["cpu"]) == ["onnxruntime"]
    assert _runtime_packages(extras["gpu"]) == ["onnxruntime-gpu"]
    assert _runtime_packages(extras["gpu-cuda12"]) == ["onnxruntime-gpu"]
    assert _runtime_packages(extras["openvino"]) == ["onnxruntime-openvino"]
    for name in ("train", "cluster", "dev"):
        assert _runtime_packages(extras[name]) == [], name
    # the GPU extras bring CUDA and cuDNN from the package index (onnxruntime-gpu's own cuda and cudnn extras)
    assert all("onnxruntime-gpu[cuda,cudnn]" in r for r in extras["gpu"] + extras["gpu-cuda12"])


def test_every_extra_the_messages_name_exists():
    extras = set(PROJECT["optional-dependencies"])
    assert set(RUNTIME_PACKAGES.values()) <= extras
    assert {"gpu", "gpu-cuda12", "openvino", "cpu"} <= extras


@pytest.mark.parametrize("device", ["cuda", "tensorrt"])
def test_a_gpu_device_on_a_cpu_install_says_to_swap_in_the_gpu_extra(device):
    with pytest.raises(UsageError) as info:
        resolve_providers(device, [CPU], installed={"onnxruntime": "1.32.0"})
    message = str(info.value)
    assert "\n" not in message
    assert "pip uninstall -y onnxruntime onnxruntime-gpu onnxruntime-openvino" in message
    assert "pip install 'skinseg-edge[gpu]'" in message and "pip install -e '.[gpu]'" in message
    assert "CUDA 13" in message and "gpu-cuda12" in message


def test_two_onnxruntime_packages_installed_together_are_named():
    with pytest.raises(UsageError, match=r"onnxruntime 1\.32\.0, onnxruntime-gpu 1\.31\.1\) and overwrite each other"):
        resolve_providers("cuda", [CPU], installed={"onnxruntime": "1.32.0", "onnxruntime-gpu": "1.31.1"})


def test_cuda_that_does_not_start_names_the_cuda_this_onnxruntime_wants():
    with pytest.raises(UsageError) as info:
        check_provider_used(
            "cuda", [CUDA, CPU], [CPU], built_for="built for CUDA 13.0", installed={"onnxruntime-gpu": "1"}
        )
    message = str(info.value)
    assert "could not start CUDAExecutionProvider and fell back to CPU" in message
    assert "built for CUDA 13.0" in message and "nvidia-smi" in message and "device=cpu" in message
    assert "\n" not in message and "overwrite" not in message  # one runtime installed: no clash note
    check_provider_used("auto", [CUDA, CPU], [CPU])  # auto runs where it can; the provider that ran is reported


class FakeOrt:
    def __init__(self, fail: bool = False):
        self.calls, self.fail = 0, fail

    def preload_dlls(self):
        self.calls += 1
        if self.fail:
            raise OSError("libcudnn.so.9: cannot open shared object file")


def test_the_gpu_libraries_are_loaded_before_a_cuda_session_only():
    ort = FakeOrt()
    load_gpu_libraries(ort, [CUDA, CPU])
    load_gpu_libraries(ort, [TENSORRT, CUDA, CPU])
    assert ort.calls == 2
    load_gpu_libraries(ort, [CPU])
    assert ort.calls == 2
    load_gpu_libraries(FakeOrt(fail=True), [CUDA, CPU])  # missing libraries: the session's fallback says so
    load_gpu_libraries(object(), [CUDA, CPU])  # an onnxruntime without preload_dlls (before 1.21)


def test_a_model_on_a_gpu_package_without_cuda_libraries(standin_model, monkeypatch):
    """onnxruntime-gpu lists CUDA but cannot start it (no driver): --device cuda is a one-line usage error,
    --device auto runs on the CPU and says so."""
    import onnxruntime

    from skinseg.runtime.segmenter import Segmenter

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: [CUDA, CPU])
    with pytest.raises(UsageError, match="could not start CUDAExecutionProvider and fell back to CPU"):
        Segmenter(standin_model, device="cuda")
    assert Segmenter(standin_model, device="auto").provider == CPU


def test_infer_with_device_cuda_here_is_one_line_naming_the_extra(standin_model, tmp_path):
    from typer.testing import CliRunner

    from skinseg.cli import app

    result = CliRunner().invoke(
        app,
        ["infer", str(ROOT / "samples"), "--model", str(standin_model), "-o", str(tmp_path / "o"), "--device", "cuda"],
    )
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1 and "skinseg-edge[gpu]" in result.output
    assert not (tmp_path / "o").exists()


def _without_onnxruntime(tmp_path: Path) -> dict[str, str]:
    """An environment in which `import onnxruntime` fails, as in an install without a runtime extra."""
    stub = tmp_path / "stub" / "onnxruntime"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text("raise ImportError('No module named onnxruntime')\n")
    return {**os.environ, "PYTHONPATH": str(stub.parent)}


def test_without_an_onnxruntime_infer_says_which_extra_to_install(tmp_path):
    env = _without_onnxruntime(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "skinseg", "infer", str(ROOT / "samples"), "-o", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert "pip install 'skinseg-edge[cpu]'" in lines[0] and "[gpu]" in lines[0]
    # what needs no model works without one
    for args in (["--version"], ["config", "init", str(tmp_path / "c.config")]):
        done = subprocess.run([sys.executable, "-m", "skinseg", *args], capture_output=True, text=True, env=env)
        assert done.returncode == 0, done.stderr


def test_import_onnxruntime_raises_the_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` raises ImportError
    with pytest.raises(MissingExtraError, match=r"skinseg-edge\[cpu\]"):
        providers.import_onnxruntime()
