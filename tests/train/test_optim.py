"""Parameter groups, schedule and batch order."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from m2pt_deploy.build import build_vanilla
from m2pt_deploy.errors import M2ptError
from m2pt_deploy.pathway import add_pathways, pathway_parameters
from m2pt_deploy.train.model import set_trainable
from m2pt_deploy.train.optim import lr_factor, param_groups
from m2pt_deploy.train.sampling import GlobalBatchSampler, ShardSampler, micro_batch_size
from tests.train.conftest import tiny_spec


def _model():
    spec = tiny_spec()
    model = build_vanilla(spec)
    add_pathways(model, [build_vanilla(spec)])
    set_trainable(model, "full", train_aux=False)
    return model


def test_groups_decay_lr_and_lambda() -> None:
    model = _model()
    groups = param_groups(model, lr=1.0, lambda_lr=0.5, weight_decay=0.05, layer_decay=0.5, depth=2)
    by_name = {n: g for g in groups for n in g["param_names"]}
    lam = by_name["blocks.0.attn.qkv.parametrizations.weight.0.scales.0"]
    assert (lam["base_lr"], lam["weight_decay"]) == (0.5, 0.0)
    assert {id(p) for p in lam["params"]} == {id(p) for p in pathway_parameters(model)}
    assert by_name["blocks.1.mlp.fc1.parametrizations.weight.original"]["weight_decay"] == 0.05
    for name in ("blocks.1.mlp.fc1.bias", "blocks.0.norm1.weight", "pos_embed", "cls_token", "norm.bias"):
        assert by_name[name]["weight_decay"] == 0.0, name
    # depth 2: head / final norm at full lr, block 1 at 0.5, block 0 at 0.25, embeddings at 0.125.
    assert by_name["head.weight"]["base_lr"] == 1.0
    assert by_name["blocks.1.attn.proj.bias"]["base_lr"] == 0.5
    assert by_name["blocks.0.attn.proj.bias"]["base_lr"] == 0.25
    assert by_name["patch_embed.proj.weight"]["base_lr"] == 0.125
    assert not any("aux_weights" in n for n in by_name)  # frozen by default


def test_probe_mode_groups_hold_only_lambda_and_head() -> None:
    model = _model()
    set_trainable(model, "probe", train_aux=False)
    names = {n for g in param_groups(model, lr=1, lambda_lr=1, weight_decay=0, depth=2) for n in g["param_names"]}
    assert names == {n for n, _ in model.named_parameters() if n.startswith("head.") or ".scales." in n}


@given(warmup=st.integers(1, 50), extra=st.integers(1, 500), ratio=st.floats(0, 0.5))
def test_schedule_warms_up_then_decays_to_the_floor(warmup: int, extra: int, ratio: float) -> None:
    total = warmup + extra
    f = [lr_factor(s, warmup_steps=warmup, total_steps=total, min_ratio=ratio) for s in range(total + 1)]
    assert f[warmup - 1] == pytest.approx(1.0) and f[0] == pytest.approx(1 / warmup)
    assert all(a <= b + 1e-12 for a, b in zip(f[:warmup], f[1:warmup], strict=False))
    assert all(a >= b - 1e-12 for a, b in zip(f[warmup:], f[warmup + 1:], strict=False))
    assert f[total] == pytest.approx(ratio)
    mid = warmup + extra // 2
    if extra % 2 == 0:
        assert f[mid] == pytest.approx(ratio + (1 - ratio) * 0.5 * (1 + math.cos(math.pi / 2)))


@given(world=st.sampled_from([1, 2, 4]), batches=st.integers(1, 5), tail=st.integers(0, 7), epoch=st.integers(0, 3))
def test_rank_slices_make_up_the_single_process_batch(world: int, batches: int, tail: int, epoch: int) -> None:
    global_batch = 8
    n = batches * global_batch + tail
    single = GlobalBatchSampler(n, global_batch, rank=0, world_size=1, seed=5)
    single.set_epoch(epoch)
    ranks = []
    for r in range(world):
        s = GlobalBatchSampler(n, global_batch, rank=r, world_size=world, seed=5)
        s.set_epoch(epoch)
        ranks.append(list(s))
    for b, whole in enumerate(single):
        assert sum((ranks[r][b] for r in range(world)), []) == whole


def test_eval_shards_cover_every_sample_once() -> None:
    seen = sorted(i for r in range(3) for batch in ShardSampler(10, 4, rank=r, world_size=3) for i in batch)
    assert seen == list(range(10))


def test_global_batch_must_split() -> None:
    assert micro_batch_size(64, 2, 4) == 8
    with pytest.raises(M2ptError, match="does not split into 3 processes × 2"):
        micro_batch_size(64, 3, 2)
    with pytest.raises(M2ptError, match="larger than the training set"):
        GlobalBatchSampler(5, 8, rank=0, world_size=1, seed=0)
