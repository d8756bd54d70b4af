"""int8 for CPU serving: the merged fp32 export with Q/DQ, calibrated on real images, then
optimized offline by ONNX Runtime, which fuses each Q/DQ-wrapped MatMul into an integer
kernel (VNNI where the CPU has it).

The Q/DQ placement and calibration are the TensorRT path's (``quantize.py``): symmetric,
per-channel weights, per-tensor activations, only weight-carrying MatMuls quantized, so
attention's activation-by-activation MatMuls, LayerNorm, Softmax and GELU stay in fp32.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx

from m2pt_deploy.export.calibration import calibration_tiles
from m2pt_deploy.export.graph import prepare_graph
from m2pt_deploy.export.optimize import optimize_onnx, set_metadata
from m2pt_deploy.export.quantize import quantize_qdq

__all__ = ["CALIBRATION_SEED", "VERIFY_SEED", "cpu_int8_onnx", "photo_tiles"]

# Calibration and verification tiles come from different seeds: verification is held out.
CALIBRATION_SEED, VERIFY_SEED = 0, 1
_CALIBRATION_BATCH = 8


def photo_tiles(input_size: tuple[int, int, int], mean: Sequence[float], std: Sequence[float], *,
                count: int, seed: int = CALIBRATION_SEED) -> np.ndarray:
    return calibration_tiles(input_size, mean, std, count=count, seed=seed)


def cpu_int8_onnx(proto: onnx.ModelProto, calibration: np.ndarray, *, optimize: bool = True) -> onnx.ModelProto:
    """A Q/DQ int8 copy of an fp32 export; ``optimize``: ONNX Runtime's offline fusions applied."""
    quantized = quantize_qdq(prepare_graph(proto), "int8", calibration, batch_size=_CALIBRATION_BATCH)
    set_metadata(quantized, "m2pt_deploy.precision", "int8")
    return optimize_onnx(quantized, attention=None) if optimize else quantized
