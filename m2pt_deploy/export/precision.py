"""Reduced-precision ONNX graphs whose numerics can be checked in ONNX Runtime.

MatMuls (and the patch convolution) run in fp16; LayerNormalization and Softmax stay in
fp32, the usual cure for ViT accuracy loss, and the graph keeps fp32 inputs and outputs
so callers feed the same arrays whatever the precision.
"""

from __future__ import annotations

from typing import Literal

import onnx

from m2pt_deploy.errors import M2ptError

__all__ = ["FP32_OPS", "to_mixed_precision"]

FP32_OPS: tuple[str, ...] = ("LayerNormalization", "Softmax", "ReduceMean", "Pow", "Sqrt")


def to_mixed_precision(proto: onnx.ModelProto, precision: Literal["fp16"]) -> onnx.ModelProto:
    if precision != "fp16":
        raise M2ptError(f"precision {precision!r} is not supported for ONNX (fp32, fp16)")
    from onnxconverter_common import float16

    return float16.convert_float_to_float16(
        proto, keep_io_types=True, op_block_list=list(FP32_OPS), disable_shape_infer=False
    )
