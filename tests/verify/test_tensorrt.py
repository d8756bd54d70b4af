from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from m2pt_deploy.bench.engine_latency import latency_vs_vanilla, vanilla_engine_onnx
from m2pt_deploy.errors import M2ptError
from m2pt_deploy.export.engine_info import engine_runner
from m2pt_deploy.export.engine_onnx import engine_onnx
from m2pt_deploy.export.onnx import BatchSpec, OnnxFromCheckpoint
from m2pt_deploy.export.tensorrt import Platform
from m2pt_deploy.metadata import read_metadata
from m2pt_deploy.model.checkpoint import load_checkpoint
from m2pt_deploy.verify.metrics import error_stats
from m2pt_deploy.verify.tensorrt import (
    batch_feeds,
    verify_engine,
    verify_onnx_precision,
)
from m2pt_deploy.verify.tolerance import ENGINE_TOLERANCES, engine_tolerance
from tests.export.test_tensorrt import _fake_engine
from tests.tiny import TINY

H100 = Platform("11.4.0.106", "NVIDIA H100 80GB HBM3", (9, 0))


def test_tolerances_per_precision() -> None:
    assert ENGINE_TOLERANCES["fp32"].max_abs == 1e-3
    assert engine_tolerance("fp16").min_cosine == engine_tolerance("bf16").min_cosine == 0.999
    assert engine_tolerance("fp16").min_top1 == engine_tolerance("bf16").min_top1 == 0.99
    assert engine_tolerance("int8").min_top1 == engine_tolerance("fp8").min_top1 == 0.98
    with pytest.raises(M2ptError, match="no tolerance for precision 'int4'"):
        engine_tolerance("int4")


def test_tolerances_pass_and_fail_on_the_right_side_of_each_bound() -> None:
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(100, 10))
    fp32 = engine_tolerance("fp32")
    assert not fp32.failures(error_stats(ref, ref + 5e-4))
    assert fp32.failures(error_stats(ref, ref + 2e-3)) == ["max abs 2.0e-03 > 1e-03"]
    swapped = ref.copy()
    swapped[:3] = -swapped[:3]  # three images change their top-1: 97% agreement
    assert engine_tolerance("int8").failures(error_stats(ref, swapped)) == ["top-1 97/100 < 98%"]
    assert not engine_tolerance("fp16").failures(error_stats(ref, ref * 1.01))  # scale: same cosine, top-1


def test_feeds_split_images_into_batches() -> None:
    feeds = batch_feeds(np.zeros((10, 3, 4, 4)), 4)
    assert [f["pixel_values"].shape[0] for f in feeds] == [4, 4, 2]
    assert all(f["pixel_values"].dtype == np.float32 for f in feeds)
    # Any family's inputs: a point cloud batch is [N, points, 3]; only no rows or no sample axis is refused.
    assert [f["pixel_values"].shape for f in batch_feeds(np.zeros((3, 8, 3)), 2)] == [(2, 8, 3), (1, 8, 3)]
    with pytest.raises(M2ptError, match=r"non-empty \[N, \.\.\.\] array, got shape \(0, 4, 4\)"):
        batch_feeds(np.zeros((0, 4, 4)), 1)
    with pytest.raises(M2ptError, match=r"got shape \(3,\)"):
        batch_feeds(np.zeros(3), 1)


@pytest.mark.parametrize("precision", ["int8", "bf16"])
def test_engine_onnx_is_verified_against_the_unmerged_model(trained_digits, tmp_path: Path, precision) -> None:
    # The trained demo model: engine tolerances (int8 top-1 >= 98%) are meant for confident logits.
    ckpt = load_checkpoint(trained_digits[0])
    spec = ckpt.spec
    model = engine_onnx(OnnxFromCheckpoint(ckpt)(), precision, input_size=spec.input_size, mean=spec.mean,
                        std=spec.std, calib_images=64)
    path = tmp_path / f"m.{precision}.onnx"
    onnx.save_model(model, path)
    images = np.load(trained_digits[1])["x"][:256] * 2.0 - 1.0  # digits, normalised as the model was trained
    result = verify_onnx_precision(ckpt, path, images.astype(np.float32), precision=precision)
    assert result.stats is not None and result.stats.top1_total == 256 and result.stats.max_abs > 0
    # Both run emulated in fp32 (bf16: no CPU kernels; int8: exact integer products, as TensorRT
    # accumulates them, not the CPU's int16-saturating AVX2 kernels), so the numbers are the same
    # on every x86 CPU. Measured: bf16 cosine 0.9998, top-1 256/256 (passes its tolerance);
    # int8 top-1 253/256 (98.8%) with calibration on photo tiles, not digits: asserted at 97%.
    assert result.reference == "torch-unmerged" and "emulated in fp32" in str(result)
    if precision == "bf16":
        assert result, str(result)
    else:
        assert result.stats.top1_rate >= 0.97, str(result)
    assert read_metadata(model)["m2pt_deploy.precision"] == precision


def test_runner_refuses_a_machine_without_tensorrt(tmp_path: Path) -> None:
    engine, _ = _fake_engine(tmp_path)
    with pytest.raises(M2ptError, match="m.engine: cannot run the engine: TensorRT is not installed"):
        engine_runner(engine, platform=Platform(None, None, None))


def test_runner_refuses_another_gpu(tmp_path: Path) -> None:
    engine, _ = _fake_engine(tmp_path)
    a100 = Platform("11.4.0.106", "NVIDIA A100", (8, 0))
    with pytest.raises(M2ptError, match=r"built for NVIDIA H100 80GB HBM3 \(sm_90\) but this GPU is NVIDIA A100"):
        engine_runner(engine, platform=a100)


def test_runner_is_built_lazily_once_the_sidecar_agrees(tmp_path: Path) -> None:
    engine, info = _fake_engine(tmp_path)
    runner, got = engine_runner(engine, platform=H100)
    assert got == info and runner.name == "tensorrt:m.engine" and not runner.is_active


def test_batch_above_profile_max_is_refused_at_verify_time(m2pt_ckpt: Path, tmp_path: Path) -> None:
    engine, _ = _fake_engine(tmp_path)
    images = np.zeros((64, *TINY.input_size), np.float32)
    with pytest.raises(M2ptError, match=r"batch 64 is above the profile's MAX \(engine profile 1:8:32\)"):
        verify_engine(load_checkpoint(m2pt_ckpt), engine, images, batch=64, platform=H100)


def test_verify_refuses_a_file_that_is_not_an_engine(m2pt_ckpt: Path) -> None:
    with pytest.raises(M2ptError, match="is a safetensors file, not a TensorRT engine"):
        verify_engine(load_checkpoint(m2pt_ckpt), m2pt_ckpt, np.zeros((1, 3, 32, 32), np.float32))


def test_vanilla_baseline_has_the_merged_engine_graph(m2pt_ckpt: Path) -> None:
    precision = "int8"  # Q/DQ placement must match too, not just the float graph
    ckpt = load_checkpoint(m2pt_ckpt)
    batch = BatchSpec(1, 4, 8)
    merged = engine_onnx(OnnxFromCheckpoint(ckpt, batch=batch)(), precision, input_size=TINY.input_size,
                         mean=TINY.mean, std=TINY.std, calib_images=16)
    vanilla = vanilla_engine_onnx(ckpt.spec, precision, batch, calib_images=16)
    assert [n.op_type for n in vanilla.graph.node] == [n.op_type for n in merged.graph.node]
    shapes = [(tuple(t.dims), t.data_type) for t in merged.graph.initializer]
    assert sorted(shapes) == sorted((tuple(t.dims), t.data_type) for t in vanilla.graph.initializer)


def test_latency_baseline_needs_tensorrt_and_says_so(m2pt_ckpt: Path, tmp_path: Path, monkeypatch) -> None:
    from m2pt_deploy.export import tensorrt as trt_export

    monkeypatch.setattr(trt_export, "detect_platform", lambda: Platform(None, None, None))
    engine, _ = _fake_engine(tmp_path)
    images = np.zeros((8, *TINY.input_size), np.float32)
    with pytest.raises(M2ptError, match="TensorRT is not installed"):
        latency_vs_vanilla(load_checkpoint(m2pt_ckpt), engine, images, tmp_path)
    assert (tmp_path / "vanilla.fp16.onnx").is_file() and not (tmp_path / "vanilla.engine").exists()


def test_fp32_engine_onnx_is_held_to_the_onnx_tolerance(m2pt_ckpt: Path, tmp_path: Path) -> None:
    """The same fp32 graph gets the same bound under --format trt as under --format onnx (1e-4)."""
    ckpt = load_checkpoint(m2pt_ckpt)
    model = engine_onnx(OnnxFromCheckpoint(ckpt)(), "fp32", input_size=TINY.input_size, mean=TINY.mean,
                        std=TINY.std)
    path = tmp_path / "m.fp32.onnx"
    onnx.save_model(model, path)
    images = np.random.default_rng(0).standard_normal((8, *TINY.input_size)).astype(np.float32)
    result = verify_onnx_precision(ckpt, path, images, precision="fp32")
    assert result.tolerance.max_abs == 1e-4 and result, str(result)
