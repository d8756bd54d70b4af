"""int8 for CPU serving: the merged fp32 export with Q/DQ, calibrated on real inputs, then
optimized offline by ONNX Runtime, which fuses each Q/DQ-wrapped MatMul into an integer
kernel (VNNI where the CPU has it).

The Q/DQ placement and calibration are the TensorRT path's (``quantize.py``): symmetric,
per-channel weights, per-tensor activations, only weight-carrying MatMuls quantized, so
attention's activation-by-activation MatMuls, LayerNorm, Softmax and GELU stay in fp32.
One difference: the MatMul and Gemm outputs stay float (no output Q/DQ), so ONNX Runtime
fuses each quantized MatMul and its bias add into one ``MatMulIntegerToFloat``: one rounding
fewer per layer, and faster than re-quantizing every output (``scripts/int8_placement.py``
times both side by side; figures in docs/performance.md).

Every family quantizes: RGB image models calibrate on photo tiles by default, the others on
the user's own inputs in their model-ready layout (``--calib-data``: spectrograms, clips,
point clouds), a held-out part of which verifies the result.
"""

from __future__ import annotations

import numpy as np
import onnx

from m2pt_deploy.cpu import Int8Target
from m2pt_deploy.export.graph import prepare_graph
from m2pt_deploy.export.int8.quantize import quantize_qdq
from m2pt_deploy.export.optimize import optimize_onnx
from m2pt_deploy.metadata import PRECISION_KEY

__all__ = ["cpu_int8_onnx"]

_CALIBRATION_BATCH = 8


def cpu_int8_onnx(proto: onnx.ModelProto, calibration: np.ndarray, *, optimize: bool = True,
                  target: Int8Target | None = None) -> onnx.ModelProto:
    """A Q/DQ int8 copy of an fp32 export; ``optimize``: ONNX Runtime's offline fusions applied.

    ``target``: the CPU integer path it will serve on (default: this machine's).
    """
    quantized = quantize_qdq(prepare_graph(proto), "int8", calibration, batch_size=_CALIBRATION_BATCH,
                             target=target, quantize_outputs=False)
    PRECISION_KEY.set(quantized, "int8")
    return optimize_onnx(quantized, attention=None) if optimize else quantized
