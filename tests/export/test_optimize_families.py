"""``--optimize`` for every family: VideoMAE V2 (q_bias/v_bias on a bias-free qkv, no class token, mean
pooling), AudioMAE (512 tokens, mean pooling) and Point-MAE (bias-free qkv, the position added before
every block) get one fused Attention per block, compute what the plain export computes, and are
structurally identical to a vanilla model of their family optimized the same way."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import onnx
import pytest
import torch

from m2pt_deploy.bench.flops import graph_flops
from m2pt_deploy.bench.latency import pathway_pair
from m2pt_deploy.bench.peak import forward_gflop
from m2pt_deploy.export.onnx import export_model
from m2pt_deploy.export.optimize import optimize_onnx
from m2pt_deploy.families import ModelSpec, family_of
from m2pt_deploy.merge import merge_model
from m2pt_deploy.runtime.sessions import cpu_session
from m2pt_deploy.verify import check_structure
from tests.tiny import TINY_AUDIOMAE as AUDIOMAE
from tests.tiny import TINY_POINT, TINY_VIDEO
from tests.verify.tamper import append_identity

# Fused attention and SkipLayerNormalization reorder float sums; nothing else changes.
FP32_FUSION_TOL = 1e-5
# Point-MAE with fewer, smaller groups: the farthest-point loop unrolls once per group in the export.
SMALL_POINT = dataclasses.replace(TINY_POINT, model_kwargs={**TINY_POINT.model_kwargs, "npoints": 32, "num_group": 4,
                                                            "group_size": 4}, input_size=(32, 3))
SPECS = {"video": TINY_VIDEO, "audio": AUDIOMAE, "point": SMALL_POINT}


@dataclasses.dataclass
class Exported:
    spec: ModelSpec
    merged: torch.nn.Module
    plain: onnx.ModelProto
    optimized: onnx.ModelProto


@pytest.fixture(scope="module", params=list(SPECS))
def exported(request: pytest.FixtureRequest) -> Exported:
    spec = SPECS[request.param]
    merged = merge_model(pathway_pair(spec, seed=2), spec, exportable=True)
    plain = export_model(merged, spec)
    return Exported(spec, merged, plain, optimize_onnx(plain))


def _count(proto: onnx.ModelProto, op: str, domain: str = "") -> int:
    return sum(n.op_type == op and n.domain == domain for n in proto.graph.node)


def _run(proto: onnx.ModelProto, x: np.ndarray, tmp_path: Any, name: str) -> np.ndarray:
    path = tmp_path / f"{name}.onnx"
    onnx.save(proto, path)
    session = cpu_session(path)  # as saved: the optimized file loads with graph optimization off
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def test_every_block_gets_one_fused_attention(exported: Exported) -> None:
    depth = exported.spec.model_kwargs["depth"]
    assert _count(exported.optimized, "Attention", "com.microsoft") == depth
    assert _count(exported.optimized, "BiasGelu", "com.microsoft") >= depth
    assert _count(exported.optimized, "Softmax") == 0
    # Attention does the QKV projection: of each block's MatMuls only the output projection and the MLP remain.
    assert _count(exported.optimized, "MatMul") <= _count(exported.plain, "MatMul") - 3 * depth


def test_optimized_computes_what_the_plain_export_computes(exported: Exported, tmp_path) -> None:
    spec = exported.spec
    x = family_of(spec).example_input(spec, 3, seed=5).numpy()
    plain = _run(exported.plain, x, tmp_path, "plain")
    fast = _run(exported.optimized, x, tmp_path, "fast")
    assert fast.shape == plain.shape == (3, spec.num_classes)
    np.testing.assert_allclose(fast, plain, rtol=0, atol=FP32_FUSION_TOL)


def test_structure_is_an_optimized_vanilla_models(exported: Exported) -> None:
    result = check_structure(exported.optimized, exported.spec, like=exported.merged.state_dict())
    assert result, str(result)
    assert "ONNX Runtime-optimized" in result.reference
    tampered = check_structure(append_identity(exported.optimized), exported.spec,
                               like=exported.merged.state_dict())
    assert not tampered and any("op Identity: 1 vs absent" in d for d in tampered.differences)


def test_graph_flops_count_the_matmuls_torch_counts(exported: Exported) -> None:
    counted = graph_flops(exported.plain)
    assert counted.uncounted == ()
    assert counted.matmul == pytest.approx(forward_gflop(exported.merged, exported.spec.input_size), rel=1e-9)
    assert 0 < counted.other < counted.matmul
