from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto

from m2pt_deploy.errors import M2ptError
from m2pt_deploy.export.graph import prepare_graph
from m2pt_deploy.export.onnx import OnnxFromCheckpoint
from m2pt_deploy.export.precision import emulate_in_fp32, residual_adds, to_mixed_precision
from m2pt_deploy.verify.metrics import ErrorStats, error_stats
from m2pt_deploy.verify.tolerance import engine_tolerance
from tests.tiny import TINY


def onnx_logits(model: onnx.ModelProto, images: np.ndarray) -> np.ndarray:
    """ONNX Runtime on CPU; bf16 graphs through the fp32 emulation."""
    import onnxruntime as ort

    if any(t.data_type == TensorProto.BFLOAT16 for t in model.graph.initializer):
        model = emulate_in_fp32(model)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"pixel_values": images})[0]


def compare(reference: np.ndarray, candidate: np.ndarray, precision: str) -> tuple[ErrorStats, list[str]]:
    """Statistics, and what is out of the engine tolerance for ``precision`` (empty: passes)."""
    stats = error_stats(reference, candidate)
    return stats, engine_tolerance(precision).failures(stats)


@pytest.fixture(scope="module")
def fp32_graph(tmp_path_factory) -> onnx.ModelProto:
    from m2pt_deploy.model.checkpoint import save_checkpoint
    from m2pt_deploy.model.pathway import pathway_state_dict
    from tests.tiny import make_pathway_model, pathway_info

    path = tmp_path_factory.mktemp("prec") / "tiny.safetensors"
    save_checkpoint(path, pathway_state_dict(make_pathway_model()), TINY, pathway=pathway_info())
    return prepare_graph(OnnxFromCheckpoint(path)())


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    from m2pt_deploy.inputs.photos import photo_tiles

    return photo_tiles(TINY.input_size, TINY.mean, TINY.std, count=32, seed=1)


def _input_types(model: onnx.ModelProto) -> dict[str, list[int]]:
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in (*inferred.graph.input, *inferred.graph.value_info)}
    types |= {t.name: t.data_type for t in inferred.graph.initializer}
    return {n.name: [types.get(i, 0) for i in n.input] for n in inferred.graph.node}


def test_residual_adds_are_two_per_block(fp32_graph) -> None:
    assert len(residual_adds(fp32_graph.graph)) == 2 * TINY.model_kwargs["depth"]


@pytest.mark.parametrize("precision, low", [("fp16", TensorProto.FLOAT16), ("bf16", TensorProto.BFLOAT16)])
def test_fp32_islands_and_low_precision_matmuls(fp32_graph, precision, low) -> None:
    model = to_mixed_precision(fp32_graph, precision)
    onnx.checker.check_model(model, full_check=True)
    types = _input_types(model)
    by_name = {n.name: n for n in model.graph.node}
    for name in residual_adds(fp32_graph.graph):
        assert types[name] == [TensorProto.FLOAT, TensorProto.FLOAT], name
    kept = [n for n in by_name.values() if n.op_type in ("LayerNormalization", "Softmax")]
    assert kept and all(types[n.name][0] == TensorProto.FLOAT for n in kept)
    weights = {t.name for t in model.graph.initializer}
    matmuls = [n for n in by_name.values() if n.op_type == "MatMul" and n.input[1] in weights]
    assert len(matmuls) == 4 * TINY.model_kwargs["depth"]
    assert all(types[n.name] == [low, low] for n in matmuls)
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT


def test_residual_adds_go_low_when_not_kept(fp32_graph) -> None:
    model = to_mixed_precision(fp32_graph, "fp16", keep_residual=False)
    types = _input_types(model)
    assert all(types[name] == [TensorProto.FLOAT16] * 2 for name in residual_adds(fp32_graph.graph))


def test_fp16_runs_in_onnxruntime_close_to_fp32_but_not_equal(fp32_graph, images) -> None:
    ref = onnx_logits(fp32_graph, images)
    got = onnx_logits(to_mixed_precision(fp32_graph, "fp16"), images)
    stats, failures = compare(ref, got, "fp16")
    assert not failures, failures
    assert stats.max_abs > 0  # it really computed in fp16


def test_bf16_emulation_rounds_coarser_than_fp16(fp32_graph, images) -> None:
    ref = onnx_logits(fp32_graph, images)
    fp16, _ = compare(ref, onnx_logits(to_mixed_precision(fp32_graph, "fp16"), images), "fp16")
    bf16, failures = compare(ref, onnx_logits(to_mixed_precision(fp32_graph, "bf16"), images), "bf16")
    assert not failures, failures
    # bf16 keeps 8 mantissa bits to fp16's 11: its error must be clearly larger.
    assert bf16.mean_abs > 2 * fp16.mean_abs


def test_fp16_emulation_matches_native_fp16(fp32_graph, images) -> None:
    model = to_mixed_precision(fp32_graph, "fp16")
    native = onnx_logits(model, images)
    emulated = onnx_logits(emulate_in_fp32(model), images)
    ref = onnx_logits(fp32_graph, images)
    assert np.abs(emulated - native).max() < 4 * np.abs(native - ref).max()
    assert not np.array_equal(emulated, ref)


def test_unknown_precision_is_refused(fp32_graph) -> None:
    with pytest.raises(M2ptError, match="'int8' has no mixed-precision graph"):
        to_mixed_precision(fp32_graph, "int8")  # type: ignore[arg-type]
