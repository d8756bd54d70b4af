"""Merged model → ONNX: one deterministic, checked, self-describing file.

Loaders follow Polygraphy's shape: ``OnnxFromCheckpoint`` stores its arguments and does
the work when called, so an export chain (and the TensorRT chain built on it) can be
assembled and inspected before anything heavy runs.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import nn

from m2pt_deploy import __version__
from m2pt_deploy.errors import M2ptError, first_line
from m2pt_deploy.families import ModelSpec, family_of
from m2pt_deploy.fileio import atomic_output, relink_external_data
from m2pt_deploy.merge import merge_model
from m2pt_deploy.metadata import (
    ARCH_KEY,
    FAMILY_KEY,
    INPUT_KEY,
    LABELS_KEY,
    LAMBDA_KEY,
    MODEL_KWARGS_KEY,
    NUM_CLASSES_KEY,
    PATHWAY_KEY,
    PRECISION_KEY,
    SOURCE_KIND_KEY,
    SOURCE_SHA256_KEY,
    VERSION_KEY,
    encode_metadata,
)
from m2pt_deploy.model.build import build_unmerged
from m2pt_deploy.model.checkpoint import Checkpoint, load_checkpoint
from m2pt_deploy.model.pathway import pathway_layers
from m2pt_deploy.runtime.io_names import INPUT_NAME, OUTPUT_NAME, input_name
from m2pt_deploy.vocabulary import DEFAULT_OPSET, DYNAMIC_BATCH, MIN_OPSET, BatchSpec, FloatPrecision, parse_batch

__all__ = [
    "INPUT_NAME",
    "OUTPUT_NAME",
    "BatchSpec",
    "OnnxFromCheckpoint",
    "export_model",
    "lambda_summary",
    "parse_batch",
    "save_onnx",
]

# protobuf cannot serialise a message over 2 GiB: larger models keep weights beside the graph.
_PROTOBUF_LIMIT = 2**31 - 1
Precision = FloatPrecision


def lambda_summary(model: nn.Module) -> dict[str, Any]:
    """Per aux model: how many layers carry it and the range of its learned λ."""
    layers = pathway_layers(model)
    if not layers:
        return {"layers": 0}
    n_aux = len(next(iter(layers.values())).scales)
    per_aux = []
    for k in range(n_aux):
        values = torch.cat([p.scales[k].detach().flatten() for p in layers.values()])
        per_aux.append({
            "min": float(values.min()), "max": float(values.max()),
            "mean_abs": float(values.abs().mean()),
        })
    return {"layers": len(layers), "aux": per_aux}


def export_model(
    model: nn.Module,
    spec: ModelSpec,
    *,
    opset: int = DEFAULT_OPSET,
    batch: BatchSpec = DYNAMIC_BATCH,
    metadata: Mapping[str, str] | None = None,
) -> onnx.ModelProto:
    """Trace an eval-mode vanilla model with torch's dynamo exporter into a checked ModelProto."""
    if opset < MIN_OPSET:
        raise M2ptError(f"--opset {opset}: ONNX export needs opset {MIN_OPSET} or newer")
    example = family_of(spec).example_input(spec, max(2, batch.opt) if batch.dynamic else batch.min)
    shapes = ({0: torch.export.Dim("batch", min=1, max=max(batch.max, 2))},) if batch.dynamic else None
    # The exporter prints its own progress lines; callers show ours instead.
    with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
        program = torch.onnx.export(
            model.eval(), (example,), None, dynamo=True, opset_version=opset,
            input_names=[input_name(spec)], output_names=[OUTPUT_NAME], dynamic_shapes=shapes,
            verbose=False,
        )
    assert program is not None  # f=None makes the exporter return the program
    proto = program.model_proto
    proto.producer_name, proto.producer_version = "m2pt-deploy", __version__
    onnx.helper.set_model_props(proto, dict(metadata or {}))
    return proto


def convert_fp16(proto: onnx.ModelProto) -> onnx.ModelProto:
    """fp16 weights and compute with fp32 I/O, LayerNorm kept in fp32 for accuracy."""
    from m2pt_deploy.export.precision import to_mixed_precision

    return to_mixed_precision(proto, "fp16")


