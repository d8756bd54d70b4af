"""Reduced-precision ONNX graphs whose numerics can be checked in ONNX Runtime.

TensorRT 11 networks are strongly typed: an engine computes in the types written in
the ONNX. So the precision decision is made here, once, per node:

- MatMul / Gemm / Conv and the elementwise work between them run in fp16 or bf16;
- LayerNormalization, Softmax and the residual adds stay in fp32 — the known cure for
  ViT accuracy loss in reduced precision (the residual stream grows past what fp16
  resolves well, and the norms need its full range);
- the graph keeps fp32 inputs and outputs, so callers feed the same arrays at any precision.

ONNX Runtime's CPU provider runs the fp16 graph natively but has no bf16 kernels, so
:func:`emulate_in_fp32` rewrites the bf16 artifact into fp32 compute that rounds to bf16
exactly where the artifact stores bf16; that is what bf16 is verified with here.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from m2pt_deploy.errors import M2ptError
from m2pt_deploy.vocabulary import LowPrecision

__all__ = [
    "FP32_OPS",
    "LOW_PRECISION_OPS",
    "LowPrecision",
    "emulate_in_fp32",
    "low_precision_nodes",
    "residual_adds",
    "to_mixed_precision",
]

FP32_OPS: tuple[str, ...] = ("LayerNormalization", "Softmax", "ReduceMean", "Pow", "Sqrt")
# An allow-list, not a block-list: an op nobody has looked at stays in fp32.
LOW_PRECISION_OPS = frozenset({
    "MatMul", "Gemm", "Conv", "Add", "Sub", "Mul", "Div", "Erf", "Gelu", "Tanh", "Relu",
    "Sigmoid", "Transpose", "Reshape", "Squeeze", "Unsqueeze", "Slice", "Concat", "Gather",
    "Split", "Flatten", "Expand", "Identity",
})
_ONNX_TYPE = {"fp16": TensorProto.FLOAT16, "bf16": TensorProto.BFLOAT16}


def residual_adds(graph: onnx.GraphProto) -> set[str]:
    """Adds of two computed tensors: in a ViT these are exactly the residual connections.

    Bias adds, the position embedding and GELU's ``1 + erf`` all take a constant operand.
    """
    constants = {t.name for t in graph.initializer}
    constants |= {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    return {n.name for n in graph.node
            if n.op_type == "Add" and not any(i in constants for i in n.input)}


def low_precision_nodes(
    model: onnx.ModelProto,
    dtype: int = TensorProto.FLOAT16,
    *,
    keep_fp32: Collection[str] = FP32_OPS, keep_residual: bool = True,
) -> set[str]:
    """Names of the nodes that compute in reduced precision."""
    float_tensors = _float_tensors(model)
    kept = residual_adds(model.graph) if keep_residual else set()
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
    return {
        n.name for n in model.graph.node
        if n.op_type in LOW_PRECISION_OPS and n.op_type not in keep_fp32 and n.name not in kept
        and any(t in float_tensors for t in (*n.input, *n.output))
        and _accepts(n.op_type, opset, dtype)
    }


def to_mixed_precision(
    proto: onnx.ModelProto,
    precision: LowPrecision,
    *,
    keep_fp32: Collection[str] = FP32_OPS,
    keep_residual: bool = True,
) -> onnx.ModelProto:
    """A strongly typed mixed-precision copy of an fp32 graph (see the module docstring)."""
    model = _prepared_copy(proto, precision)
    low = low_precision_nodes(model, _ONNX_TYPE[precision], keep_fp32=keep_fp32,
                              keep_residual=keep_residual)
    _Rewriter(model, low, _ONNX_TYPE[precision]).run()
    return onnx.shape_inference.infer_shapes(model)


def emulate_in_fp32(proto: onnx.ModelProto) -> onnx.ModelProto:
    """An fp32 graph that rounds to fp16/bf16 exactly where the mixed-precision ``proto`` stores it.

    Low-precision weights become their (exact) fp32 values; every node that writes a
    low-precision tensor computes in fp32 and then passes through a ``Cast`` to the low
    type and back. The only difference to real kernels is accumulation, which TensorRT also
    does in fp32. This is how the bf16 artifact itself is run on ONNX Runtime's CPU provider.
    """
    model = onnx.shape_inference.infer_shapes(proto)
    low_types = {TensorProto.FLOAT16, TensorProto.BFLOAT16}
    types = {v.name: v.type.tensor_type.elem_type
             for v in (*model.graph.input, *model.graph.output, *model.graph.value_info)}
    for t in model.graph.initializer:
        if t.data_type in low_types:
            types[t.name] = t.data_type
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float32), t.name))
    nodes: list[onnx.NodeProto] = []
    for node in model.graph.node:
        nodes.append(node)
        for k, name in enumerate(node.output):
            low = types.get(name)
            if low not in low_types:
                continue
            stored = f"{name}__stored"
            node.output[k] = stored
            if node.op_type != "Cast":
                rounded = f"{name}__rounded"
                nodes.append(onnx.helper.make_node("Cast", [stored], [rounded], to=low))
                stored = rounded
            nodes.append(onnx.helper.make_node("Cast", [stored], [name], to=TensorProto.FLOAT))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    del model.graph.value_info[:]
    return onnx.shape_inference.infer_shapes(model)


def _prepared_copy(proto: onnx.ModelProto, precision: str) -> onnx.ModelProto:
    if precision not in _ONNX_TYPE:
        raise M2ptError(f"precision {precision!r} has no mixed-precision graph (fp16, bf16)")
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    for i, node in enumerate(model.graph.node):
        if not node.name:
            node.name = f"{node.op_type.lower()}_{i}"
    return model


def _accepts(op_type: str, opset: int, dtype: int) -> bool:
    """Whether the op's schema at this opset takes ``dtype`` (Conv only gained bf16 in opset 22)."""
    try:
        schema = onnx.defs.get_schema(op_type, opset, "")
    except onnx.defs.SchemaError:
        return False
    name = f"tensor({onnx.helper.tensor_dtype_to_string(dtype).removeprefix('TensorProto.').lower()})"
    return all(name in c.allowed_type_strs for c in schema.type_constraints
               if "tensor(float)" in c.allowed_type_strs)


