"""TensorFlow settings that make training on a plain CPU faster; applied before TensorFlow is first imported.

Measured with ``benchmarks/bench_train_step.py`` on the 2-core AMD EPYC (AVX2) development machine, one training
step of the reference UNet (batch 8, 256×256):

- ``TF_ENABLE_ONEDNN_OPTS=1``: TensorFlow enables its oneDNN kernels by default only on CPUs with AVX-512 VNNI or
  AMX; on AVX2 machines it falls back to Eigen. oneDNN made the step 1.3–1.75× faster here.
- ``TF_CPU_ALLOCATOR_USE_BFC=true``: TensorFlow's best-fit allocator keeps freed tensor memory instead of handing
  it back to the kernel, which otherwise zero-fills the pages again on every step (a quarter of the time went to
  page faults); another 1.1–1.25×.

A value the user has set in the environment is kept. Once TensorFlow is imported these no longer apply.
"""

from __future__ import annotations

import os
import sys

CPU_DEFAULTS = {"TF_ENABLE_ONEDNN_OPTS": "1", "TF_CPU_ALLOCATOR_USE_BFC": "true", "TF_CPP_MIN_LOG_LEVEL": "2"}


def configure_tensorflow() -> bool:
    """Set :data:`CPU_DEFAULTS` where unset; False when TensorFlow was already imported (too late to apply)."""
    if "tensorflow" in sys.modules:
        return False
    for key, value in CPU_DEFAULTS.items():
        os.environ.setdefault(key, value)
    return True
