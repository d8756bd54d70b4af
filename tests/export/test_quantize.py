from __future__ import annotations

import numpy as np
import onnx
import pytest

from m2pt_deploy.errors import M2ptError
from m2pt_deploy.export.calibration import calibration_tiles
from m2pt_deploy.export.quantize import qdq_summary, quantizable_nodes, quantize_qdq
from tests.conftest import TINY, TINY_AUDIO
from tests.export.test_precision import compare, fp32_graph, onnx_logits  # noqa: F401 - fixture


@pytest.fixture(scope="module")
def calib() -> np.ndarray:
    return calibration_tiles(TINY.input_size, TINY.mean, TINY.std, count=64, seed=0)


@pytest.fixture(scope="module")
def held_out() -> np.ndarray:
    return calibration_tiles(TINY.input_size, TINY.mean, TINY.std, count=128, seed=1)


def test_only_weight_matmuls_are_quantized(fp32_graph) -> None:  # noqa: F811
    names = quantizable_nodes(fp32_graph)
    ops = {n.name: n.op_type for n in fp32_graph.graph.node}
    # 4 linear layers per block, the head Gemm and the patch Conv; not q@k or attn@v.
    assert len(names) == 4 * TINY.model_kwargs["depth"] + 2
    assert sorted({ops[n] for n in names}) == ["Conv", "Gemm", "MatMul"]


def test_int8_qdq_is_symmetric_and_verified_in_onnxruntime(fp32_graph, calib, held_out) -> None:  # noqa: F811
    model = quantize_qdq(fp32_graph, "int8", calib)
    onnx.checker.check_model(model, full_check=True)
    summary = qdq_summary(model)
    assert summary["symmetric"] and summary["types"] == ["INT8"] and summary["quantize"] > 0
    producers = {o: n for n in model.graph.node for o in n.output}
    for node in model.graph.node:
        if node.name in quantizable_nodes(fp32_graph):
            assert all(producers[i].op_type == "DequantizeLinear" for i in node.input[:2]), node.name
    assert dict((p.key, p.value) for p in model.metadata_props) == \
        dict((p.key, p.value) for p in fp32_graph.metadata_props)
    ref, got = onnx_logits(fp32_graph, held_out), onnx_logits(model, held_out)
    stats, _ = compare(ref, got, "int8")
    assert stats.max_abs > 1e-4  # quantization really changed the numbers
    # A random tiny ViT has near-tied logits, so agreement is below a trained model's 98%.
    assert stats.top1_rate >= 0.9 and stats.cosine >= 0.99, stats


def test_fp8_qdq_runs_in_onnxruntime(fp32_graph, calib, held_out) -> None:  # noqa: F811
    model = quantize_qdq(fp32_graph, "fp8", calib)
    assert qdq_summary(model)["types"] == ["FLOAT8E4M3FN"]
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 19
    stats, _ = compare(onnx_logits(fp32_graph, held_out), onnx_logits(model, held_out), "fp8")
    assert stats.cosine > 0.9 and stats.finite


def test_bad_calibration_array_is_refused(fp32_graph) -> None:  # noqa: F811
    with pytest.raises(M2ptError, match=r"non-empty \(N, C, H, W\) array, got \(3, 32, 32\)"):
        quantize_qdq(fp32_graph, "int8", np.zeros((3, 32, 32), np.float32))


def test_calibration_tiles_are_real_deterministic_and_normalised() -> None:
    a = calibration_tiles(TINY.input_size, TINY.mean, TINY.std, count=16, seed=0)
    b = calibration_tiles(TINY.input_size, TINY.mean, TINY.std, count=16, seed=0)
    c = calibration_tiles(TINY.input_size, TINY.mean, TINY.std, count=16, seed=1)
    assert a.shape == (16, 3, 32, 32) and a.dtype == np.float32
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert len({t.tobytes() for t in a}) == 16
    assert abs(float(a.mean())) < 1.0 and 0.5 < float(a.std()) < 2.5
    mono = calibration_tiles(TINY_AUDIO.input_size, TINY_AUDIO.mean, TINY_AUDIO.std, count=2)
    assert mono.shape == (2, 1, 16, 48)


def test_calibration_channel_mismatch_is_refused() -> None:
    with pytest.raises(M2ptError, match="mean/std have 3/3 values for 1 input channels"):
        calibration_tiles((1, 8, 8), TINY.mean, TINY.std, count=1)


def test_calibration_count_need_not_be_a_multiple_of_the_batch(fp32_graph, calib) -> None:  # noqa: F811
    """Percentile calibration used to crash on a short last batch (e.g. --calib-images 100)."""
    model = quantize_qdq(fp32_graph, "int8", calib[:11], batch_size=8)
    assert any(n.op_type == "QuantizeLinear" for n in model.graph.node)
