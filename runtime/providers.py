"""Choosing onnxruntime execution providers from a ``--device`` name.

The logic is pure: pass ``available`` to test it without the hardware.
"""

from __future__ import annotations

from collections.abc import Sequence

from skinseg.runtime.errors import UsageError

__all__ = ["DEVICES", "PROVIDER_CHAINS", "check_provider_used", "resolve_providers"]

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
_INSTALL_HINT = {
    TENSORRT: "pip install onnxruntime-gpu (in place of onnxruntime) and install NVIDIA TensorRT",
    CUDA: "pip install onnxruntime-gpu (in place of onnxruntime) with a matching CUDA/cuDNN",
    OPENVINO: "pip install onnxruntime-openvino (in place of onnxruntime)",
    CPU: "pip install onnxruntime",
}


def _available() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


def _short(names: Sequence[str]) -> str:
    return ", ".join(n.removesuffix("ExecutionProvider") for n in names) or "none"


def resolve_providers(device: str = "auto", available: Sequence[str] | None = None) -> list[str]:
    """The onnxruntime providers for ``device`` (auto, cpu, cuda, tensorrt or openvino), best first.

    ``auto`` picks the best installed one (TensorRT > CUDA > OpenVINO > CPU). Naming a device whose provider
    this onnxruntime lacks raises :class:`UsageError` saying which package to install. ``available`` defaults
    to ``onnxruntime.get_available_providers()``.
    """
    name = str(device).strip().lower()
    if name not in DEVICES:
        raise UsageError(f"--device {device!r} is not one of {', '.join(DEVICES)}")
    available = list(_available() if available is None else available)
    if name == "auto":
        for candidate in _AUTO_ORDER:
            if PROVIDER_CHAINS[candidate][0] in available:
                return [p for p in PROVIDER_CHAINS[candidate] if p in available]
        raise UsageError(f"onnxruntime offers no usable execution provider ({_short(available)}); {_INSTALL_HINT[CPU]}")
    chain = PROVIDER_CHAINS[name]
    if chain[0] not in available:
        raise UsageError(
            f"--device {name} needs onnxruntime's {chain[0]}, which this installation lacks (it has "
            f"{_short(available)}); {_INSTALL_HINT[chain[0]]}, or use --device auto"
        )
    return [p for p in chain if p in available]


def check_provider_used(device: str, requested: Sequence[str], used: Sequence[str]) -> None:
    """Raise :class:`UsageError` if an explicitly named device's provider did not load.

    onnxruntime silently falls back to the CPU when, say, the CUDA libraries are missing; with
    ``--device cuda`` that should be an error, not a slow run. ``auto`` accepts whatever loaded.
    """
    if str(device).strip().lower() == "auto" or not requested or requested[0] in used:
        return
    raise UsageError(
        f"--device {device}: onnxruntime could not start {requested[0]} and fell back to {_short(used)}; "
        f"check the driver and libraries ({_INSTALL_HINT.get(requested[0], 'see onnxruntime docs')}), "
        "or use --device auto"
    )
