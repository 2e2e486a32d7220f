"""skinseg runtime: onnxruntime inference on large dermoscopy images.

This package never imports TensorFlow, Keras or tf2onnx: it is what `pip install 'skinseg-edge[cpu]'` runs.
Everything but the exceptions is imported lazily (``runtime.Segmenter`` loads OpenCV and onnxruntime on
first use), so ``from skinseg.runtime.errors import ...`` stays cheap for the CLI.
"""

from __future__ import annotations

import os as _os
from typing import TYPE_CHECKING

from skinseg.runtime.defaults import DECODER_LIMIT_VARIABLE, set_decoder_limit
from skinseg.runtime.errors import ImageError, ModelError, SkinsegError, UsageError
from skinseg.runtime.lazy import exports

if TYPE_CHECKING:
    from skinseg.runtime.imageheaders import image_size
    from skinseg.runtime.imageio import read_image, read_mask, write_png_atomic
    from skinseg.runtime.providers import resolve_providers
    from skinseg.runtime.segmenter import Result, Segmenter
    from skinseg.runtime.tiling import tiled_predict

_LAZY = {
    "Segmenter": "skinseg.runtime.segmenter",
    "Result": "skinseg.runtime.segmenter",
    "read_image": "skinseg.runtime.imageio",
    "read_mask": "skinseg.runtime.imageio",
    "image_size": "skinseg.runtime.imageheaders",
    "write_png_atomic": "skinseg.runtime.imageio",
    "resolve_providers": "skinseg.runtime.providers",
    "tiled_predict": "skinseg.runtime.tiling",
}

__all__ = [
    "ImageError",
    "ModelError",
    "Result",
    "Segmenter",
    "SkinsegError",
    "UsageError",
    "image_size",
    "read_image",
    "read_mask",
    "resolve_providers",
    "tiled_predict",
    "write_png_atomic",
]


if DECODER_LIMIT_VARIABLE not in _os.environ:
    set_decoder_limit()  # before anything imports cv2; `skinseg infer --max-pixels` raises it the same way
# onnxruntime (1.2x+) otherwise writes a device id and an event database under ~/.cache/Microsoft at import, and
# warns in colour when HOME is unwritable: a cron job writes nothing outside --output. Read once, at its import.
_os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

__getattr__, __dir__ = exports(__name__, _LAZY, globals())
