"""Tiny VideoMAE V2 models and checkpoints laid out as M2PT's ``Video/`` code writes them.

``Video/utils.py`` ``save_model`` stores ``model`` (``model_without_ddp.state_dict()``),
``optimizer``, ``epoch``, ``scaler`` and ``args`` (an ``argparse.Namespace`` from
``run_class_finetuning.py``), plus ``model_ema`` when EMA is on. Pathway tensors carry the
reference's names, ``<layer>.aux_weight`` and ``<layer>.cross_modal_scale`` (shape [1]), on all
four layers of every block, the bias-free ``attn.qkv`` included.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

from m2pt_deploy.families import ModelSpec
from m2pt_deploy.model.build import build_vanilla
from m2pt_deploy.model.pathway import add_pathways
from tests.tiny import TINY_MODEL_NAME, TINY_VIDEO, random_lambdas, reference_state_dict


@dataclasses.dataclass(frozen=True)
class VideoFile:
    """A written checkpoint and the pathway model it came from (the reference forward)."""

    path: Path
    model: nn.Module
    spec: ModelSpec


def videomae_args(**overrides: object) -> argparse.Namespace:
    """``run_class_finetuning.py``'s arguments as saved: a subset with the real names and defaults."""
    args: dict[str, object] = dict(
        model="vit_base_patch16_224", tubelet_size=2, input_size=224, num_frames=16, num_segments=1,
        sampling_rate=4, nb_classes=400, data_set="Kinetics-400", use_mean_pooling=True, init_scale=0.001,
        model_key="model|module", model_prefix="", drop_path=0.1, layer_decay=0.75, batch_size=8, epochs=35,
        lr=1e-3, weight_decay=0.05, model_ema=False, output_dir="./output", finetune="", seed=0,
        dist_eval=True, distributed=True, world_size=8, gpu=0, rank=0,
    )
    args.update(overrides)
    return argparse.Namespace(**args)


def tiny_args(spec: ModelSpec = TINY_VIDEO, **overrides: object) -> argparse.Namespace:
    kw = spec.model_kwargs
    base: dict[str, object] = dict(model=TINY_MODEL_NAME, tubelet_size=kw["tubelet_size"], num_frames=kw["num_frames"],
                                   input_size=kw["img_size"][0], nb_classes=kw["num_classes"])
    return videomae_args(**{**base, **overrides})


def video_pathway_model(spec: ModelSpec = TINY_VIDEO, *, seed: int = 0, lam_scale: float = 0.5) -> nn.Module:
    """A target with one pathway per layer from a same-shaped aux, random weights and random λ."""
    torch.manual_seed(seed)
    target, aux = build_vanilla(spec), build_vanilla(spec)
    randomise_weights(target, seed)
    randomise_weights(aux, seed + 1000)
    add_pathways(target, aux, layers=("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"), block_path="blocks")
    random_lambdas(target, seed, scale=lam_scale)
    return target.eval()


def randomise_weights(model: nn.Module, seed: int) -> None:
    # Trained-looking weights: non-zero q/v biases and LayerNorm affines, so that a wrong bias
    # layout or a skipped norm shows in the outputs.
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            scale = 0.2 if name.endswith(("bias", "gamma_1", "gamma_2")) else 0.05
            p.add_(torch.randn(p.shape, generator=gen) * scale)


def write_videomae_checkpoint(
    path: Path,
    spec: ModelSpec = TINY_VIDEO,
    *,
    seed: int = 0,
    prefix: str = "",
    args: argparse.Namespace | None = None,
    ema: bool = False,
) -> VideoFile:
    """``Video/utils.py`` ``save_model``'s file for a pathway model; ``prefix="module."`` as a
    DDP-wrapped ``state_dict()`` would have it."""
    model = video_pathway_model(spec, seed=seed)
    sd = OrderedDict((prefix + k, v) for k, v in reference_state_dict(model).items())
    first = next(iter(sd.values()))
    to_save: dict[str, object] = {
        "model": sd,
        "optimizer": {"state": {0: {"step": torch.tensor(10.0), "exp_avg": torch.zeros_like(first),
                                    "exp_avg_sq": torch.zeros_like(first)}},
                      "param_groups": [{"lr": 1e-3, "weight_decay": 0.05, "params": [0], "lr_scale": 0.75}]},
        "epoch": 34,
        "scaler": {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
                   "_growth_tracker": 5},
        "args": args if args is not None else tiny_args(spec),
    }
    if ema:
        to_save["model_ema"] = OrderedDict((k, v.clone()) for k, v in sd.items())
    torch.save(to_save, path)
    return VideoFile(path, model, spec)
