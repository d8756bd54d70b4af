"""Explicit quantization: Q/DQ nodes written into the ONNX, calibrated on real images.

TensorRT 11 dropped implicit (calibrator-driven) int8; an int8 or fp8 engine is built
from a graph that already says where to quantize and with which scales. ONNX Runtime's
static quantizer writes that graph, and because Q/DQ graphs also run on ONNX Runtime's
CPU provider, the quantized numerics are verified before any engine exists.

Settings follow what TensorRT's explicit-quantization docs ask for: symmetric scales
(zero point 0), per-channel weights, per-tensor activations, biases left in float, and
Q/DQ only in front of the weight-carrying MatMul / Gemm / Conv nodes, so attention's
activation-by-activation MatMuls and the fp32 islands stay in float.

int8 weights are 7-bit (|w| <= 64) when the CPU the model is for saturates u8 x s8 pairs
in int16 (AVX2, AVX-512 without VNNI; see ``m2pt_deploy.cpu``), full 8-bit otherwise;
the choice is written into the model's metadata. Calibration streams: activation
histograms are merged one batch at a time (``activation_ranges.py``), so memory does not
grow with the number of calibration images (ViT-B/16 keeps ~50 MB of activations per image).
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx

from m2pt_deploy.cpu import Int8Target, int8_target, saturates
from m2pt_deploy.errors import M2ptError
from m2pt_deploy.export.int8.activation_ranges import activation_ranges
from m2pt_deploy.metadata import INT8_TARGET_KEY

__all__ = ["QuantPrecision", "quantizable_nodes", "quantize_qdq", "qdq_summary"]

QuantPrecision = Literal["int8", "fp8"]
_WEIGHT_OPS = ("MatMul", "Gemm", "Conv")
# Weight ops whose output can stay float on ONNX Runtime's CPU provider: DQ -> MatMul (-> Add
# bias) becomes one MatMulIntegerToFloat, Gemm a QGemm with a float output. Conv keeps its
# output Q/DQ: QLinearConv needs one, and a Conv without it would run in float.
_FLOAT_OUTPUT_OPS = ("MatMul", "Gemm")
# Readers of a tensor's shape only: a Q/DQ in front of them changes nothing they compute.
_SHAPE_OPS = ("Shape", "Size")
# float8 Q/DQ operators exist from opset 19 on.
_FP8_MIN_OPSET = 19
# Images per range-measuring run: every measured activation of a batch is alive at once
# (ViT-B/16: ~116 MB per image), so small batches keep calibration memory flat.
_RANGE_BATCH = 2


def quantizable_nodes(proto: onnx.ModelProto) -> list[str]:
    """MatMul / Gemm / Conv nodes whose second input is a weight initializer and whose activation
    input no node outside this set reads.

    ONNX Runtime's quantizer puts one Q/DQ pair on an activation and rewires *every* reader of
    it to the dequantized copy, so a float node sharing that input would silently compute on
    rounded values. Point-MAE shows why it matters: the centres picked by farthest point
    sampling feed both the position MLP's first Linear and the KNN grouping, whose TopK would
    then pick other neighbours. Such a layer stays in float. What quantizes, then: for ViTs and
    VideoMAE the patch embedding, every block's qkv / proj / fc1 / fc2 and the head; for
    Point-MAE the mini-PointNet encoder's four Conv1d, the blocks, the head and ``pos_embed``'s
    second Linear, while ``pos_embed.0`` (it reads the centres) and the grouping itself (ArgMax,
    Min, TopK, Gather: no weights, and no quantized tensor among its inputs) stay exact.
    """
    weights = {t.name for t in proto.graph.initializer}
    candidates = [n for n in proto.graph.node
                  if n.op_type in _WEIGHT_OPS and len(n.input) > 1 and n.input[1] in weights]
    chosen = {n.name for n in candidates}
    readers: dict[str, set[str]] = {}
    for node in proto.graph.node:
        if node.op_type not in _SHAPE_OPS:  # a rounded copy has the same shape
            for tensor in node.input:
                readers.setdefault(tensor, set()).add(node.name)
    return [n.name for n in candidates if readers[n.input[0]] <= chosen]


def quantize_qdq(
    proto: onnx.ModelProto,
    precision: QuantPrecision,
    calibration: np.ndarray,
    *,
    input_name: str | None = None,
    batch_size: int = 8,
    target: Int8Target | None = None,
    quantize_outputs: bool = True,
) -> onnx.ModelProto:
    """A Q/DQ copy of an fp32 graph, with activation ranges from ``calibration`` ([N, *input], any family).

    ``target``: the CPU integer path the int8 model is for (default: this machine's);
    it decides 7-bit or 8-bit weights. TensorRT exports pass ``"vnni"`` (no saturation on GPUs).
    ``quantize_outputs=False`` leaves the outputs of MatMul and Gemm in float (their inputs
    are still quantized): for ONNX Runtime's CPU provider, where the output Q/DQ pair only
    rounds the result a second time and keeps the bias add out of the integer kernel.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if precision not in ("int8", "fp8"):
        raise M2ptError(f"precision {precision!r} is not an explicit-quantization precision (int8, fp8)")
    if calibration.ndim < 2 or len(calibration) == 0:
        raise M2ptError(f"calibration inputs must be a non-empty [N, ...] array, got {calibration.shape}")
    name = input_name or proto.graph.input[0].name
    # Percentile calibration stacks per-batch histograms and fails on a short last batch:
    # calibrate on whole batches only.
    batch_size = min(batch_size, len(calibration))
    calibration = calibration[: len(calibration) - len(calibration) % batch_size]
    nodes = quantizable_nodes(proto)
    float_outputs = () if quantize_outputs else _FLOAT_OUTPUT_OPS
    reader = _Reader(name, calibration, batch_size)
    options: dict[str, Any] = {"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False,
                               "DedicatedQDQPair": False, "OpTypesToExcludeOutputQuantization": list(float_outputs)}
    if precision == "fp8":
        proto = _at_least_opset(proto, _FP8_MIN_OPSET)
        qtype, method = QuantType.QFLOAT8E4M3FN, CalibrationMethod.Distribution
        options["CalibStridedMinMax"] = 1  # one batch per collection: histograms merge as they come
    else:
        # Percentile (99.999th) ranges, streamed (activation_ranges.py): with MinMax a few
        # outliers would set the whole int8 scale. They reach ONNX Runtime as its calibration
        # cache, so its own pass does not run (``_range_cache``); where it has no cache, its pass
        # sees one input and every range it would use is overridden.
        qtype, method = QuantType.QInt8, CalibrationMethod.MinMax
        thresholds = activation_ranges(proto, _activations(proto, nodes, float_outputs),
                                       _Reader(name, calibration, _RANGE_BATCH).all_batches())
        options["TensorQuantOverrides"] = {t: [{"rmin": np.float32(-v), "rmax": np.float32(v)}]
                                           for t, v in thresholds.items()}
        reader = _Reader(name, calibration[:1], 1)  # its own pass only has to run: one image
    target = target or int8_target()
    reduce_range = precision == "int8" and saturates(target)
    with tempfile.TemporaryDirectory(prefix="m2pt-qdq-") as tmp:
        src, dst = Path(tmp, "fp32.onnx"), Path(tmp, f"{precision}.onnx")
        onnx.save_model(proto, src)
        cache: dict[str, Any] = {}
        if precision == "int8" and _takes_range_cache(quantize_static):
            cache["calibration_cache_path"] = _range_cache(thresholds, Path(tmp, "ranges.json"))
        with _quiet():
            quantize_static(
                str(src), str(dst), reader,
                quant_format=QuantFormat.QDQ, activation_type=qtype, weight_type=qtype,
                per_channel=precision == "int8", reduce_range=reduce_range, nodes_to_quantize=nodes,
                op_types_to_quantize=list(_WEIGHT_OPS), calibrate_method=method, extra_options=options, **cache,
            )
        out = onnx.load_model(dst)
    out.producer_name, out.producer_version = proto.producer_name, proto.producer_version
    del out.metadata_props[:]
    out.metadata_props.extend(p for p in proto.metadata_props if p.key != INT8_TARGET_KEY)
    if precision == "int8":
        INT8_TARGET_KEY.set(out, {"target": target, "weight_bits": 7 if reduce_range else 8})
    return out


def _takes_range_cache(quantize_static: Any) -> bool:
    """Whether this ONNX Runtime's ``quantize_static`` reads tensor ranges from a calibration cache
    (``calibration_cache_path``, in 1.32; the extra's floor is 1.18, which lacks it)."""
    import inspect

    return "calibration_cache_path" in inspect.signature(quantize_static).parameters


def _range_cache(thresholds: dict[str, float], path: Path) -> Path:
    """Our percentile ranges as ONNX Runtime's calibration cache, so that its own calibration pass
    does not run at all: that pass runs the whole fp32 model once more, and on a VideoMAE V2 ViT-B
    clip it was the export's peak (8.1 GB against 5.0 GB for our streamed ranges)."""
    from onnxruntime.quantization import CalibrationMethod, TensorsData, save_tensors_data
    from onnxruntime.quantization.calibrate import TensorData

    ranges = {t: TensorData(lowest=np.float32(-v), highest=np.float32(v)) for t, v in thresholds.items()}
    save_tensors_data(TensorsData(CalibrationMethod.MinMax, ranges), path)
    return path


def _activations(proto: onnx.ModelProto, nodes: list[str], float_outputs: tuple[str, ...] = ()) -> list[str]:
    """What needs a range: the activation input of each node to quantize, and its output unless
    its op type is in ``float_outputs`` (the tensors the quantizer will put Q/DQ pairs on)."""
    chosen, weights = set(nodes), {t.name for t in proto.graph.initializer}
    found = {t for n in proto.graph.node if n.name in chosen
             for t in (n.input[0], *(() if n.op_type in float_outputs else n.output))}
    return sorted(found - weights)


def qdq_summary(proto: onnx.ModelProto) -> dict[str, Any]:
    """How many Q/DQ pairs, and whether every zero point is 0 (TensorRT needs symmetric)."""
    from onnx import numpy_helper

    inits = {t.name: t for t in proto.graph.initializer}
    q = [n for n in proto.graph.node if n.op_type == "QuantizeLinear"]
    dq = [n for n in proto.graph.node if n.op_type == "DequantizeLinear"]
    zero_points = [inits[n.input[2]] for n in (*q, *dq) if len(n.input) > 2 and n.input[2] in inits]
    symmetric = all(not np.any(numpy_helper.to_array(z).astype(np.float32)) for z in zero_points)
    types = sorted({onnx.TensorProto.DataType.Name(z.data_type) for z in zero_points})
    return {"quantize": len(q), "dequantize": len(dq), "symmetric": symmetric, "types": types}


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The quantizer prints histogram progress and logs a pre-processing hint on the root logger.

    Its pre-processing (ORT-specific fusions) is skipped on purpose: TensorRT parses the
    plain ONNX ops, not onnxruntime's contrib ops.
    """
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


def _at_least_opset(proto: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    current = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 1)
    if current >= opset:
        return proto
    from onnx import version_converter

    return version_converter.convert_version(proto, opset)


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over an in-memory array, in batches.

    ``__len__`` and ``set_range`` let the quantizer collect one range of batches at a time
    (its ``CalibStridedMinMax`` option) instead of every activation of every batch at once.
    """

    def __init__(self, name: str, images: np.ndarray, batch_size: int) -> None:
        self.name, self.images, self.batch_size = name, images, batch_size
        self.ranges: list[tuple[int, int]] = []
        self.set_range(0, len(self))

    def __len__(self) -> int:
        return -(-len(self.images) // self.batch_size)

    def set_range(self, start_index: int, end_index: int) -> None:
        self.ranges.append((start_index, end_index))
        self._it: Iterator[dict[str, np.ndarray]] = self._batches(start_index, end_index)

    def _batches(self, start: int, end: int) -> Iterator[dict[str, np.ndarray]]:
        for i in range(start, min(end, len(self))):
            rows = self.images[i * self.batch_size:(i + 1) * self.batch_size]
            yield {self.name: np.ascontiguousarray(rows, dtype=np.float32)}

    def all_batches(self) -> Iterator[dict[str, np.ndarray]]:
        return self._batches(0, len(self))

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self.set_range(0, len(self))
