"""Execution-provider selection, tested with fake lists of installed providers."""

from __future__ import annotations

import re

import pytest

from skinseg.runtime.errors import UsageError
from skinseg.runtime.providers import check_provider_used, resolve_providers

CPU, CUDA, TRT, OV = (
    "CPUExecutionProvider",
    "CUDAExecutionProvider",
    "TensorrtExecutionProvider",
    "OpenVINOExecutionProvider",
)


@pytest.mark.parametrize(
    ("available", "expected"),
    [
        ([CPU], [CPU]),
        (["AzureExecutionProvider", CPU], [CPU]),
        ([CUDA, CPU], [CUDA, CPU]),
        ([TRT, CUDA, CPU], [TRT, CUDA, CPU]),
        ([OV, CPU], [OV, CPU]),
        ([CPU, OV, CUDA], [CUDA, CPU]),
    ],
)
def test_auto_picks_best(available, expected):
    assert resolve_providers("auto", available) == expected


def test_explicit_devices():
    assert resolve_providers("cpu", [TRT, CUDA, CPU]) == [CPU]
    assert resolve_providers("CUDA", [TRT, CUDA, CPU]) == [CUDA, CPU]
    assert resolve_providers("tensorrt", [TRT, CUDA, CPU]) == [TRT, CUDA, CPU]
    assert resolve_providers("openvino", [OV, CPU]) == [OV, CPU]


@pytest.mark.parametrize(
    ("device", "extra"),
    [("cuda", "skinseg-edge[gpu]"), ("tensorrt", "skinseg-edge[gpu]"), ("openvino", "skinseg-edge[openvino]")],
)
def test_missing_provider_names_the_package(device, extra):
    with pytest.raises(
        UsageError, match=rf"device={device}.*pip uninstall -y onnxruntime .*'{re.escape(extra)}'"
    ) as info:
        resolve_providers(device, [CPU])
    assert "\n" not in str(info.value) and "has CPU" in str(info.value)


def test_unknown_device():
    with pytest.raises(UsageError, match="'gpu' is not one of auto, cpu, cuda, tensorrt, openvino"):
        resolve_providers("gpu", [CPU])


def test_real_installation_has_cpu():
    assert resolve_providers("cpu") == [CPU]
    assert resolve_providers("auto")[-1] == CPU


def test_silent_fallback_is_an_error_for_explicit_devices():
    check_provider_used("auto", [CUDA, CPU], [CPU])
    check_provider_used("cuda", [CUDA, CPU], [CUDA, CPU])
    with pytest.raises(UsageError, match="could not start CUDAExecutionProvider and fell back to CPU"):
        check_provider_used("cuda", [CUDA, CPU], [CPU])
