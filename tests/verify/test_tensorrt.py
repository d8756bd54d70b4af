from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from m2pt_deploy.checkpoint import load_checkpoint
from m2pt_deploy.errors import M2ptError
from m2pt_deploy.export.calibration import calibration_tiles
from m2pt_deploy.export.tensorrt import Platform
from m2pt_deploy.verify.tensorrt import (
    TOLERANCES,
    EngineRunner,
    compare_logits,
    latency_vs_vanilla,
    vanilla_engine_onnx,
    verify_engine,
    verify_onnx_precision,
)
from tests.conftest import TINY
from tests.export.test_tensorrt import _fake_engine

H100 = Platform("11.4.0.106", "NVIDIA H100 80GB HBM3", (9, 0))


def test_tolerances_per_precision() -> None:
    assert TOLERANCES["fp32"].max_abs == 1e-3
    assert TOLERANCES["fp16"].min_cosine == TOLERANCES["bf16"].min_cosine == 0.999
    assert TOLERANCES["fp16"].min_top1 == 0.99 and TOLERANCES["int8"].min_top1 == 0.98


def test_compare_logits_passes_and_fails_on_the_right_side_of_each_bound() -> None:
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(100, 10)).astype(np.float32)
    assert compare_logits(ref, ref + 5e-4, precision="fp32")
    failed = compare_logits(ref, ref + 2e-3, precision="fp32")
    assert not failed and str(failed).startswith("FAILED | logits (fp32) | max abs 2.0e-03 (tol 1e-03)")
    swapped = ref.copy()
    swapped[:3] = -swapped[:3]  # three images change their top-1: 97% agreement
    check = compare_logits(ref, swapped, precision="int8")
    assert check.top1 == pytest.approx(0.97) and not check
    assert "top-1 97/100 (tol 98%)" in str(check)
    assert compare_logits(ref, ref * 1.01, precision="fp16")  # scale moves logits, not cosine or top-1
    with pytest.raises(M2ptError, match=r"reference shape \(100, 10\) vs candidate shape \(99, 10\)"):
        compare_logits(ref, ref[:99], precision="fp32")


def test_int8_onnx_is_verified_against_the_unmerged_model(m2pt_ckpt: Path, tmp_path: Path) -> None:
    from m2pt_deploy.export.engine_onnx import engine_onnx
    from m2pt_deploy.export.onnx import OnnxFromCheckpoint

    ckpt = load_checkpoint(m2pt_ckpt)
    model = engine_onnx(OnnxFromCheckpoint(ckpt)(), "int8", input_size=TINY.input_size, mean=TINY.mean,
                        std=TINY.std, calib_images=64)
    path = tmp_path / "m.int8.onnx"
    onnx.save_model(model, path)
    images = calibration_tiles(TINY.input_size, TINY.mean, TINY.std, count=64, seed=1)
    check = verify_onnx_precision(ckpt, path, images, precision="int8")
    assert check.n == 64 and check.max_abs > 0 and check.cosine > 0.99, str(check)


def test_runner_refuses_a_machine_without_tensorrt(tmp_path: Path) -> None:
    engine, _ = _fake_engine(tmp_path)
    with pytest.raises(M2ptError, match="m.engine: cannot run the engine: TensorRT is not installed"):
        EngineRunner(engine, platform=Platform(None, None, None)).__enter__()


def test_runner_refuses_another_gpu(tmp_path: Path) -> None:
    engine, _ = _fake_engine(tmp_path)
    a100 = Platform("11.4.0.106", "NVIDIA A100", (8, 0))
    with pytest.raises(M2ptError, match=r"built for NVIDIA H100 80GB HBM3 \(sm_90\) but this GPU is NVIDIA A100"):
        EngineRunner(engine, platform=a100).__enter__()


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
    from m2pt_deploy.export.engine_onnx import engine_onnx
    from m2pt_deploy.export.onnx import BatchSpec, OnnxFromCheckpoint

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
