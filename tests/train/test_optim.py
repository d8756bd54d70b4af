"""Parameter groups, schedule and batch order."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from m2pt_deploy.errors import M2ptError
from m2pt_deploy.model.build import build_vanilla
from m2pt_deploy.model.pathway import add_pathways, pathway_parameters
from m2pt_deploy.train.model import set_trainable
from m2pt_deploy.train.optim import build_optimizer, lr_factor, param_groups
from m2pt_deploy.train.sampling import GlobalBatchSampler, ShardSampler, micro_batch_size
from tests.tiny import tiny_spec


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


def _timm_groups(model, groups) -> dict[str, tuple[float, float]]:
    """``{name: (lr scale, weight decay)}`` of timm's groups."""
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)]: (g.get("lr_scale", 1.0), g["weight_decay"]) for g in groups for p in g["params"]}


@pytest.mark.parametrize("train_aux", [False, True])
def test_groups_are_timms_but_for_lambda_and_the_final_norm(train_aux: bool) -> None:
    """The two deliberate differences from ``timm.optim.param_groups_layer_decay`` (optim.py says why)."""
    from timm.optim import param_groups_layer_decay

    model = _model()
    set_trainable(model, "full", train_aux=train_aux)
    ours = {n: (g["base_lr"], g["weight_decay"])
            for g in param_groups(model, lr=1.0, lambda_lr=0.3, weight_decay=0.05, layer_decay=0.5, depth=2)
            for n in g["param_names"]}
    timm = _timm_groups(model, param_groups_layer_decay(model, weight_decay=0.05, layer_decay=0.5,
                                                        no_weight_decay_list=model.no_weight_decay()))
    assert ours.keys() == timm.keys()
    differ = {n for n in ours if ours[n] != timm[n]}
    lambdas = {n for n in ours if ".scales." in n}
    assert differ == lambdas | {"norm.weight", "norm.bias"}
    # timm: λ learns at its block's decayed lr; the final norm at the last block's (MAE: full lr).
    assert timm["blocks.1.attn.qkv.parametrizations.weight.0.scales.0"] == (0.5, 0.0)
    assert timm["norm.weight"] == (0.5, 0.0) and ours["norm.weight"] == (1.0, 0.0)


def test_weight_decay_split_is_timms() -> None:
    from timm.optim import param_groups_weight_decay

    model = _model()
    ours = {n: g["weight_decay"] for g in param_groups(model, lr=1.0, lambda_lr=1.0, weight_decay=0.05, depth=2)
            for n in g["param_names"]}
    timm = _timm_groups(model, param_groups_weight_decay(model, 0.05, no_weight_decay_list=model.no_weight_decay()))
    assert ours == {n: decay for n, (_, decay) in timm.items()}


def test_optimizer_is_timms_adamw_over_our_groups() -> None:
    model = _model()
    kwargs = dict(lr=1e-3, lambda_lr=1e-2, weight_decay=0.05, layer_decay=0.65, depth=2)
    optimizer = build_optimizer(model, **kwargs)
    assert type(optimizer) is torch.optim.AdamW
    assert optimizer.defaults["betas"] == (0.9, 0.999) and optimizer.defaults["eps"] == 1e-8
    want = param_groups(model, **kwargs)
    got = optimizer.param_groups
    assert [g["name"] for g in got] == [g["name"] for g in want]
    for g, w in zip(got, want, strict=True):
        assert (g["lr"], g["weight_decay"]) == (w["base_lr"], w["weight_decay"])
        assert [id(p) for p in g["params"]] == [id(p) for p in w["params"]]


@given(warmup=st.integers(1, 50), extra=st.integers(1, 500), ratio=st.floats(0, 0.5))
def test_schedule_is_timms_cosine_with_warmup_one_step_earlier(warmup: int, extra: int, ratio: float) -> None:
    """From step ``warmup - 1`` on, timm's per-update ``CosineLRScheduler``; during warm-up its value one
    step later (timm's first step is at ``warmup_lr_init``, ours at ``lr / warmup``)."""
    from timm.scheduler import CosineLRScheduler

    total = warmup + extra
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    timm = CosineLRScheduler(optimizer, t_initial=extra, lr_min=ratio, warmup_t=warmup, warmup_lr_init=0.0,
                             warmup_prefix=True, t_in_epochs=False)

    def timm_lr(step: int) -> float:
        timm.step_update(step)
        return optimizer.param_groups[0]["lr"]

    assert timm_lr(0) == 0.0
    for s in range(total + 1):
        ours = lr_factor(s, warmup_steps=warmup, total_steps=total, min_ratio=ratio)
        assert ours == pytest.approx(timm_lr(s + 1 if s < warmup else s), rel=1e-12, abs=1e-15), s


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
