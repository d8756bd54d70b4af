"""A TensorRT engine's latency against a vanilla-model engine built the same way (same precision,
same batch profile), timed interleaved: the zero-cost claim, measured on the engine itself."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx

from m2pt_deploy.bench.latency import LatencyComparison, compare_latency
from m2pt_deploy.export.engine_info import engine_runner, read_engine_info
from m2pt_deploy.export.engine_onnx import engine_onnx
from m2pt_deploy.export.onnx import INPUT_NAME, BatchSpec, export_model, save_onnx
from m2pt_deploy.export.tensorrt import build_engine_from_onnx
from m2pt_deploy.families import ModelSpec
from m2pt_deploy.model.build import build_vanilla
from m2pt_deploy.model.checkpoint import Checkpoint
from m2pt_deploy.verify.tensorrt import batch_feeds

__all__ = ["latency_vs_vanilla", "vanilla_engine_onnx"]


def vanilla_engine_onnx(spec: ModelSpec, precision: str, batch: BatchSpec, *,
                        calib_images: int = 256) -> onnx.ModelProto:
    """A never-pathway-trained ViT of the same architecture, prepared exactly like the merged export.

    Merging adds no operations, so an engine built from this is the latency baseline.
    """
    proto = export_model(build_vanilla(spec, exportable=True), spec, batch=batch)
    return engine_onnx(proto, precision, input_size=spec.input_size, mean=spec.mean, std=spec.std,
                       calib_images=calib_images)


def latency_vs_vanilla(ckpt: Checkpoint, engine_path: str | os.PathLike[str], images: np.ndarray,
                       workdir: str | os.PathLike[str], *, rounds: int = 50,
                       warmup: int = 5) -> LatencyComparison:
    """Build the vanilla baseline at the merged engine's precision and profile; time both, interleaved."""
    info = read_engine_info(engine_path)
    profile = info.profile
    batch = BatchSpec(profile.min[0], profile.opt[0], profile.max[0])
    feed = batch_feeds(images[:batch.opt], batch.opt)[0]
    profile.check_batch(len(feed[INPUT_NAME]), source=os.fspath(engine_path))
    onnx_path = Path(workdir) / f"vanilla.{info.precision}.onnx"
    save_onnx(vanilla_engine_onnx(ckpt.spec, info.precision, batch), onnx_path, force=True)
    baseline = build_engine_from_onnx(onnx_path, Path(workdir) / "vanilla.engine",
                                      precision=info.precision,  # type: ignore[arg-type]
                                      batch=batch, force=True)
    merged_runner, _ = engine_runner(engine_path, name="tensorrt-merged")
    vanilla_runner, _ = engine_runner(baseline, name="tensorrt-vanilla")
    return compare_latency("tensorrt", merged_runner, vanilla_runner, feed, rounds=rounds, warmup=warmup)
