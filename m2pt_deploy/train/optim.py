"""AdamW the way the MAE / M2PT fine-tuning recipes set it up.

- no weight decay on biases, norms (every 1-D tensor), position / class tokens, and λ;
- layer-wise lr decay: block ``i`` of ``depth`` gets ``lr · decay^(depth + 1 - (i + 1))``,
  the embeddings ``decay^(depth + 1)``, the final norm and head the full lr;
- λ has its own lr and no layer decay;
- linear warm-up, then cosine to ``min_lr``, computed from the step number alone, so the
  schedule's whole state is one integer.
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch
from torch import nn

from m2pt_deploy.pathway import pathway_parameters

__all__ = ["build_optimizer", "lr_factor", "param_groups", "set_lr"]

_NO_DECAY_NAMES = ("pos_embed", "cls_token", "reg_token")
_BLOCK = re.compile(r"(?:^|\.)blocks\.(\d+)\.")


def _layer_id(name: str, depth: int) -> int:
    if name.startswith(("patch_embed", *_NO_DECAY_NAMES)):
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
    groups: dict[str, dict[str, Any]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if id(p) in lambdas:
            key, base, decay = "lambda", lambda_lr, 0.0
        else:
            layer = _layer_id(name, depth)
            no_decay = p.ndim <= 1 or name.endswith(".bias") or name in _NO_DECAY_NAMES
            decay = 0.0 if no_decay else weight_decay
            key = f"layer{layer}_{'no_decay' if no_decay else 'decay'}"
            base = lr * layer_decay ** (depth + 1 - layer)
        group = groups.setdefault(key, {"name": key, "params": [], "param_names": [],
                                        "base_lr": base, "lr": base, "weight_decay": decay})
        group["params"].append(p)
        group["param_names"].append(name)
    return list(groups.values())


def build_optimizer(groups: list[dict[str, Any]], *, betas: tuple[float, float] = (0.9, 0.999)) -> torch.optim.AdamW:
    return torch.optim.AdamW(groups, betas=betas)


def lr_factor(step: int, *, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """Multiplier of each group's ``base_lr`` at optimizer step ``step`` (0-based)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def set_lr(optimizer: torch.optim.Optimizer, factor: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor
