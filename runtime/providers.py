"""Choosing onnxruntime execution providers from a ``--device`` name, and saying how to get a missing one.

skinseg installs its onnxruntime from one extra (``cpu``, ``gpu``, ``gpu-cuda12`` or ``openvino``): the packages
onnxruntime, onnxruntime-gpu and onnxruntime-openvino all install the same ``onnxruntime`` module, over each other,
so exactly one of them may be installed. The messages here name the extra that brings a provider, and say when
several of those packages are installed at once.

The logic is pure: pass ``available`` (and ``installed``) to test it without the hardware.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

from skinseg import DISTRIBUTION
from skinseg.runtime.errors import MissingExtraError, ParameterError, UsageError, param

__all__ = [
    "DEVICES",
    "PROVIDER_CHAINS",
    "RUNTIME_PACKAGES",
    "check_provider_used",
    "cuda_build",
    "import_onnxruntime",
    "installed_runtimes",
    "load_gpu_libraries",
    "resolve_providers",
]

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
OPENVINO = "OpenVINOExecutionProvider"

DEVICES = ("auto", "cpu", "cuda", "tensorrt", "openvino")

# What each device asks onnxruntime for, best first; later entries take the operators earlier ones cannot run.
PROVIDER_CHAINS: dict[str, tuple[str, ...]] = {
    "tensorrt": (TENSORRT, CUDA, CPU),
    "cuda": (CUDA, CPU),
    "openvino": (OPENVINO, CPU),
    "cpu": (CPU,),
}
_AUTO_ORDER = ("tensorrt", "cuda", "openvino", "cpu")

# The distributions that install the `onnxruntime` module, and skinseg's extra for each.
RUNTIME_PACKAGES: dict[str, str] = {
    "onnxruntime": "cpu",
    "onnxruntime-gpu": "gpu",
    "onnxruntime-openvino": "openvino",
}
_GPU_NOTE = (
    "the gpu extra is onnxruntime-gpu for CUDA 13.x with its CUDA and cuDNN 9 libraries (NVIDIA driver 580 or newer; "
    "gpu-cuda12 for older drivers)"
)


def _swap(extra: str) -> str:
    """The commands that replace whatever onnxruntime is installed by the one of ``extra``."""
    return (
        f"pip uninstall -y {' '.join(RUNTIME_PACKAGES)} && pip install '{DISTRIBUTION}[{extra}]' "
        f"(from a checkout: pip install -e '.[{extra}]')"
    )


_INSTALL_HINT = {
    TENSORRT: f"{_swap('gpu')}, and install NVIDIA TensorRT; {_GPU_NOTE}",
    CUDA: f"{_swap('gpu')}; {_GPU_NOTE}",
    OPENVINO: _swap("openvino"),
    CPU: _swap("cpu"),
}
NO_RUNTIME_HINT = (
    f"skinseg needs an onnxruntime to run a model, and none is installed: pip install '{DISTRIBUTION}[cpu]' "
    f"(or [gpu] for an NVIDIA GPU, [openvino] for Intel; from a checkout: pip install -e '.[cpu]')"
)


def import_onnxruntime() -> Any:
    """The ``onnxruntime`` module; :class:`MissingExtraError` saying which extra to install when there is none."""
    try:
        import onnxruntime
    except ImportError:
        raise MissingExtraError(NO_RUNTIME_HINT) from None
    return onnxruntime


def installed_runtimes() -> dict[str, str]:
    """The onnxruntime distributions installed (name → version): more than one is a broken install."""
    import importlib.metadata

    found = {}
    for name in RUNTIME_PACKAGES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found[name] = importlib.metadata.version(name)
    return found


def _clash(installed: dict[str, str] | None) -> str:
    """A note when several onnxruntime packages are installed (they overwrite each other's files), else ''."""
    if installed is None or len(installed) < 2:
        return ""
    names = ", ".join(f"{n} {v}" for n, v in installed.items())
    return f"; several onnxruntime packages are installed ({names}) and overwrite each other's files: keep one"


def _available() -> list[str]:
    return list(import_onnxruntime().get_available_providers())


def _short(names: Sequence[str]) -> str:
    return ", ".join(n.removesuffix("ExecutionProvider") for n in names) or "none"


def resolve_providers(
    device: str = "auto", available: Sequence[str] | None = None, installed: dict[str, str] | None = None
) -> list[str]:
    """The onnxruntime providers for ``device`` (auto, cpu, cuda, tensorrt or openvino), best first.

    ``auto`` picks the best installed one (TensorRT > CUDA > OpenVINO > CPU). Naming a device whose provider
    this onnxruntime lacks raises :class:`UsageError` saying which extra to install in place of the installed
    onnxruntime. ``available`` defaults to ``onnxruntime.get_available_providers()``, ``installed`` to
    :func:`installed_runtimes`.
    """
    name = str(device).strip().lower()
    if name not in DEVICES:
        raise ParameterError(f"{param('device', repr(device))} is not one of {', '.join(DEVICES)}")
    if available is None:
        available, installed = _available(), installed_runtimes() if installed is None else installed
    available = list(available)
    if name == "auto":
        for candidate in _AUTO_ORDER:
            if PROVIDER_CHAINS[candidate][0] in available:
                return [p for p in PROVIDER_CHAINS[candidate] if p in available]
        raise UsageError(
            f"onnxruntime offers no usable execution provider ({_short(available)}); {_INSTALL_HINT[CPU]}"
            f"{_clash(installed)}"
        )
    chain = PROVIDER_CHAINS[name]
    if chain[0] not in available:
        raise UsageError(
            f"{param('device', name)} needs onnxruntime's {chain[0]}, which this installation lacks (it has "
            f"{_short(available)}); {_INSTALL_HINT[chain[0]]}; or use {param('device', 'auto')}{_clash(installed)}"
        )
    return [p for p in chain if p in available]


def load_gpu_libraries(ort: Any, providers: Sequence[str]) -> None:
    """Before a CUDA or TensorRT session: let onnxruntime-gpu (1.21 and later) load the CUDA and cuDNN libraries
    that its ``cuda`` and ``cudnn`` extras installed from the package index (a no-op elsewhere)."""
    if (CUDA in providers or TENSORRT in providers) and hasattr(ort, "preload_dlls"):
        with contextlib.suppress(Exception):  # libraries it cannot find: the session says so (check_provider_used)
            ort.preload_dlls()


def cuda_build(ort: Any) -> str:
    """``built for CUDA 13.0`` for the CUDA version this onnxruntime-gpu was built with, or ''."""
    import importlib

    with contextlib.suppress(Exception):
        info = importlib.import_module(f"{ort.__name__}.capi.build_and_package_info")
        return f"built for CUDA {info.cuda_version}" if getattr(info, "cuda_version", "") else ""
    return ""


def check_provider_used(
    device: str,
    requested: Sequence[str],
    used: Sequence[str],
    *,
    built_for: str = "",
    installed: dict[str, str] | None = None,
) -> None:
    """Raise :class:`UsageError` if an explicitly named device's provider did not load.

    onnxruntime silently falls back to the CPU when, say, the CUDA libraries are missing; with
    ``--device cuda`` that should be an error that says what to install, not a slow run. ``auto`` accepts
    whatever loaded (the provider that ran is reported). ``built_for`` says which CUDA this onnxruntime wants.
    """
    if str(device).strip().lower() == "auto" or not requested or requested[0] in used:
        return
    wanted = requested[0]
    if wanted in (CUDA, TENSORRT):
        build = f" ({built_for})" if built_for else ""
        why = (
            f"the NVIDIA driver, or the CUDA and cuDNN 9 libraries this onnxruntime-gpu{build} loads, are missing or "
            f"of another major version (nvidia-smi shows the driver); {_INSTALL_HINT[wanted]}"
        )
    else:
        why = f"check the device's driver and libraries ({_INSTALL_HINT.get(wanted, 'see the onnxruntime docs')})"
    raise UsageError(
        f"{param('device', device)}: onnxruntime could not start {wanted} and fell back to {_short(used)}: {why}; "
        f"or use {param('device', 'cpu')}{_clash(installed)}"
    )
