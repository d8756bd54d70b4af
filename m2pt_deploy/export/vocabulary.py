"""The export options' words and defaults, importable without torch or onnx.

Command-line help is built from these before any heavy import, so ``--help`` is instant;
the modules that implement each option import them from here.
"""

from __future__ import annotations

from typing import Literal, get_args

__all__ = ["DEFAULT_OPSET", "DYNAMIC_BATCH_RANGE", "FORMATS", "ONNX_PRECISIONS", "PRECISIONS", "VERIFY_IMAGES",
           "EnginePrecision", "FloatPrecision", "LowPrecision", "OnnxPrecision"]

FORMATS = ("onnx", "trt", "triton")
# The precision words, one home: every module that takes a precision types it with one of these.
#: Every precision an engine can be built in (TensorRT).
EnginePrecision = Literal["fp32", "fp16", "bf16", "int8", "fp8"]
#: The precisions an ONNX file for ONNX Runtime is written in (int8: Q/DQ for CPU serving).
OnnxPrecision = Literal["fp32", "fp16", "int8"]
#: What the plain (float) export writes before any quantization.
FloatPrecision = Literal["fp32", "fp16"]
#: The mixed precisions (fp32 LayerNorm, Softmax and residual adds; the rest lower).
LowPrecision = Literal["fp16", "bf16"]
PRECISIONS: tuple[str, ...] = get_args(EnginePrecision)
ONNX_PRECISIONS: tuple[str, ...] = get_args(OnnxPrecision)
DEFAULT_OPSET = 18
#: The batch range of a dynamic-batch export: MIN, OPT, MAX (TensorRT's default profile).
DYNAMIC_BATCH_RANGE = (1, 1, 64)
# Enough held-out inputs that an agreement rate means something: one flip is 0.4%.
VERIFY_IMAGES = 256
