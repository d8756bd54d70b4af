"""What ``m2pt-bench`` measures: random weights (the default), a checkpoint, or an ONNX file.

A :class:`Subject` holds the torch models timed side by side (``vanilla``, ``merged`` and,
with pathways, ``unmerged``), the models to export for the ONNX Runtime rows, or, for an
ONNX file, the file itself. The vanilla model always has random weights: it is the latency
baseline a merged model is compared with, not a model whose accuracy means anything.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import onnx
import torch
from torch import nn

from m2pt_deploy.bench.latency import pathway_pair, trained_like
from m2pt_deploy.errors import M2ptError, first_line
from m2pt_deploy.families import ModelSpec, family_of
from m2pt_deploy.families.base import IMAGENET_MEAN, IMAGENET_STD
from m2pt_deploy.fileio import sha256_file
from m2pt_deploy.merge import merge_model
from m2pt_deploy.metadata import (
    ARCH_KEY,
    FAMILY_KEY,
    INPUT_KEY,
    MODEL_KWARGS_KEY,
    NUM_CLASSES_KEY,
    PRECISION_KEY,
    read_metadata,
)
from m2pt_deploy.model.build import build_unmerged, build_vanilla
from m2pt_deploy.model.checkpoint import Checkpoint, PathwayInfo, save_checkpoint
from m2pt_deploy.model.pathway import pathway_state_dict
from m2pt_deploy.runtime.sessions import cpu_session, is_optimized

__all__ = ["OnnxFile", "Subject", "checkpoint_subject", "onnx_subject", "random_subject", "read_onnx_file"]

SubjectKind = Literal["random", "checkpoint", "onnx"]
# Ops that only a quantized graph holds, and the contrib domain only an optimized one uses.
_INT8_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "QLinearMatMul", "MatMulInteger", "MatMulIntegerToFloat",
                       "QAttention"})
_CONTRIB = "com.microsoft"


@dataclasses.dataclass(frozen=True)
class OnnxFile:
    """A user's ONNX file: its one image input, fixed batch (if any), precision and state."""

    path: Path
    input_name: str
    batch: int | None
    precision: str
    optimized: bool
    notes: tuple[str, ...] = ()


@dataclasses.dataclass
class Subject:
    """The models one ``m2pt-bench`` run compares. ``primary``: the model its goals and
    accuracy are about (``merged``, or ``file`` for an ONNX file)."""

    kind: SubjectKind
    spec: ModelSpec
    primary: str
    torch: dict[str, nn.Module] = dataclasses.field(default_factory=dict)
    exportable: dict[str, Callable[[], nn.Module]] = dataclasses.field(default_factory=dict)
    onnx: OnnxFile | None = None
    source: dict[str, Any] = dataclasses.field(default_factory=dict)
    seconds: dict[str, float] = dataclasses.field(default_factory=dict)
    export_args: Callable[[Path], list[str]] | None = None

    @property
    def reference(self) -> str | None:
        """The fp32 torch model that formats are checked against: the model as trained."""
        return next((m for m in ("unmerged", "merged") if m in self.torch), None)


