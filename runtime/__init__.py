"""skinseg runtime: onnxruntime inference on large dermoscopy images.

This package never imports TensorFlow, Keras or tf2onnx: it is what `pip install skinseg` (no extras) runs.
"""

from runtime.errors import ImageError, ModelError, SkinsegError, UsageError

__all__ = ["ImageError", "ModelError", "SkinsegError", "UsageError"]
