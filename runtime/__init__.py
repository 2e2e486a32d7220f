"""skinseg runtime: onnxruntime inference on large dermoscopy images.

This package never imports TensorFlow, Keras or tf2onnx: it is what `pip install 'skinseg-edge[cpu]'` runs.
Everything but the exceptions is imported lazily (``runtime.Segmenter`` loads OpenCV and onnxruntime on
first use), so ``from skinseg.runtime.errors import ...`` stays cheap for the CLI.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from skinseg.runtime.defaults import set_decoder_limit
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
    "set_decoder_limit",
    "tiled_predict",
    "write_png_atomic",
]


__getattr__, __dir__ = exports(__name__, _LAZY, globals())
