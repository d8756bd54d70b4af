"""ONNX Runtime's CPU fast path: fused attention, LayerNorm and GELU, optimized once, offline.

The plain export stays the portable, verified artifact; this module turns a copy of it into
a graph of ONNX Runtime's own fused operators:

1. each block's attention (QKV MatMul + bias, reshape/transpose/slice, scaled QKᵀ, softmax,
   ·V, reshape) becomes one ``com.microsoft.Attention`` node that does the QKV projection
   itself, which ONNX Runtime's own fusers never match in timm's export;
2. ONNX Runtime's transformer fusions add SkipLayerNormalization (residual add + LayerNorm)
   and BiasGelu;
3. an ONNX Runtime session at the extended level optimizes the result and saves it, so a
   server loads it with graph optimization disabled and starts without re-optimizing.

The extended level, not "all": "all" adds NCHWc layouts specific to the CPU it ran on.

# NOTE Why graph surgery: neither ONNX Runtime's session fusions nor its transformer
# optimizer (model_type "vit") match the attention of timm's exportable model, so 72
# MatMuls stay on ViT-B/16. ``kind="MultiHeadAttention"`` keeps the QKV MatMul and fuses
# only the core; ``Attention`` (the default) also takes the QKV projection, with weights
# pre-packed at load. On ViT-B/16 both measured faster than the unfused graph, Attention by
# the most at batch 1 (see docs/performance.md).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
from collections import Counter, deque
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx

from m2pt_deploy.errors import M2ptError
from m2pt_deploy.export.graph import copy_model_fields, import_graph
from m2pt_deploy.fileio import atomic_output
from m2pt_deploy.metadata import OPTIMIZED_KEY
from m2pt_deploy.runtime.sessions import is_optimized, ort_session

__all__ = [
    "fuse_attention",
    "fused_op_counts",
    "optimize_onnx",
    "ort_optimize",
    "save_optimized",
]

_MS = "com.microsoft"
AttentionKind = Literal["Attention", "MultiHeadAttention"]
# Ops that sit between the QKV projection and the output projection in timm's export.
_ATTENTION_BODY = frozenset({
    "Reshape", "Transpose", "Slice", "Split", "Squeeze", "Gather", "Unsqueeze",
    "Mul", "Div", "MatMul", "Softmax", "Shape", "Concat", "Cast",
})
_MAX_BODY_NODES = 40


def fuse_attention(proto: onnx.ModelProto, *, kind: AttentionKind = "Attention") -> tuple[onnx.ModelProto, int]:
    """Replace each timm attention subgraph with ``com.microsoft.Attention``; returns the count.

    A subgraph is found from its QKV reshape, ``[*, N, 3, heads, head_dim]`` fed by a
    MatMul with a weight initializer plus a bias (timm; VideoMAE V2's ``q_bias`` / ``v_bias``
    export as one folded bias) or by the MatMul alone (Point-MAE's bias-free qkv: a zero bias);
    it ends at the next MatMul with a weight (the output projection), whose input becomes the
    fused node's output. Token count, class token and pooling do not enter the match.
    """
    import onnx_graphsurgeon as gs

    graph = import_graph(proto)
    fused = 0
    for node in list(graph.nodes):
        match = _match_attention(node)
        if match is None:
            continue
        matmul, bias, heads, scale, out = match
        x, weight = matmul.inputs
        # The fused node takes over the tensor the projection reads; the old body goes dead.
        out.inputs.clear()
        attrs: dict[str, Any] = {"num_heads": heads}
        if scale is not None:
            attrs["scale"] = scale
        if kind == "Attention":
            graph.nodes.append(gs.Node("Attention", name=f"fused_attention_{fused}", domain=_MS,
                                       attrs=attrs, inputs=[x, weight, bias], outputs=[out]))
        else:
            hidden = int(bias.shape[0]) // 3
            qkv = matmul.outputs[0]
            split = gs.Constant(f"fused_attention_{fused}_split", np.array([hidden] * 3, np.int64))
            q, k, v = (gs.Variable(f"fused_attention_{fused}_{n}", dtype=np.float32) for n in "qkv")
            graph.nodes.append(gs.Node("Split", name=f"fused_attention_{fused}_split", attrs={"axis": -1},
                                       inputs=[qkv, split], outputs=[q, k, v]))
            graph.nodes.append(gs.Node("MultiHeadAttention", name=f"fused_attention_{fused}", domain=_MS,
                                       attrs=attrs, inputs=[q, k, v, bias], outputs=[out]))
        fused += 1
    graph.cleanup().toposort()
    out_proto = gs.export_onnx(graph)
    if fused and not any(o.domain == _MS for o in out_proto.opset_import):
        out_proto.opset_import.append(onnx.helper.make_opsetid(_MS, 1))
    copy_model_fields(proto, out_proto)
    return out_proto, fused


def _const(tensor: Any) -> np.ndarray | None:
    import onnx_graphsurgeon as gs

    return np.asarray(tensor.values) if isinstance(tensor, gs.Constant) else None


def _match_attention(reshape: Any) -> tuple[Any, Any, int, float | None, Any] | None:
    if reshape.op != "Reshape" or len(reshape.inputs) < 2:
        return None
    shape = _const(reshape.inputs[1])
    if shape is None or shape.shape != (5,) or int(shape[2]) != 3:
        return None
    producer = reshape.inputs[0].inputs[0] if reshape.inputs[0].inputs else None
    heads, hidden = int(shape[3]), int(shape[3]) * int(shape[4])
    if producer is not None and producer.op == "Add":
        matmul, bias = _split_bias_add(producer)
    elif producer is not None and producer.op == "MatMul" and len(reshape.inputs[0].outputs) == 1:
        # A bias-free qkv (Point-MAE's): Attention takes a zero bias, which costs nothing.
        matmul, bias = producer, _zero_bias(producer, 3 * hidden)
    else:
        return None
    if matmul is None or bias is None or matmul.op != "MatMul" or _const(matmul.inputs[1]) is None:
        return None
    weight = matmul.inputs[1]
    if tuple(weight.shape) != (hidden, 3 * hidden) or tuple(bias.shape) != (3 * hidden,):
        return None
    body = _body(reshape)
    if body is None:
        return None
    nodes, out = body
    return matmul, bias, heads, _scale(nodes, hidden // heads), out


def _zero_bias(matmul: Any, size: int) -> Any:
    import onnx_graphsurgeon as gs

    return gs.Constant(f"{matmul.inputs[1].name}_zero_bias", np.zeros(size, np.float32))


def _split_bias_add(add: Any) -> tuple[Any, Any]:
    a, b = add.inputs
    if _const(b) is not None and a.inputs:
        return a.inputs[0], b
    if _const(a) is not None and b.inputs:
        return b.inputs[0], a
    return None, None


def _body(start: Any) -> tuple[list[Any], Any] | None:
    """Nodes from the QKV reshape up to the output projection, and the tensor it reads."""
    seen, queue, ends = [start], deque([start]), set()
    while queue:
        node = queue.popleft()
        for tensor in node.outputs:
            for consumer in tensor.outputs:
                if consumer.op == "MatMul" and _const(consumer.inputs[1]) is not None:
                    ends.add(tensor.name)
                    end = tensor
                    continue
                if consumer.op not in _ATTENTION_BODY or len(seen) > _MAX_BODY_NODES:
                    return None
                if consumer not in seen:
                    seen.append(consumer)
                    queue.append(consumer)
    if len(ends) != 1 or sum(n.op == "Softmax" for n in seen) != 1:
        return None
    return seen, end


def _scale(nodes: Sequence[Any], head_dim: int) -> float | None:
    """The softmax scale the export applied, if it is not the default 1/√head_dim."""
    for node in nodes:
        if node.op in ("Mul", "Div"):
            values = [v for v in (_const(t) for t in node.inputs) if v is not None and v.size == 1]
            if values:
                value = float(values[0].reshape(()))
                scale = value if node.op == "Mul" else 1.0 / value
                return None if np.isclose(scale, head_dim ** -0.5, rtol=1e-6) else scale
    return None


def _heads_and_hidden(proto: onnx.ModelProto) -> tuple[int, int]:
    for node in proto.graph.node:
        if node.domain == _MS and node.op_type in ("Attention", "MultiHeadAttention"):
            heads = next(a.i for a in node.attribute if a.name == "num_heads")
            bias = next(t for t in proto.graph.initializer if t.name == node.input[-1])
            return heads, int(bias.dims[0]) // 3
    return 0, 0


def transformer_fusions(proto: onnx.ModelProto) -> onnx.ModelProto:
    """ONNX Runtime's transformer optimizer: SkipLayerNormalization, BiasGelu (Python fusers only)."""
    from onnxruntime.transformers.optimizer import optimize_model

    heads, hidden = _heads_and_hidden(proto)
    work = onnx.ModelProto()
    work.CopyFrom(proto)  # the optimizer rewrites the proto it is given
    with _quiet():
        model = optimize_model(work, model_type="vit", num_heads=heads, hidden_size=hidden, opt_level=0)
    out = model.model
    copy_model_fields(proto, out)
    return out


def ort_optimize(proto: onnx.ModelProto) -> onnx.ModelProto:
    """What an ONNX Runtime CPU session makes of ``proto`` at the extended level, read back."""

    with tempfile.TemporaryDirectory(prefix="m2pt-ort-opt-") as tmp:
        src, dst = Path(tmp, "in.onnx"), Path(tmp, "out.onnx")
        onnx.save_model(proto, src)
        ort_session(src, optimization="extended", optimized_model_path=dst,
                    what="ONNX Runtime could not optimize the graph")
        out = onnx.load_model(dst)
    copy_model_fields(proto, out)
    return out


def fused_op_counts(proto: onnx.ModelProto) -> dict[str, int]:
    """How many of ONNX Runtime's fused operators the graph holds, by op type."""
    counts = Counter(n.op_type for n in proto.graph.node if n.domain == _MS)
    return dict(sorted(counts.items()))


def optimize_onnx(proto: onnx.ModelProto, *, attention: AttentionKind | None = "Attention",
                  layers: bool = True) -> onnx.ModelProto:
    """The fast-path copy of a plain fp32 (or Q/DQ) export, marked with what was done.

    ``attention=None`` skips step 1 (for Q/DQ graphs: the QKV MatMul must stay visible to
    ONNX Runtime's quantized-op fusions); ``layers=False`` skips step 2.
    """
    import onnxruntime as ort

    if is_optimized(proto):
        raise M2ptError("the model is already optimized; optimize the plain export instead")
    fused = 0
    if attention is not None:
        proto, fused = fuse_attention(proto, kind=attention)
    if layers:
        proto = transformer_fusions(proto)
    out = ort_optimize(proto)
    record = {"runtime": "onnxruntime", "version": ort.__version__, "level": "extended",
              "attention": attention if fused else None, "attention_fused": fused,
              "fused_ops": fused_op_counts(out)}
    OPTIMIZED_KEY.set(out, record)
    return out


def save_optimized(proto: onnx.ModelProto, path: str | os.PathLike[str], *, force: bool = False) -> Path:
    """Write atomically. No ``onnx.checker`` here: it does not know ONNX Runtime's contrib ops."""
    out = Path(path)
    with atomic_output(out, force=force) as tmp:
        onnx.save_model(proto, tmp)
    return out


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The transformer optimizer logs every fusion at INFO and prints a model-type hint; its fusers
    log under their bare module names (``fusion_skiplayernorm`` warns that symbolic shape
    inference failed on Point-MAE's grouping), which only the root logger's level reaches."""
    loggers = [logging.getLogger("onnxruntime.transformers"), logging.getLogger()]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
