"""Reduced-precision ONNX and TensorRT engines against the unmerged torch model.

The same Polygraphy comparison as ONNX Runtime's (:func:`compare_runners` with the
unmerged model's :class:`TorchRunner` as reference), with TensorRT's tolerances: fp32
within 1e-3 on logits (TensorRT reorders reductions); fp16 / bf16 by cosine and top-1
agreement on real images; int8 / fp8 by top-1 agreement, since their logits move by design.
The runners come from ``runtime/`` (the engine's through ``export.engine_info.engine_runner``,
once its sidecar says it runs on this TensorRT and this GPU); every batch must fit the engine's
profile.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
from polygraphy.backend.base import BaseRunner

from m2pt_deploy.errors import M2ptError
from m2pt_deploy.export.engine_info import engine_runner, read_engine_info
from m2pt_deploy.export.onnx import INPUT_NAME
from m2pt_deploy.export.precision import emulate_in_fp32
from m2pt_deploy.export.tensorrt import Platform
from m2pt_deploy.families import family_of
from m2pt_deploy.model.build import build_unmerged
from m2pt_deploy.model.checkpoint import Checkpoint
from m2pt_deploy.runtime.runners import TorchRunner, ort_runner
from m2pt_deploy.runtime.sessions import Optimization
from m2pt_deploy.verify.numerics import compare_runners
from m2pt_deploy.verify.result import CheckResult
from m2pt_deploy.verify.tolerance import TOLERANCES, engine_tolerance

__all__ = [
    "batch_feeds",
    "graph_input_name",
    "onnx_precision_runner",
    "verify_engine",
    "verify_onnx_precision",
]



def batch_feeds(images: np.ndarray, batch: int, *, name: str = INPUT_NAME) -> list[dict[str, np.ndarray]]:
    """``images`` in batches of ``batch`` under the input ``name`` (the graph's or the engine's)."""
    if images.ndim < 2 or len(images) == 0:
        raise M2ptError(f"inputs must be a non-empty [N, ...] array, got shape {images.shape}")
    x = np.ascontiguousarray(images, dtype=np.float32)
    return [{name: x[i:i + batch]} for i in range(0, len(x), batch)]


def graph_input_name(onnx_path: str | os.PathLike[str]) -> str:
    """The input an ONNX file declares (its weights are not read)."""
    proto = onnx.load_model(os.fspath(onnx_path), load_external_data=False)
    weights = {t.name for t in proto.graph.initializer}
    return next(v.name for v in proto.graph.input if v.name not in weights)


def _reference(ckpt: Checkpoint, name: str) -> TorchRunner:
    return TorchRunner(lambda: build_unmerged(ckpt), (None, *ckpt.spec.input_size), name="torch-unmerged",
                       input_name=name)


def onnx_precision_runner(onnx_path: str | os.PathLike[str], *, name: str | None = None) -> BaseRunner:
    """ONNX Runtime on CPU, computing what the engine will compute, on any x86 CPU.

    A graph holding bf16 runs through :func:`emulate_in_fp32`. A Q/DQ graph runs with graph
    optimization off: each DequantizeLinear feeds an fp32 MatMul, i.e. exact integer products
    accumulated without limit, as TensorRT's int32 accumulators do. Fused into ONNX
    Runtime's CPU integer kernels it would instead saturate int16 on CPUs without VNNI
    (see ``m2pt_deploy.cpu``) and judge the engine by the verifying machine's instruction set.
    """
    proto = onnx.load_model(os.fspath(onnx_path))
    if _has_bf16(proto):
        proto = emulate_in_fp32(proto)
    optimization: Optimization = "none" if _has_qdq(proto) else "all"
    return ort_runner(proto.SerializeToString(), optimization=optimization, path=onnx_path,
                      name=name or f"onnxrt:{Path(onnx_path).name}")


def verify_onnx_precision(ckpt: Checkpoint, onnx_path: str | os.PathLike[str], images: np.ndarray,
                          *, precision: str, batch: int | None = None) -> CheckResult:
    """The ONNX an engine will be built from, checked in ONNX Runtime before the build.

    fp32 and fp16 graphs are ONNX files like ``m2pt-export --format onnx`` writes and are held
    to the same ONNX tolerance (fp32: max abs 1e-4); the looser engine bounds (fp32 1e-3: TF32
    and tactic choice) are for the built engine. Quantized and bf16 graphs, emulated here, take
    the engine's bounds.
    """
    name = graph_input_name(onnx_path)
    runners = [_reference(ckpt, name), onnx_precision_runner(onnx_path)]
    note = _EMULATION_NOTES.get(precision, "")
    tolerance = TOLERANCES[precision] if precision in ("fp32", "fp16") else engine_tolerance(precision)
    batch = batch or family_of(ckpt.spec).held_out_batch
    (result,) = compare_runners(runners, batch_feeds(images, batch, name=name), tolerance, check=f"{precision} onnx",
                                note=note)
    return result


_EMULATION_NOTES = {
    "bf16": "bf16 emulated in fp32 (ONNX Runtime has no CPU bf16 kernels)",
    "int8": "Q/DQ emulated in fp32 (exact integer products, unbounded accumulation, as TensorRT's int32)",
    "fp8": "Q/DQ emulated in fp32",
}


def _has_qdq(proto: onnx.ModelProto) -> bool:
    return any(n.op_type == "DequantizeLinear" for n in proto.graph.node)


def _has_bf16(proto: onnx.ModelProto) -> bool:
    bf16 = onnx.TensorProto.BFLOAT16
    return any(t.data_type == bf16 for t in proto.graph.initializer) or any(
        a.name == "to" and a.i == bf16 for n in proto.graph.node for a in n.attribute)


def verify_engine(ckpt: Checkpoint, engine_path: str | os.PathLike[str], images: np.ndarray, *,
                  batch: int | None = None, platform: Platform | None = None) -> CheckResult:
    """TensorRT vs the unmerged torch model, with the tolerance of the engine's precision.

    ``batch`` defaults to the profile's OPT; a batch outside the profile is refused first.
    """
    info = read_engine_info(engine_path)
    step = batch or min(info.profile.opt[0], len(images))
    info.profile.check_batch(step, source=os.fspath(engine_path))
    name = info.profile.input_name
    feeds = batch_feeds(images, step, name=name)
    runner, _ = engine_runner(engine_path, platform=platform)
    (result,) = compare_runners([_reference(ckpt, name), runner], feeds, engine_tolerance(info.precision),
                                check=f"tensorrt {info.precision}")
    return result
