"""Tiny Point-MAE models and checkpoints laid out as the reference code writes them.

``point_mae_builder`` follows ``Point/tools/builder.py``'s ``save_checkpoint`` (see
``shared/M2PT_REFERENCE.md``): ``base_model`` with DataParallel's ``module.`` prefix,
``optimizer``, ``epoch``, ``metrics``, ``best_metrics``; pathways in the reference naming,
``<layer>.aux_weight`` + ``<layer>.cross_modal_scale`` [1], on every block's four layers
including the bias-free ``attn.qkv``.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

from m2pt_deploy.families import ModelSpec
from m2pt_deploy.model.build import build_vanilla
from m2pt_deploy.model.pathway import DEFAULT_LAYERS, add_pathways
from tests.tiny import TINY_POINT, random_lambdas, reference_state_dict

BLOCK_PATH = "blocks.blocks"


@dataclasses.dataclass(frozen=True)
class PointFile:
    """A written file and the pathway model it holds (the reference forward)."""

    path: Path
    model: nn.Module
    spec: ModelSpec


def randomise_batchnorm(model: nn.Module, seed: int) -> None:
    """Trained-looking BatchNorm statistics and affine values, so eval-mode BN is not the identity."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)  # type: ignore[operator]
            m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)  # type: ignore[operator]
            m.weight.data.copy_(1 + 0.1 * torch.randn(n, generator=gen))
            m.bias.data.copy_(0.1 * torch.randn(n, generator=gen))


def make_point_model(spec: ModelSpec = TINY_POINT, *, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = build_vanilla(spec)
    randomise_batchnorm(model, seed)
    return model.eval()


def make_point_pathway_model(spec: ModelSpec = TINY_POINT, *, seed: int = 0, lambda_scale: float = 0.5) -> nn.Module:
    """A target with one aux (another random Point-MAE's blocks) on the four default layers."""
    target = make_point_model(spec, seed=seed)
    aux = make_point_model(spec, seed=seed + 1000).state_dict()
    add_pathways(target, aux, layers=DEFAULT_LAYERS, block_path=BLOCK_PATH)
    random_lambdas(target, seed, scale=lambda_scale)
    return target.eval()


def _optimizer_state(sd: dict[str, torch.Tensor]) -> dict:
    first = next(iter(sd.values()))
    return {"state": {0: {"step": torch.tensor(10.0), "exp_avg": torch.zeros_like(first),
                          "exp_avg_sq": torch.zeros_like(first)}},
            "param_groups": [{"lr": 5e-4, "betas": (0.9, 0.999), "weight_decay": 0.05, "params": [0]}]}


def point_mae_builder(folder: Path, *, seed: int = 6, spec: ModelSpec = TINY_POINT) -> PointFile:
    """``Point/tools/builder.py`` ``save_checkpoint`` of a DataParallel pathway model."""
    model = make_point_pathway_model(spec, seed=seed)
    sd = OrderedDict((f"module.{k}", v) for k, v in reference_state_dict(model).items())
    path = folder / "ckpt-best.pth"
    # Acc_Metric.state_dict() is {"acc": value}; the runner's accuracy is a 0-d tensor.
    torch.save({"base_model": sd, "optimizer": _optimizer_state(sd), "epoch": 300,
                "metrics": {"acc": torch.tensor(91.25)}, "best_metrics": {"acc": torch.tensor(92.5)}}, path)
    return PointFile(path, model, spec)