def _vanilla_baseline(spec: ModelSpec, seed: int) -> tuple[nn.Module, nn.Module]:
    """(eager, exportable) vanilla ViTs with the same random weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        exportable = trained_like(build_vanilla(spec, exportable=True))
    # torch rows run timm's default (fused-attention) modules, as merge_model returns them;
    # the ONNX exports use the exportable ones. Same weights either way.
    eager = build_vanilla(spec)
    eager.load_state_dict(exportable.state_dict())
    return eager.eval(), exportable.eval()


def _merged(model: nn.Module, spec: ModelSpec) -> tuple[nn.Module, float]:
    t0 = time.perf_counter()
    merged = merge_model(model, spec)
    return merged, time.perf_counter() - t0


def random_subject(spec: ModelSpec, *, seed: int = 0) -> Subject:
    """A random model of ``spec``'s family with a random-λ pathway from a random auxiliary one: nothing
    downloaded."""
    unmerged = pathway_pair(spec, seed=seed)
    merged, merge_s = _merged(unmerged, spec)
    vanilla, vanilla_export = _vanilla_baseline(spec, seed)

    def export_args(tmp: Path) -> list[str]:
        ckpt = tmp / "pathway.safetensors"
        family = family_of(spec)
        info = PathwayInfo(family.pathway_layers, family.block_path, "scalar",
                           ({"modality": "random", "sha256": None},))
        save_checkpoint(ckpt, pathway_state_dict(unmerged), spec, pathway=info, force=True)
        return [str(ckpt)]

    return Subject(
        "random", spec, "merged", {"vanilla": vanilla, "merged": merged, "unmerged": unmerged},
        {"merged": lambda: merge_model(unmerged, spec, exportable=True), "vanilla": lambda: vanilla_export},
        source={"kind": "random", "description": f"random {family_of(spec).describe(spec)} with a random-λ pathway"},
        seconds={"merge": merge_s}, export_args=export_args,
    )


def checkpoint_subject(ckpt: Checkpoint, *, seed: int = 0, overrides: tuple[str, ...] = ()) -> Subject:
    """The checkpoint's model as trained (``unmerged``, when it has pathways), merged, and a
    random vanilla ViT of the same spec. ``overrides``: m2pt-export flags (``--arch`` ...)
    that the export-cost run passes on."""
    trained = build_unmerged(ckpt)
    merged, merge_s = _merged(trained, ckpt.spec)
    vanilla, vanilla_export = _vanilla_baseline(ckpt.spec, seed)
    models = {"vanilla": vanilla, "merged": merged}
    if ckpt.pathway is not None:
        models["unmerged"] = trained
    pathway = ckpt.pathway
    return Subject(
        "checkpoint", ckpt.spec, "merged", models,
        {"merged": lambda: merge_model(trained, ckpt.spec, exportable=True), "vanilla": lambda: vanilla_export},
        source={"kind": "checkpoint", "path": str(ckpt.path), "sha256": ckpt.sha256, "format": ckpt.kind,
                "pathway": None if pathway is None else {"layers": len(pathway.layers), "aux": len(pathway.aux)},
                "notes": list(ckpt.notes),
                "description": f"checkpoint {ckpt.path.name} ({ckpt.kind}, "
                               + ("no pathway" if pathway is None else
                                  f"pathways on {len(pathway.layers)} layer kinds from {len(pathway.aux)} aux")
                               + ")"},
        seconds={"merge": merge_s}, export_args=lambda tmp: [str(ckpt.path), *overrides],
    )


def _elem_dims(value_info: Any) -> tuple[int, list[int | None]]:
    t = value_info.type.tensor_type
    return t.elem_type, [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in t.shape.dim]


def _precision(proto: onnx.ModelProto, meta: dict[str, Any]) -> tuple[str, str | None]:
    declared = PRECISION_KEY.get(meta)
    if isinstance(declared, str):
        return declared, None
    if any(n.op_type in _INT8_OPS for n in proto.graph.node):
        return "int8", "precision int8 (read off its Q/DQ nodes)"
    if any(t.data_type == onnx.TensorProto.FLOAT16 for t in proto.graph.initializer):
        return "fp16", "precision fp16 (read off its weights)"
    return "fp32", None


def read_onnx_file(path: str | os.PathLike[str], *,
                   input_size: tuple[int, ...] | None = None) -> tuple[OnnxFile, ModelSpec]:
    """Check that ``path`` is a one-input model ONNX Runtime can open; its spec from the metadata
    ``m2pt-export`` writes, else (an image model) from the graph's shapes (ImageNet mean and std).
    A model of another family (clips, clouds) is read from that metadata only."""
    p = Path(path)
    if not p.is_file():
        raise M2ptError("no such file" if not p.exists() else "is a directory, not an ONNX file", p)
    try:
        proto = onnx.load_model(os.fspath(p))
    except Exception as e:  # protobuf's DecodeError and friends: not a model, whatever the name says
        raise M2ptError(f"not an ONNX model ({first_line(e)})", p) from None
    initializers = {t.name for t in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in initializers]
    if not proto.graph.node or not proto.graph.output:
        raise M2ptError("not an ONNX model: the file holds no graph", p)
    if len(inputs) != 1:
        raise M2ptError(f"m2pt-bench takes a one-input image model, this one has inputs {[i.name for i in inputs]}", p)
    elem, dims = _elem_dims(inputs[0])
    meta = read_metadata(proto)
    family = FAMILY_KEY.get(meta)
    notes: list[str] = []
    if isinstance(family, str) and family != "vit":  # a clip or cloud model m2pt-export wrote: its spec is recorded
        spec = _family_spec(meta, family, elem, dims, input_size, p)
    elif elem != onnx.TensorProto.FLOAT or len(dims) != 4:
        raise M2ptError(f"input {inputs[0].name!r} must be float32 [N, C, H, W], it is "
                        f"{onnx.TensorProto.DataType.Name(elem)} with {len(dims)} dimensions", p)
    else:
        spec, notes = _onnx_spec(proto, meta, dims, input_size, p)
    precision, note = _precision(proto, meta)
    optimized = is_optimized(proto) or any(n.domain == _CONTRIB for n in proto.graph.node)
    try:
        cpu_session(p, spinning=False)
    except Exception as e:  # ONNX Runtime's own refusal, in its words
        raise M2ptError(f"ONNX Runtime cannot load it ({first_line(e)})", p) from None
    info = OnnxFile(p, inputs[0].name, dims[0], precision, optimized, (*notes, *((note,) if note else ())))
    return info, spec


def _family_spec(meta: dict[str, Any], family: str, elem: int, dims: list[int | None],
                 input_size: tuple[int, ...] | None, path: Path) -> ModelSpec:
    """The spec ``m2pt-export`` recorded for a model of another family than ``vit``."""
    arch, kwargs, declared = ARCH_KEY.get(meta), MODEL_KWARGS_KEY.get(meta), INPUT_KEY.get(meta)
    if not isinstance(arch, str) or not isinstance(kwargs, dict) or not isinstance(declared, dict) \
            or "shape" not in declared:
        raise M2ptError(f"a {family} model without m2pt-export's metadata (arch, model_kwargs, input): "
                        "benchmark its checkpoint, or re-export it with m2pt-export", path)
    shape = tuple(int(v) for v in declared["shape"])
    if input_size is not None:
        raise M2ptError(f"--input-size does not apply: the file records its {family} input {list(shape)}", path)
    if elem != onnx.TensorProto.FLOAT or len(dims) != len(shape) + 1 or any(
            d is not None and d != v for d, v in zip(dims[1:], shape, strict=True)):
        raise M2ptError(f"its input is {onnx.TensorProto.DataType.Name(elem)} {dims}, its metadata says float "
                        f"[N, {', '.join(map(str, shape))}]", path)
    return ModelSpec(arch, dict(kwargs), shape, tuple(declared.get("mean") or ()), tuple(declared.get("std") or ()),
                     family=family)


def _onnx_spec(proto: onnx.ModelProto, meta: dict[str, Any], dims: list[int | None],
               input_size: tuple[int, ...] | None, path: Path) -> tuple[ModelSpec, list[str]]:
    notes: list[str] = []
    found = INPUT_KEY.get(meta)
    declared: dict[str, Any] = found if isinstance(found, dict) else {}
    shown = ["?" if d is None else d for d in dims]
    if input_size is not None:
        if any(d is not None and d != v for d, v in zip(dims[1:], input_size, strict=True)):
            raise M2ptError(f"--input-size {' '.join(map(str, input_size))} does not fit its input {shown}", path)
        c, h, w = input_size
    elif all(dims[1:]):
        c, h, w = (int(d or 0) for d in dims[1:])
    elif declared:
        c, h, w = int(declared["channels"]), int(declared["height"]), int(declared["width"])
    else:
        raise M2ptError(f"input shape {shown} is not fixed: pass --input-size C H W", path)
    if declared.get("mean") and len(declared["mean"]) == c:
        mean, std = tuple(declared["mean"]), tuple(declared["std"])
    else:
        mean, std = (IMAGENET_MEAN, IMAGENET_STD) if c == 3 else ((0.5,) * c, (0.5,) * c)
        notes.append(f"no normalisation in its metadata: mean {list(mean)}, std {list(std)} assumed")
    _, out_dims = _elem_dims(proto.graph.output[0])
    classes = out_dims[-1] if out_dims and out_dims[-1] else NUM_CLASSES_KEY.get(meta)
    arch = ARCH_KEY.get(meta)
    kwargs = dict(MODEL_KWARGS_KEY.get(meta) or {})
    if classes:
        kwargs.setdefault("num_classes", int(classes))
    return ModelSpec(arch if isinstance(arch, str) else "unknown", kwargs, (c, h, w), mean, std), notes


def onnx_subject(info: OnnxFile, spec: ModelSpec) -> Subject:
    """An ONNX file as :func:`read_onnx_file` found it: timed in ONNX Runtime only."""
    p = info.path
    return Subject(
        "onnx", spec, "file", onnx=info,
        source={"kind": "onnx", "path": str(p), "sha256": sha256_file(p), "precision": info.precision,
                "optimized": info.optimized, "fixed_batch": info.batch, "notes": list(info.notes),
                "description": f"ONNX file {p.name} ({info.precision}"
                               + (", optimized" if info.optimized else "")
                               + (f", fixed batch {info.batch}" if info.batch else "") + ")"},
    )
