"""The ONNX a TensorRT engine is built from: prepared, and carrying its precision."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx

from m2pt_deploy.errors import M2ptError
from m2pt_deploy.export.graph import prepare_graph
from m2pt_deploy.export.int8.quantize import quantize_qdq
from m2pt_deploy.export.precision import to_mixed_precision
from m2pt_deploy.inputs.photos import photo_tiles
from m2pt_deploy.metadata import PRECISION_KEY
from m2pt_deploy.vocabulary import CALIBRATION_SEED

__all__ = ["engine_onnx"]


def engine_onnx(
    proto: onnx.ModelProto,
    precision: str,
    *,
    input_size: tuple[int, ...],
    mean: Sequence[float],
    std: Sequence[float],
    calib_images: int = 256,
    calibration: np.ndarray | None = None,
) -> onnx.ModelProto:
    """Fold and sort an fp32 export, then write ``precision`` into it (mixed precision or Q/DQ).

    int8 and fp8 calibrate on ``calibration`` (the model's own inputs, any family), else on
    ``calib_images`` photo tiles (RGB image models).
    """
    proto = prepare_graph(proto)
    if precision in ("fp16", "bf16"):
        proto = to_mixed_precision(proto, precision)  # type: ignore[arg-type]
    elif precision in ("int8", "fp8"):
        if calibration is None:
            calibration = photo_tiles(input_size, mean, std, count=calib_images, seed=CALIBRATION_SEED)
        # GPUs accumulate int8 products in int32: full 8-bit weights, whatever CPU exports.
        proto = quantize_qdq(proto, precision, calibration, target="vnni")  # type: ignore[arg-type]
    elif precision != "fp32":
        raise M2ptError(f"precision {precision!r}: choose one of fp32, fp16, bf16, int8, fp8")
    PRECISION_KEY.set(proto, precision)  # the graph's precision now, not the export's fp32
    return proto
