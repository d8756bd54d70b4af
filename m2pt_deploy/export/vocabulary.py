"""The export options' words and defaults, importable without torch or onnx.

Command-line help is built from these before any heavy import, so ``--help`` is instant;
the modules that implement each option import them from here.
"""

from __future__ import annotations

__all__ = ["DEFAULT_OPSET", "DYNAMIC_BATCH_RANGE", "FORMATS", "ONNX_PRECISIONS", "PRECISIONS", "VERIFY_IMAGES"]

FORMATS = ("onnx", "trt", "triton")
#: Every precision an engine can be built in (TensorRT).
PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "bf16", "int8", "fp8")
#: The precisions an ONNX file for ONNX Runtime is written in (int8: Q/DQ for CPU serving).
ONNX_PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "int8")
DEFAULT_OPSET = 18
#: The batch range of a dynamic-batch export: MIN, OPT, MAX (TensorRT's default profile).
DYNAMIC_BATCH_RANGE = (1, 1, 64)
# Enough held-out inputs that an agreement rate means something: one flip is 0.4%.
VERIFY_IMAGES = 256