def _float_tensors(model: onnx.ModelProto) -> set[str]:
    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    infos = [*g.input, *g.output, *g.value_info]
    out = {v.name for v in infos if v.type.tensor_type.elem_type == TensorProto.FLOAT}
    out |= {t.name for t in g.initializer if t.data_type == TensorProto.FLOAT}
    return out


class _Rewriter:
    """One pass over a topologically sorted graph, inserting Casts at precision borders."""

    def __init__(self, model: onnx.ModelProto, low: set[str], dtype: int) -> None:
        self.model, self.graph = model, model.graph
        self.low, self.dtype = low, dtype
        self.float_tensors = _float_tensors(model)
        self.current: dict[str, int] = {t: TensorProto.FLOAT for t in self.float_tensors}
        self.casts: dict[tuple[str, int], str] = {}
        self.nodes: list[onnx.NodeProto] = []

    def run(self) -> None:
        self._convert_weights()
        for node in self.graph.node:
            want = self.dtype if node.name in self.low else TensorProto.FLOAT
            for k, name in enumerate(node.input):
                if name in self.float_tensors and self.current[name] != want:
                    node.input[k] = self._cast(name, want)
            self.nodes.append(node)
            if node.name in self.low:
                self._mark_outputs(node)
        self._restore_outputs()
        del self.graph.node[:]
        self.graph.node.extend(self.nodes)
        del self.graph.value_info[:]

    def _convert_weights(self) -> None:
        """Weights read only by low-precision nodes are stored in the low type (or pre-rounded)."""
        readers: dict[str, list[str]] = {}
        for node in self.graph.node:
            for name in node.input:
                readers.setdefault(name, []).append(node.name)
        for t in self.graph.initializer:
            if t.data_type != TensorProto.FLOAT or not all(r in self.low for r in readers.get(t.name, [])):
                continue
            if t.name not in readers:
                continue
            t.CopyFrom(numpy_helper.from_array(_round(numpy_helper.to_array(t), self.dtype), t.name))
            self.current[t.name] = self.dtype

    def _mark_outputs(self, node: onnx.NodeProto) -> None:
        for name in node.output:
            if name in self.float_tensors:
                self.current[name] = self.dtype

    def _cast(self, name: str, to: int) -> str:
        key = (name, to)
        if key not in self.casts:
            self.casts[key] = out = f"{name}__to_{TensorProto.DataType.Name(to).lower()}"
            self.nodes.append(onnx.helper.make_node("Cast", [name], [out], name=f"{out}_cast", to=to))
        return self.casts[key]

    def _restore_outputs(self) -> None:
        for out in self.graph.output:
            if self.current.get(out.name, TensorProto.FLOAT) == TensorProto.FLOAT:
                continue
            inner = f"{out.name}__low"
            _rename_output(self.nodes, out.name, inner)
            self.nodes.append(onnx.helper.make_node(
                "Cast", [inner], [out.name], name=f"{out.name}_cast_fp32", to=TensorProto.FLOAT))


def _rename_output(nodes: Iterable[onnx.NodeProto], old: str, new: str) -> None:
    for node in nodes:
        for k, name in enumerate(node.output):
            if name == old:
                node.output[k] = new
        for k, name in enumerate(node.input):
            if name == old:
                node.input[k] = new


def _round(values: np.ndarray, dtype: int) -> np.ndarray:
    np_type = onnx.helper.tensor_dtype_to_np_dtype(dtype)
    # Out-of-range constants become ±inf, as an IEEE cast makes them (Point-MAE's farthest-point
    # sampling starts its running distances at 1e10: inf in fp16 keeps its meaning, "farther than all").
    with np.errstate(over="ignore"):
        return values.astype(np.float32).astype(np_type)
