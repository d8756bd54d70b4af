"""ONNX Runtime's CPU fast path: same numbers as the plain export, fused ops, checked structure."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from m2pt_deploy.errors import M2ptError
from m2pt_deploy.export.int8.cpu import cpu_int8_onnx
from m2pt_deploy.export.optimize import fuse_attention, optimize_onnx, save_optimized
from m2pt_deploy.inputs.photos import photo_tiles
from m2pt_deploy.merge import merge_model
from m2pt_deploy.metadata import OPTIMIZED_KEY, set_metadata
from m2pt_deploy.model.build import build_unmerged
from m2pt_deploy.model.checkpoint import Checkpoint
from m2pt_deploy.runtime.sessions import (
    cpu_session,
    cpu_session_options,
    is_optimized,
    physical_cores,
)
from m2pt_deploy.verify import check_structure, verify_onnx
from tests.tiny import TINY
from tests.verify.tamper import append_identity

# Fused attention and SkipLayerNormalization reorder float sums; nothing else changes.
FP32_FUSION_TOL = 1e-5
DEPTH = TINY.model_kwargs["depth"]


@pytest.fixture(scope="module")
def optimized(good_onnx: Path) -> onnx.ModelProto:
    return optimize_onnx(onnx.load(good_onnx))


@pytest.fixture(scope="module")
def optimized_path(optimized: onnx.ModelProto, verify_dir: Path) -> Path:
    return save_optimized(optimized, verify_dir / "pathway.opt.onnx", force=True)


def _run(path_or_session, x: np.ndarray) -> np.ndarray:
    session = path_or_session if isinstance(path_or_session, ort.InferenceSession) else ort.InferenceSession(
        str(path_or_session), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def _ops(proto: onnx.ModelProto) -> dict[tuple[str, str], int]:
    out: dict[tuple[str, str], int] = {}
    for n in proto.graph.node:
        out[(n.domain, n.op_type)] = out.get((n.domain, n.op_type), 0) + 1
    return out


def test_every_block_gets_fused_attention_layernorm_and_gelu(optimized: onnx.ModelProto) -> None:
    ops = _ops(optimized)
    assert ops.get(("com.microsoft", "Attention")) == DEPTH
    assert ops.get(("com.microsoft", "BiasGelu")) == DEPTH
    assert ops.get(("com.microsoft", "SkipLayerNormalization"), 0) >= 2 * DEPTH - 1
    assert ("", "Softmax") not in ops and ("", "Erf") not in ops
    # Only the output projection, fc1 and fc2 remain as MatMuls: Attention does the QKV projection.
    assert ops.get(("", "MatMul"), 0) == 3 * DEPTH
    record = json.loads(next(p.value for p in optimized.metadata_props if p.key == OPTIMIZED_KEY))
    assert record["attention_fused"] == DEPTH and record["level"] == "extended"


@pytest.mark.parametrize("kind", ["MultiHeadAttention", "Attention"])
@pytest.mark.parametrize("batch", [1, 3])
def test_optimized_equals_plain_export(good_proto, good_onnx, verify_dir, kind, batch) -> None:
    path = save_optimized(optimize_onnx(good_proto, attention=kind), verify_dir / f"opt-{kind}.onnx", force=True)
    x = np.random.default_rng(batch).standard_normal((batch, *TINY.input_size), dtype=np.float32)
    plain, fast = _run(good_onnx, x), _run(cpu_session(path), x)
    assert fast.shape == plain.shape == (batch, TINY.num_classes)
    np.testing.assert_allclose(fast, plain, rtol=0, atol=FP32_FUSION_TOL)


def test_optimized_file_loads_with_graph_optimization_off(optimized_path, good_onnx) -> None:
    options = cpu_session_options(optimized_path)
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    assert options.intra_op_num_threads == physical_cores() >= 1
    assert cpu_session_options(good_onnx).graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Loaded as saved: the session runs exactly the saved graph's fused operators.
    x = np.ones((2, *TINY.input_size), np.float32)
    np.testing.assert_allclose(_run(cpu_session(optimized_path), x), _run(good_onnx, x), atol=FP32_FUSION_TOL)


def test_structure_check_compares_with_a_vanilla_vit_optimized_the_same_way(
    optimized: onnx.ModelProto, pathway_ckpt: Checkpoint
) -> None:
    like = merge_model(build_unmerged(pathway_ckpt), pathway_ckpt.spec).state_dict()
    result = check_structure(optimized, TINY, like=like)
    assert result, str(result)
    assert "ONNX Runtime-optimized" in result.reference


def test_structure_check_fails_on_a_tampered_optimized_graph(optimized, pathway_ckpt) -> None:
    like = merge_model(build_unmerged(pathway_ckpt), pathway_ckpt.spec).state_dict()
    result = check_structure(append_identity(optimized), TINY, like=like)
    assert not result
    assert any("op Identity: 1 vs absent" in d for d in result.differences), result.differences


def test_plain_graph_labelled_optimized_fails_the_structure_check(good_proto, pathway_ckpt) -> None:
    fake = copy.deepcopy(good_proto)
    set_metadata(fake, OPTIMIZED_KEY, {"runtime": "onnxruntime"})
    like = merge_model(build_unmerged(pathway_ckpt), pathway_ckpt.spec).state_dict()
    result = check_structure(fake, TINY, like=like)
    assert not result
    assert any("com.microsoft::Attention: absent vs 2" in d for d in result.differences)


def test_harness_verifies_the_optimized_file(optimized_path, pathway_ckpt) -> None:
    report = verify_onnx(pathway_ckpt, optimized_path)
    assert report, str(report)


def test_optimizing_twice_is_refused(optimized: onnx.ModelProto) -> None:
    assert is_optimized(optimized)
    with pytest.raises(M2ptError, match="already optimized"):
        optimize_onnx(optimized)


def test_a_graph_without_attention_is_left_alone() -> None:
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.eye(4, 12, dtype=np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 12])], [w])
    out, count = fuse_attention(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))
    assert count == 0
    assert [n.op_type for n in out.graph.node] == ["MatMul"]


def test_int8_cpu_model_runs_integer_matmuls(good_proto) -> None:
    tiles = photo_tiles(TINY.input_size, TINY.mean, TINY.std, count=16)
    proto = cpu_int8_onnx(good_proto, tiles)
    ops = {op for _, op in _ops(proto)}
    assert ops & {"QLinearMatMul", "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "QGemm"}, ops
    assert is_optimized(proto)
    assert json.loads(next(p.value for p in proto.metadata_props if p.key == "m2pt_deploy.precision")) == "int8"


@pytest.mark.parametrize("attention", ["Attention", None])
def test_the_callers_graph_is_left_untouched(good_proto, attention) -> None:
    before = good_proto.SerializeToString()
    out = optimize_onnx(good_proto, attention=attention)
    assert good_proto.SerializeToString() == before
    assert {p.key for p in good_proto.metadata_props} < {p.key for p in out.metadata_props}
