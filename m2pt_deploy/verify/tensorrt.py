"""Reduced-precision artifacts and TensorRT engines checked against the unmerged torch model.

The reference is always the model exactly as trained (pathways unmerged), run in fp32.
Each precision has its own notion of "close enough": fp32 must match logits to 1e-3;
fp16 / bf16 are judged by cosine similarity and top-1 agreement on real images; int8 and
fp8 by top-1 agreement alone, since their logits move by design.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from m2pt_deploy.build import build_unmerged, build_vanilla
from m2pt_deploy.checkpoint import Checkpoint
from m2pt_deploy.errors import M2ptError
from m2pt_deploy.export.engine_info import EngineInfo, check_compatible, read_engine_info
from m2pt_deploy.export.engine_onnx import engine_onnx
from m2pt_deploy.export.onnx import INPUT_NAME, OUTPUT_NAME, BatchSpec, export_model, save_onnx
from m2pt_deploy.export.precision import emulate_in_fp32
from m2pt_deploy.export.tensorrt import Platform, build_engine_from_onnx, detect_platform
from m2pt_deploy.vit import ModelSpec

__all__ = [
    "TOLERANCES",
    "EngineRunner",
    "PrecisionCheck",
    "Tolerance",
    "compare_logits",
    "latency_ratio",
    "latency_vs_vanilla",
    "onnx_logits",
    "reference_logits",
    "verify_engine",
    "verify_onnx_precision",
    "vanilla_engine_onnx",
]


@dataclasses.dataclass(frozen=True)
class Tolerance:
    max_abs: float | None = None
    min_cosine: float | None = None
    min_top1: float | None = None


TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(max_abs=1e-3),
    "fp16": Tolerance(min_cosine=0.999, min_top1=0.99),
    "bf16": Tolerance(min_cosine=0.999, min_top1=0.99),
    "int8": Tolerance(min_top1=0.98),
    "fp8": Tolerance(min_top1=0.98),
}


@dataclasses.dataclass(frozen=True)
class PrecisionCheck:
    """Candidate vs reference logits on ``n`` images; truthy when within ``tolerance``."""

    name: str
    precision: str
    n: int
    max_abs: float
    mean_abs: float
    cosine: float  # the worst image's
    top1: float
    tolerance: Tolerance

    def __bool__(self) -> bool:
        t = self.tolerance
        return ((t.max_abs is None or self.max_abs <= t.max_abs)
                and (t.min_cosine is None or self.cosine >= t.min_cosine)
                and (t.min_top1 is None or self.top1 >= t.min_top1))

    def __str__(self) -> str:
        t = self.tolerance
        parts = [f"{'PASSED' if self else 'FAILED'} | {self.name} ({self.precision})",
                 f"max abs {self.max_abs:.1e}" + (f" (tol {t.max_abs:.0e})" if t.max_abs else ""),
                 f"min cosine {self.cosine:.5f}" + (f" (tol {t.min_cosine})" if t.min_cosine else ""),
                 f"top-1 {round(self.top1 * self.n)}/{self.n}"
                 + (f" (tol {t.min_top1:.0%})" if t.min_top1 else "")]
        return " | ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def compare_logits(reference: np.ndarray, candidate: np.ndarray, *, precision: str,
                   name: str = "logits") -> PrecisionCheck:
    if reference.shape != candidate.shape:
        raise M2ptError(f"{name}: reference shape {reference.shape} vs candidate shape {candidate.shape}")
    ref, cand = reference.astype(np.float64), candidate.astype(np.float64)
    diff = np.abs(ref - cand)
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(cand, axis=1)
    cosine = np.sum(ref * cand, axis=1) / np.maximum(norms, 1e-30)
    return PrecisionCheck(
        name=name, precision=precision, n=len(ref), max_abs=float(diff.max()),
        mean_abs=float(diff.mean()), cosine=float(cosine.min()),
        top1=float(np.mean(ref.argmax(1) == cand.argmax(1))), tolerance=TOLERANCES[precision],
    )


def reference_logits(ckpt: Checkpoint, images: np.ndarray, *, batch: int = 64) -> np.ndarray:
    """The unmerged (as-trained) model's fp32 logits."""
    import torch

    model = build_unmerged(ckpt).eval()
    with torch.no_grad():
        return np.concatenate([model(torch.from_numpy(images[i:i + batch])).numpy()
                               for i in range(0, len(images), batch)])


def onnx_logits(proto: onnx.ModelProto, images: np.ndarray, *, batch: int = 64) -> np.ndarray:
    """ONNX Runtime on CPU; a graph holding bf16 runs through :func:`emulate_in_fp32`."""
    import onnxruntime as ort

    if _has_bf16(proto):
        proto = emulate_in_fp32(proto)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.concatenate([session.run([OUTPUT_NAME], {INPUT_NAME: images[i:i + batch]})[0]
                           for i in range(0, len(images), batch)])


def verify_onnx_precision(ckpt: Checkpoint, onnx_path: str | os.PathLike[str], images: np.ndarray,
                          *, precision: str) -> PrecisionCheck:
    """The reduced-precision ONNX a TensorRT engine will be built from, checked before the build."""
    proto = onnx.load_model(os.fspath(onnx_path))
    return compare_logits(reference_logits(ckpt, images), onnx_logits(proto, images),
                          precision=precision, name=Path(onnx_path).name)


