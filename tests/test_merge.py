from __future__ import annotations

import dataclasses

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from m2pt_deploy.families.vit import fold_probe_head
from m2pt_deploy.merge import merge_model, merge_state_dict, merged_state_dict
from m2pt_deploy.model.build import build_vanilla
from m2pt_deploy.model.pathway import add_pathways, pathway_layers, pathway_state_dict
from tests.tiny import TINY, TINY_MAE, make_pathway_model, random_lambdas


def test_merged_is_a_plain_vit_with_vanilla_keys(input_batch) -> None:
    model = make_pathway_model(n_aux=2)
    merged = merge_model(model, TINY)
    assert list(merged.state_dict()) == list(build_vanilla(TINY).state_dict())
    assert all(type(m) is nn.Linear for n, m in merged.named_modules() if n.endswith(("qkv", "fc1")))
    x = input_batch(TINY, 4)
    assert torch.equal(merged(x), model(x))


def test_merging_leaves_the_unmerged_model_working(input_batch) -> None:
    model = make_pathway_model()
    x = input_batch(TINY, 2)
    before = model(x)
    merge_model(model, TINY)
    merge_model(model, TINY)
    assert pathway_layers(model)
    assert torch.equal(model(x), before)


def test_merge_into_any_factory_built_model(input_batch) -> None:
    model = make_pathway_model()
    merged = merge_model(model, lambda: build_vanilla(TINY))
    x = input_batch(TINY, 2)
    assert torch.equal(merged(x), model(x))


def test_state_dict_merge_equals_model_merge() -> None:
    model = make_pathway_model(n_aux=3, lambda_kind="channel")
    from_model = merged_state_dict(model)
    from_dict = merge_state_dict(pathway_state_dict(model))
    assert from_model.keys() == from_dict.keys()
    assert all(torch.equal(from_model[k], from_dict[k]) for k in from_model)


def test_mae_style_global_pool_model_merges_bit_identically(input_batch) -> None:
    model = make_pathway_model(TINY_MAE)
    merged = merge_model(model, TINY_MAE)
    assert "fc_norm.weight" in merged.state_dict() and "norm.weight" not in merged.state_dict()
    x = input_batch(TINY_MAE, 3)
    assert torch.equal(merged(x), model(x))


def test_probe_head_fold_matches_batchnorm_then_linear() -> None:
    torch.manual_seed(0)
    bn = nn.BatchNorm1d(16, affine=False, eps=1e-6)
    bn.running_mean.normal_()
    bn.running_var.uniform_(0.5, 2.0)
    linear = nn.Linear(16, 4)
    head = nn.Sequential(bn, linear).eval()
    sd = {f"head.{k}": v for k, v in head.state_dict().items()}
    folded = fold_probe_head(sd)
    assert set(folded) == {"head.weight", "head.bias"}
    x = torch.randn(8, 16)
    y = x @ folded["head.weight"].T + folded["head.bias"]
    torch.testing.assert_close(y, head(x), atol=1e-5, rtol=1e-5)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    depth=st.integers(1, 3),
    heads=st.integers(1, 2),
    n_aux=st.integers(1, 3),
    bias=st.booleans(),
    lambda_kind=st.sampled_from(["scalar", "channel"]),
    scale=st.floats(0.0, 100.0),
    seed=st.integers(0, 2**16),
)
def test_merged_equals_unmerged_bit_for_bit(depth, heads, n_aux, bias, lambda_kind, scale, seed) -> None:
    spec = dataclasses.replace(TINY, model_kwargs={
        **TINY.model_kwargs, "depth": depth, "num_heads": heads, "embed_dim": 16 * heads, "qkv_bias": bias,
    })
    torch.manual_seed(seed)
    model = build_vanilla(spec)
    add_pathways(model, [build_vanilla(spec) for _ in range(n_aux)], lambda_kind=lambda_kind)
    random_lambdas(model, seed, scale)
    x = torch.randn(2, *spec.input_size)
    with torch.no_grad():
        assert torch.equal(merge_model(model, spec)(x), model(x))
