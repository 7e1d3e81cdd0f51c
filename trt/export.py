"""Deprecated: ONNX export moved to ``engine.export`` (``engine.export.onnx_export``,
``engine.export.prompts``). This alias module goes away in the next release."""

import warnings

from engine.export.common import DECODER_DYNAMIC_AXES, FP16_TOLERANCE, FP32_OPS, FP32_TOLERANCE, ExportError, check_onnx
from engine.export.onnx_export import (
    ExportResult,
    compare_decoder,
    compare_encoder,
    export_decoder,
    export_encoder,
    export_model,
)
from engine.export.prompts import realistic_prompts

warnings.warn("trt.export moved to engine.export.onnx_export (export_model) and engine.export.prompts "
              "(realistic_prompts); import them from there", DeprecationWarning, stacklevel=2)

__all__ = [
    "DECODER_DYNAMIC_AXES", "FP16_TOLERANCE", "FP32_OPS", "FP32_TOLERANCE", "ExportError", "ExportResult",
    "check_onnx", "compare_decoder", "compare_encoder", "export_decoder", "export_encoder", "export_model",
    "realistic_prompts",
]
