"""Keras → ONNX export, graph clean-up, int8/fp16 variants and model checks.

TensorFlow and tf2onnx are imported only when a Keras model is converted (the ``train`` extra); checking,
quantizing and comparing ONNX files needs only onnx and onnxruntime.
"""

from skinseg.exporters.check import Finding, check_model, has_errors
from skinseg.exporters.keras_to_onnx import ExportReport, export_onnx, max_supported_opset
from skinseg.exporters.quantize import compare_models, convert_fp16, quantize_int8

__all__ = [
    "ExportReport",
    "Finding",
    "check_model",
    "compare_models",
    "convert_fp16",
    "export_onnx",
    "has_errors",
    "max_supported_opset",
    "quantize_int8",
]