def _has_bf16(proto: onnx.ModelProto) -> bool:
    return any(t.data_type == onnx.TensorProto.BFLOAT16 for t in proto.graph.initializer) or any(
        a.name == "to" and a.i == onnx.TensorProto.BFLOAT16 for n in proto.graph.node for a in n.attribute)


class EngineRunner:
    """A Polygraphy ``TrtRunner`` over an engine whose sidecar says it can run here."""

    def __init__(self, engine_path: str | os.PathLike[str], *, platform: Platform | None = None) -> None:
        self.path = Path(engine_path)
        self.info: EngineInfo = read_engine_info(self.path)
        self.platform = platform
        self._runner: Any = None

    def check_platform(self) -> None:
        platform = self.platform or detect_platform()
        missing = platform.missing()
        if missing is not None:
            raise M2ptError(f"cannot run the engine: {missing}", self.path)
        assert platform.tensorrt_version and platform.gpu_name and platform.compute_capability
        check_compatible(self.info, tensorrt_version=platform.tensorrt_version,
                         gpu_name=platform.gpu_name,
                         compute_capability=platform.compute_capability, source=self.path)

    def check_batch(self, batch: int) -> None:
        self.info.profile.check_batch(batch, source=os.fspath(self.path))

    def __enter__(self) -> EngineRunner:
        self.check_platform()
        from polygraphy.backend.common import BytesFromPath
        from polygraphy.backend.trt import EngineFromBytes, TrtRunner

        self._runner = TrtRunner(EngineFromBytes(BytesFromPath(os.fspath(self.path))),
                                 name=self.path.name)
        self._runner.activate()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._runner is not None:
            self._runner.deactivate()
            self._runner = None

    def infer(self, images: np.ndarray) -> np.ndarray:
        self.check_batch(len(images))
        return np.asarray(self._runner.infer({INPUT_NAME: images})[OUTPUT_NAME], dtype=np.float32)

    def inference_time(self) -> float:
        return float(self._runner.last_inference_time())


def verify_engine(ckpt: Checkpoint, engine_path: str | os.PathLike[str], images: np.ndarray,
                  *, batch: int | None = None, platform: Platform | None = None) -> PrecisionCheck:
    """TensorRT vs the unmerged torch model, with the tolerance of the engine's precision."""
    runner = EngineRunner(engine_path, platform=platform)
    step = batch or min(runner.info.profile.opt[0], len(images))
    runner.check_batch(step)
    reference = reference_logits(ckpt, images)
    with runner:
        got = np.concatenate([runner.infer(images[i:i + step]) for i in range(0, len(images), step)])
    return compare_logits(reference, got, precision=runner.info.precision, name=Path(engine_path).name)


def vanilla_engine_onnx(spec: ModelSpec, precision: str, batch: BatchSpec, *,
                        calib_images: int = 256) -> onnx.ModelProto:
    """A never-pathway-trained ViT of the same architecture, prepared exactly like the merged export.

    Merging adds no operations, so an engine built from this is the latency baseline.
    """
    proto = export_model(build_vanilla(spec, exportable=True), spec, batch=batch)
    return engine_onnx(proto, precision, input_size=spec.input_size, mean=spec.mean, std=spec.std,
                       calib_images=calib_images)


def latency_vs_vanilla(ckpt: Checkpoint, engine_path: str | os.PathLike[str], images: np.ndarray,
                       workdir: str | os.PathLike[str], *, iterations: int = 50) -> dict[str, float]:
    """Build the vanilla baseline engine with the merged engine's precision and profile, then time both."""
    info = read_engine_info(engine_path)
    profile = info.profile
    batch = BatchSpec(profile.min[0], profile.opt[0], profile.max[0])
    onnx_path = Path(workdir) / f"vanilla.{info.precision}.onnx"
    save_onnx(vanilla_engine_onnx(ckpt.spec, info.precision, batch), onnx_path, force=True)
    baseline = build_engine_from_onnx(onnx_path, Path(workdir) / "vanilla.engine",
                                      precision=info.precision, batch=batch, force=True)  # type: ignore[arg-type]
    return latency_ratio(engine_path, baseline, images[:batch.opt], iterations=iterations)


def latency_ratio(merged: str | os.PathLike[str], vanilla: str | os.PathLike[str], images: np.ndarray,
                  *, iterations: int = 50, clock: Callable[[], float] = time.perf_counter) -> dict[str, float]:
    """Median latency of two engines measured side by side, alternating, on one batch."""
    times: dict[str, list[float]] = {"merged": [], "vanilla": []}
    with EngineRunner(merged) as a, EngineRunner(vanilla) as b:
        for _ in range(3):
            a.infer(images), b.infer(images)
        for _ in range(iterations):
            for key, runner in (("merged", a), ("vanilla", b)):
                start = clock()
                runner.infer(images)
                times[key].append(clock() - start)
    med = {k: float(np.median(v)) for k, v in times.items()}
    return {"merged_ms": med["merged"] * 1e3, "vanilla_ms": med["vanilla"] * 1e3,
            "ratio": med["merged"] / med["vanilla"]}
