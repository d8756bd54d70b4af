"""Zero added cost, as a fact about the graph.

The merged export is compared with a randomly initialised vanilla timm ViT of the same
architecture, exported the same way (opset, batch, precision): same op-type multiset,
node count, initializer names, shapes and dtypes, and the same inputs and outputs. Weights
differ and are not compared; everything that decides cost is.

# NOTE torch's ONNX exporter optimises by value: tensors with equal contents are shared
# as one initializer and zero biases may be dropped. timm's own init (LayerNorm 1/0, zero
# biases) would thus give the reference fewer initializers than any trained model has. So
# the reference draws fresh random values for every tensor but keeps the candidate's
# coincidences: a constant tensor stays as it is, and two equal tensors stay equal.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
from collections import Counter
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import onnx
import torch
from torch import Tensor, nn

from m2pt_deploy.errors import M2ptError
from m2pt_deploy.export.onnx import DYNAMIC_BATCH, BatchSpec, convert_fp16, export_model
from m2pt_deploy.export.optimize import optimize_onnx
from m2pt_deploy.families import ModelSpec, family_of
from m2pt_deploy.metadata import PRECISION_KEY, read_metadata
from m2pt_deploy.model.build import build_vanilla
from m2pt_deploy.runtime.sessions import is_optimized
from m2pt_deploy.verify.result import StructureResult
from m2pt_deploy.vocabulary import ONNX_PRECISIONS

__all__ = [
    "ExportSettings",
    "GraphSignature",
    "check_structure",
    "export_settings",
    "graph_signature",
    "reference_signature",
    "structure_differences",
    "value_pattern",
]

_ONNX_DOMAINS = ("", "ai.onnx")


@dataclasses.dataclass(frozen=True)
class ExportSettings:
    """How a graph was exported, read back from the graph itself."""

    opset: int
    batch: BatchSpec
    precision: str
    # ONNX Runtime's CPU fast path (export/optimize.py) was applied.
    optimized: bool = False


@dataclasses.dataclass(frozen=True)
class GraphSignature:
    """Everything about a graph that decides its cost, nothing about its weight values."""

    ops: Mapping[str, int]
    node_count: int
    initializers: Mapping[str, tuple[tuple[int, ...], str]]
    inputs: tuple[tuple[str, str, tuple[int | str, ...]], ...]
    outputs: tuple[tuple[str, str, tuple[int | str, ...]], ...]
    opsets: Mapping[str, int]
    functions: tuple[str, ...]

    def summary(self) -> str:
        n_init, n_ops = len(self.initializers), len(self.ops)
        return f"{self.node_count} nodes, {n_init} initializers, {n_ops} op types"


def _dtype(code: int) -> str:
    return onnx.TensorProto.DataType.Name(code).lower()


def _nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _nodes(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from _nodes(g)


def _value(v: onnx.ValueInfoProto) -> tuple[str, str, tuple[int | str, ...]]:
    t = v.type.tensor_type
    dims = tuple(
        d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim
    )
    return v.name, _dtype(t.elem_type), dims


def graph_signature(proto: onnx.ModelProto) -> GraphSignature:
    """The graph's cost-deciding facts. Scalar initializers are left out of ``initializers``: in a
    quantized graph they are the calibrated scales and zero points, and ONNX Runtime's optimizer
    (its ConstantSharing pass) keeps one of any scalars that happen to be equal, so which of
    their names survive depends on the calibration, not on the cost (the nodes reading them
    are still counted)."""
    nodes = list(_nodes(proto.graph))
    ops = Counter(
        n.op_type if n.domain in _ONNX_DOMAINS else f"{n.domain}::{n.op_type}" for n in nodes
    )
    return GraphSignature(
        ops=dict(sorted(ops.items())),
        node_count=len(nodes),
        initializers={
            t.name: (tuple(t.dims), _dtype(t.data_type)) for t in proto.graph.initializer if math.prod(t.dims) > 1
        },
        inputs=tuple(_value(v) for v in proto.graph.input),
        outputs=tuple(_value(v) for v in proto.graph.output),
        opsets={o.domain or "ai.onnx": o.version for o in proto.opset_import},
        functions=tuple(sorted(f"{f.domain}::{f.name}" for f in proto.functions)),
    )


def _shape(entry: tuple[tuple[int, ...], str]) -> str:
    dims, dtype = entry
    return f"{dtype}{list(dims)}"


def _mapping_differences(
    what: str, cand: Mapping[str, Any], ref: Mapping[str, Any], fmt: Any = str
) -> list[str]:
    out = []
    for key in sorted(set(cand) | set(ref)):
        c, r = cand.get(key), ref.get(key)
        if c != r:
            out.append(
                f"{what} {key}: {fmt(c) if c is not None else 'absent'} vs "
                f"{fmt(r) if r is not None else 'absent'}"
            )
    return out


def structure_differences(candidate: GraphSignature, reference: GraphSignature) -> list[str]:
    """Each difference as ``<what>: <candidate value> vs <reference value>``."""
    out: list[str] = []
    if candidate.node_count != reference.node_count:
        out.append(f"node count: {candidate.node_count} vs {reference.node_count}")
    out += _mapping_differences("op", candidate.ops, reference.ops)
    out += _mapping_differences(
        "initializer", candidate.initializers, reference.initializers, _shape
    )
    out += _mapping_differences("opset", candidate.opsets, reference.opsets)
    for what, cand, ref in (
        ("inputs", candidate.inputs, reference.inputs),
        ("outputs", candidate.outputs, reference.outputs),
        ("functions", candidate.functions, reference.functions),
    ):
        if cand != ref:
            out.append(f"{what}: {list(cand)} vs {list(ref)}")
    return out


def export_settings(proto: onnx.ModelProto) -> ExportSettings:
    """Opset, batch and precision as the graph records them (metadata first, then the graph)."""
    opset = next((o.version for o in proto.opset_import if o.domain in _ONNX_DOMAINS), None)
    if opset is None:
        raise M2ptError("the model imports no default ONNX opset")
    if not proto.graph.input:
        raise M2ptError("the graph has no inputs")
    first = proto.graph.input[0].type.tensor_type.shape.dim
    if first and first[0].HasField("dim_value"):
        batch = BatchSpec(first[0].dim_value, first[0].dim_value, first[0].dim_value)
    else:
        batch = DYNAMIC_BATCH
    precision = PRECISION_KEY.get(read_metadata(proto))
    if precision is None:
        fp16 = any(t.data_type == onnx.TensorProto.FLOAT16 for t in proto.graph.initializer)
        precision = "fp16" if fp16 else "fp32"
    return ExportSettings(opset, batch, str(precision), optimized=is_optimized(proto))


# A tensor's role in the reference: drawn at random, kept as it is (constant), or equal to
# an earlier tensor (by name).
Pattern = tuple[tuple[str, str], ...]


def value_pattern(state_dict: Mapping[str, Tensor] | None) -> Pattern:
    """Which tensors of ``state_dict`` are constant, and which repeat an earlier one."""
    if state_dict is None:
        return ()
    out: list[tuple[str, str]] = []
    first: dict[tuple[Any, ...], str] = {}
    for key, value in state_dict.items():
        if not value.is_floating_point() or value.numel() == 0:
            continue
        flat = value.detach().reshape(-1)
        if bool((flat == flat[0]).all()):
            out.append((key, f"const:{float(flat[0])!r}"))
            continue
        sig = (
            tuple(value.shape),
            str(value.dtype),
            hashlib.sha256(flat.cpu().contiguous().numpy().tobytes()).hexdigest(),
        )
        out.append((key, f"same:{first[sig]}") if sig in first else (key, "random"))
        first.setdefault(sig, key)
    return tuple(out)


def _randomise(model: nn.Module, pattern: Pattern) -> None:
    roles = dict(pattern)
    state = model.state_dict()
    with torch.no_grad():
        for key, value in state.items():
            role = roles.get(key, "random")
            if not value.is_floating_point():
                continue
            if role.startswith("const:"):
                value.fill_(float(role.removeprefix("const:")))
            elif role.startswith("same:"):
                value.copy_(state[role.removeprefix("same:")])
            elif key.endswith("running_var"):
                value.uniform_(0.5, 1.5)  # a variance (Point-MAE's BatchNorm): positive, or its fold is NaN
            else:
                value.normal_(0.0, 0.02)


@functools.lru_cache(maxsize=8)
def _reference_signature(
    spec_json: str, settings: ExportSettings, pattern: Pattern
) -> GraphSignature:
    spec = ModelSpec.from_dict(json.loads(spec_json))
    # Keep the caller's RNG stream untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_vanilla(spec, exportable=True)
        _randomise(model, pattern)
    proto = export_model(model, spec, opset=settings.opset, batch=settings.batch)
    if settings.precision == "fp16":
        proto = convert_fp16(proto)
    if settings.precision == "int8":
        # Quantized the way m2pt-export quantizes: the Q/DQ placement and the int8 initializers'
        # shapes do not depend on the calibration data or the weight bits, only the scales do.
        from m2pt_deploy.export.int8.cpu import cpu_int8_onnx

        calibration = np.random.default_rng(0).standard_normal((2, *spec.input_size)).astype(np.float32)
        return graph_signature(cpu_int8_onnx(proto, calibration, optimize=settings.optimized, target="vnni"))
    if settings.optimized:
        proto = optimize_onnx(proto)
    return graph_signature(proto)


def reference_signature(
    spec: ModelSpec, settings: ExportSettings, *, like: Mapping[str, Tensor] | None = None
) -> GraphSignature:
    """The signature of a random vanilla ``spec`` ViT exported with ``settings``.

    ``like``: the candidate's (merged) state dict, whose constant and repeated tensors
    the reference copies (see the note at the top). Cached per process.
    """
    if settings.precision not in ONNX_PRECISIONS:
        raise M2ptError(
            f"the structure check exports a vanilla reference in fp32, fp16 or int8, "
            f"not {settings.precision}"
        )
    return _reference_signature(
        json.dumps(spec.to_dict(), sort_keys=True), settings, value_pattern(like)
    )


def check_structure(
    proto: onnx.ModelProto, spec: ModelSpec, *, like: Mapping[str, Tensor] | None = None
) -> StructureResult:
    """``proto`` against a vanilla ``spec`` export; ``like`` as in :func:`reference_signature`."""
    settings = export_settings(proto)
    batch = "dynamic" if settings.batch.dynamic else f"fixed {settings.batch.min}"
    optimized = ", ONNX Runtime-optimized" if settings.optimized else ""
    reference = reference_signature(spec, settings, like=like)
    candidate = graph_signature(proto)
    return StructureResult(
        reference=f"vanilla {family_of(spec).describe(spec)} "
        f"(opset {settings.opset}, {batch} batch, {settings.precision}{optimized})",
        summary=candidate.summary(),
        differences=tuple(structure_differences(candidate, reference)),
    )