def save_onnx(proto: onnx.ModelProto, path: str | os.PathLike[str], *, force: bool = False) -> Path:
    """Check, infer shapes and write atomically; weights go to ``<name>.data`` past 2 GiB."""
    try:
        onnx.checker.check_model(proto, full_check=proto.ByteSize() < _PROTOBUF_LIMIT)
    except onnx.checker.ValidationError as e:
        raise M2ptError(f"exported graph failed onnx.checker: {first_line(e)}", path) from e
    out = Path(path)
    external = proto.ByteSize() >= _PROTOBUF_LIMIT
    if not external:
        proto = onnx.shape_inference.infer_shapes(proto, strict_mode=True)
    with atomic_output(out, force=force) as tmp:
        if external:
            data = out.with_name(out.name + ".data")
            tmp_data = tmp.with_name(tmp.name + ".data")
            onnx.save_model(proto, tmp, save_as_external_data=True, location=tmp_data.name,
                            all_tensors_to_one_file=True)
            # The graph names its data file; rename the data first, then the graph.
            relink_external_data(tmp, data.name)
            os.replace(tmp_data, data)
        else:
            onnx.save_model(proto, tmp)
    return out


class OnnxFromCheckpoint:
    """Lazy loader: checkpoint → merged vanilla model → ``onnx.ModelProto`` with metadata."""

    def __init__(
        self,
        checkpoint: str | os.PathLike[str] | Checkpoint,
        *,
        arch: str | None = None,
        input_size: tuple[int, ...] | None = None,
        family: str | None = None,
        options: Mapping[str, Any] | None = None,
        opset: int = DEFAULT_OPSET,
        precision: Precision = "fp32",
        batch: BatchSpec = DYNAMIC_BATCH,
    ) -> None:
        self.checkpoint = checkpoint
        self.arch = arch
        self.input_size = input_size
        self.family, self.options = family, options
        self.opset = opset
        self.precision = precision
        self.batch = batch

    def load(self) -> Checkpoint:
        if isinstance(self.checkpoint, Checkpoint):
            return self.checkpoint
        return load_checkpoint(self.checkpoint, arch=self.arch, input_size=self.input_size, family=self.family,
                               options=self.options)

    def metadata(self, ckpt: Checkpoint, unmerged: nn.Module) -> dict[str, str]:
        # The input's layout and normalisation (for an image ViT also timm's crop and resize, which the
        # server's /classify applies as training evaluated).
        fields: dict[str, Any] = dict([
            VERSION_KEY.field(__version__),
            SOURCE_SHA256_KEY.field(ckpt.sha256),
            SOURCE_KIND_KEY.field(ckpt.kind),
            FAMILY_KEY.field(ckpt.spec.family),
            ARCH_KEY.field(ckpt.spec.arch),
            MODEL_KWARGS_KEY.field(ckpt.spec.model_kwargs),
            INPUT_KEY.field({"name": input_name(ckpt.spec), **family_of(ckpt.spec).input_metadata(ckpt.spec)}),
            NUM_CLASSES_KEY.field(ckpt.spec.num_classes),
            PRECISION_KEY.field(self.precision),
            LAMBDA_KEY.field(lambda_summary(unmerged)),
            PATHWAY_KEY.field(ckpt.pathway.to_dict() if ckpt.pathway else None),
        ])
        if "labels" in ckpt.extra:
            fields.update([LABELS_KEY.field(ckpt.extra["labels"])])
        return encode_metadata(fields)

    def __call__(self) -> onnx.ModelProto:
        ckpt = self.load()
        unmerged = build_unmerged(ckpt)
        merged = merge_model(unmerged, ckpt.spec, exportable=True)
        metadata = self.metadata(ckpt, unmerged)
        # The pathway model holds target and aux weights: free them before the exporter's copies.
        del unmerged
        proto = export_model(merged, ckpt.spec, opset=self.opset, batch=self.batch, metadata=metadata)
        return convert_fp16(proto) if self.precision == "fp16" else proto
