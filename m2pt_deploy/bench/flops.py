"""FLOPs per sample, counted from the exported graph itself: what ONNX Runtime is asked to compute.

The plain (unfused) export at batch 1, its shapes inferred by ONNX: MatMul, Gemm and Conv count
2 FLOPs per multiply-add; every other op that computes counts one FLOP per output element, and
a reduction, ArgMax or TopK one per input element. So Point-MAE's grouping (farthest point
sampling, kNN distances) is in the count, and so are softmax, LayerNorm and GELU; shape ops
(Reshape, Gather, Concat, ...) move data and count nothing.

# NOTE Counting the graph rather than the torch module: the figure is the one the ONNX Runtime
# rows are timed on, whatever the family's torch code does around it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import onnx

__all__ = ["GraphFlops", "graph_flops"]

_MOVES = frozenset({
    "Reshape", "Transpose", "Gather", "GatherElements", "GatherND", "Concat", "Slice", "Split", "Squeeze",
    "Unsqueeze", "Expand", "Shape", "Constant", "ConstantOfShape", "Identity", "Flatten", "Cast", "Range",
    "Tile", "Size", "Dropout", "ScatterND", "ScatterElements", "Pad",
})
_REDUCING = frozenset({"ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL2",
                       "ReduceSumSquare", "ArgMax", "ArgMin", "TopK"})


@dataclasses.dataclass(frozen=True)
class GraphFlops:
    """FLOPs of one sample's forward pass, in GFLOP: ``matmul`` (MatMul, Gemm, Conv) and ``other``."""

    matmul: float
    other: float
    #: Ops whose shapes ONNX could not infer, so they are not in the count (empty: all counted).
    uncounted: tuple[str, ...] = ()

    @property
    def total(self) -> float:
        return self.matmul + self.other

    def to_dict(self) -> dict[str, object]:
        return {"matmul_gflop": self.matmul, "other_gflop": self.other, "total_gflop": self.total,
                "uncounted_ops": list(self.uncounted)}


def _shapes(proto: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    """Every tensor's static shape with the batch axis fixed to 1 (tensors left symbolic are absent)."""
    work = onnx.ModelProto()
    work.CopyFrom(proto)
    initializers = {t.name for t in work.graph.initializer}
    for value in work.graph.input:
        if value.name in initializers:
            continue
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].Clear()
            dims[0].dim_value = 1
    del work.graph.value_info[:]
    try:
        inferred = onnx.shape_inference.infer_shapes(work, data_prop=True)
    except Exception:  # noqa: BLE001 - ONNX refuses the graph (a domain it does not import): count nothing
        inferred = work
    out: dict[str, tuple[int, ...]] = {t.name: tuple(t.dims) for t in inferred.graph.initializer}
    for value in (*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output):
        dims = value.type.tensor_type.shape.dim
        if value.type.tensor_type.HasField("shape") and all(d.HasField("dim_value") for d in dims):
            out[value.name] = tuple(d.dim_value for d in dims)
    return out


def _matmul_flops(node: onnx.NodeProto, shapes: Mapping[str, tuple[int, ...]]) -> float | None:
    out = shapes.get(node.output[0])
    a = shapes.get(node.input[0])
    if out is None or a is None:
        return None
    if node.op_type == "MatMul":
        return 2.0 * math.prod(out) * a[-1]
    if node.op_type == "Gemm":
        trans_a = next((attr.i for attr in node.attribute if attr.name == "transA"), 0)
        return 2.0 * math.prod(out) * (a[0] if trans_a else a[-1])
    w = shapes.get(node.input[1])  # Conv: [out channels, in channels / groups, *kernel]
    return None if w is None else 2.0 * math.prod(out) * math.prod(w[1:])


def graph_flops(proto: onnx.ModelProto) -> GraphFlops:
    """FLOPs of one sample through ``proto`` (a plain export; fused contrib ops are not counted)."""
    shapes = _shapes(proto)
    matmul = other = 0.0
    uncounted: set[str] = set()
    for node in proto.graph.node:
        if node.op_type in _MOVES:
            continue
        if node.domain not in ("", "ai.onnx"):
            uncounted.add(f"{node.domain}::{node.op_type}")
            continue
        if node.op_type in ("MatMul", "Gemm", "Conv"):
            flops = _matmul_flops(node, shapes)
            if flops is None:
                uncounted.add(node.op_type)
            else:
                matmul += flops
            continue
        counted = shapes.get(node.input[0] if node.op_type in _REDUCING else node.output[0])
        if counted is None:
            uncounted.add(node.op_type)
        else:
            other += float(math.prod(counted))
    return GraphFlops(matmul / 1e9, other / 1e9, tuple(sorted(uncounted)))
