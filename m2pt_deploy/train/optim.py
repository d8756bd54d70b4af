"""AdamW the way the MAE / M2PT fine-tuning recipes set it up.

- no weight decay on biases, norms (every 1-D tensor), position / class tokens, and λ;
- layer-wise lr decay: block ``i`` of ``depth`` gets ``lr · decay^(depth + 1 - (i + 1))``,
  the embeddings ``decay^(depth + 1)``, the final norm and head the full lr;
- λ has its own lr and no layer decay;
- linear warm-up, then cosine to ``min_lr``, computed from the step number alone, so the
  schedule's whole state is one integer.

The optimizer itself comes from timm's factory (:func:`timm.optim.create_optimizer_v2`, with
our groups as its ``param_group_fn``). The groups and the schedule stay here, where timm's
differ from the recipe (``tests/train/test_optim.py`` pins both differences against timm):

- ``timm.optim.param_groups_layer_decay`` takes its layers from ``VisionTransformer.group_matcher``,
  which puts the final ``norm`` in the last block's layer (lr · decay), where MAE's / BEiT's
  ``param_groups_lrd`` (and so M2PT) give it the full lr; and it has no way to hold λ out of
  its block's layer for an lr of its own. Fixing both means a stand-in ``group_matcher`` plus
  re-splitting timm's unnamed groups afterwards: more code than :func:`param_groups` is.
- ``timm.scheduler.CosineLRScheduler`` (``warmup_prefix=True``) starts warm-up at
  ``warmup_lr_init`` on step 0 and reaches the peak on step ``warmup``; ours takes its first
  step at ``lr / warmup`` and peaks at step ``warmup - 1``, the same cosine after that. No
  setting of timm's expresses this (only feeding it ``step + 1`` during warm-up would). Its
  state is the step either way, so it would add a stateful object and gain nothing for
  resuming or for recomputing the schedule for an extended run.
"""

from __future__ import annotations

import functools
import math
import re
from typing import Any

import torch
from torch import nn

from m2pt_deploy.model.pathway import pathway_parameters

__all__ = ["build_optimizer", "lr_factor", "param_groups", "set_lr"]

_NO_DECAY_NAMES = ("pos_embed", "cls_token", "reg_token")
_BLOCK = re.compile(r"(?:^|\.)blocks\.(\d+)\.")


def _layer_id(name: str, depth: int, tokens: tuple[str, ...] = _NO_DECAY_NAMES) -> int:
    # MAE's get_layer_id_for_vit: tokens and patch embedding 0, block i i + 1, the rest
    # (final norm, fc_norm, head) depth + 1. timm would put the final norm at depth.
    if name.startswith(("patch_embed", *tokens)):
        return 0
    m = _BLOCK.search(name)
    return int(m.group(1)) + 1 if m else depth + 1


def param_groups(
    model: nn.Module,
    *,
    lr: float,
    lambda_lr: float,
    weight_decay: float,
    layer_decay: float = 1.0,
    depth: int,
) -> list[dict[str, Any]]:
    """Trainable parameters grouped by (layer, decay); each group records its ``base_lr``."""
    lambdas = {id(p) for p in pathway_parameters(model)}
    # The tokens and tables: ours, and those the model names (timm's, e.g. a DeiT's dist_token).
    named = getattr(model, "no_weight_decay", None)
    tokens = tuple(sorted({*_NO_DECAY_NAMES, *(named() if callable(named) else ())}))
    groups: dict[str, dict[str, Any]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if id(p) in lambdas:
            key, base, decay = "lambda", lambda_lr, 0.0
        else:
            layer = _layer_id(name, depth, tokens)
            # The rule of timm's param_groups_weight_decay (1-D or bias, or no_weight_decay()).
            no_decay = p.ndim <= 1 or name.endswith(".bias") or name in tokens
            decay = 0.0 if no_decay else weight_decay
            key = f"layer{layer}_{'no_decay' if no_decay else 'decay'}"
            base = lr * layer_decay ** (depth + 1 - layer)
        group = groups.setdefault(key, {"name": key, "params": [], "param_names": [],
                                        "base_lr": base, "lr": base, "weight_decay": decay})
        group["params"].append(p)
        group["param_names"].append(name)
    return list(groups.values())


def build_optimizer(
    model: nn.Module,
    *,
    lr: float,
    lambda_lr: float,
    weight_decay: float,
    layer_decay: float = 1.0,
    depth: int,
    betas: tuple[float, float] = (0.9, 0.999),
) -> torch.optim.Optimizer:
    """timm's AdamW (``torch.optim.AdamW``) over :func:`param_groups`; every group sets its own lr and decay."""
    from timm.optim import create_optimizer_v2

    groups = functools.partial(param_groups, lr=lr, lambda_lr=lambda_lr, weight_decay=weight_decay,
                               layer_decay=layer_decay, depth=depth)
    return create_optimizer_v2(model, "adamw", lr=lr, weight_decay=weight_decay, betas=betas,
                               param_group_fn=groups)


def lr_factor(step: int, *, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """Multiplier of each group's ``base_lr`` at optimizer step ``step`` (0-based).

    Equal to timm's ``CosineLRScheduler(t_initial=total - warmup, warmup_t=warmup,
    warmup_prefix=True, lr_min=min_ratio)`` from step ``warmup - 1`` on; during warm-up it is
    timm's value one step later, so the first step already learns (see the module docstring).
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def set_lr(optimizer: torch.optim.Optimizer, factor: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor
