"""Checkpoints laid out as the M2PT reference training code writes them, built here.

Each writer follows one row of ``shared/M2PT_REFERENCE.md``'s table: the wrapper keys,
the prefixes and the training metadata (``argparse.Namespace`` args, optimizer and scaler
state, numpy scalars) that real files carry beside the weights, and the reference's
pathway naming (``<layer>.aux_weight`` + ``<layer>.cross_modal_scale`` of shape [1]).
Every model is tiny (64 wide, 2 blocks) so that one aux fits every target in the tests.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from m2pt_deploy.families import ModelSpec
from tests.tiny import TINY, TINY_AUDIOMAE, TINY_MODEL_NAME, make_pathway_model, reference_state_dict

MAE_FINETUNE = dataclasses.replace(TINY, model_kwargs={**TINY.model_kwargs, "global_pool": "avg", "fc_norm": True})


@dataclasses.dataclass(frozen=True)
class ReferenceFile:
    """A written file and the pathway model it came from (the reference forward)."""

    path: Path
    model: nn.Module
    spec: ModelSpec


def _optimizer_state(sd: dict[str, torch.Tensor]) -> dict:
    # torch.optim.AdamW.state_dict(): integer-keyed state with tensors, and param groups.
    first = next(iter(sd.values()))
    return {"state": {0: {"step": torch.tensor(10.0), "exp_avg": torch.zeros_like(first),
                          "exp_avg_sq": torch.zeros_like(first)}},
            "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999), "weight_decay": 0.05, "params": [0],
                              "lr_scale": 0.75}]}


def mae_args(**overrides) -> argparse.Namespace:
    """MAE's main_finetune.py arguments as saved (a subset with the real names and defaults)."""
    args = dict(batch_size=64, epochs=100, accum_iter=1, model="vit_base_patch16", input_size=224, drop_path=0.1,
                clip_grad=None, weight_decay=0.05, lr=None, blr=5e-4, layer_decay=0.65, global_pool=True,
                nb_classes=1000, output_dir=Path("./output_dir"), device="cuda", seed=0, resume="",
                dist_eval=True, world_size=8, distributed=True, dist_url="env://", gpu=0, rank=0)
    args.update(overrides)
    return argparse.Namespace(**args)


def _mae_save_model(path: Path, sd: dict[str, torch.Tensor], args: argparse.Namespace, **extra) -> None:
    # util/misc.py save_model: model, optimizer, epoch, scaler, args.
    torch.save({"model": sd, "optimizer": _optimizer_state(sd), "epoch": 99,
                "scaler": {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5,
                           "growth_interval": 2000, "_growth_tracker": 17},
                "args": args, **extra}, path)


def _pathway(spec: ModelSpec, seed: int) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    model = make_pathway_model(spec, seed=seed)
    return model, OrderedDict(reference_state_dict(model))


def mae_finetune(folder: Path) -> ReferenceFile:
    """Image fine-tune: global pool (fc_norm, no norm), args.model in MAE's naming."""
    model, sd = _pathway(MAE_FINETUNE, seed=1)
    path = folder / "checkpoint-99.pth"
    _mae_save_model(path, sd, mae_args(model=TINY_MODEL_NAME, nb_classes=10, input_size=32))
    return ReferenceFile(path, model, MAE_FINETUNE)


def mae_linear_probe(folder: Path) -> ReferenceFile:
    """Linear probe: cls token and norm kept, head Sequential(BatchNorm1d(affine=False), Linear)."""
    model, sd = _pathway(TINY, seed=2)
    bn = nn.BatchNorm1d(64, affine=False, eps=1e-6)
    bn.running_mean.normal_(0, 0.1, generator=torch.Generator().manual_seed(5))
    bn.running_var.uniform_(0.5, 2.0, generator=torch.Generator().manual_seed(6))
    head = nn.Sequential(bn, model.head).eval()
    model.head = head
    sd = OrderedDict((k, v) for k, v in sd.items() if not k.startswith("head."))
    sd.update({f"head.{k}": v for k, v in head.state_dict().items()})
    path = folder / "checkpoint-linprobe.pth"
    _mae_save_model(path, sd, mae_args(model=TINY_MODEL_NAME, nb_classes=10, input_size=32, global_pool=False))
    return ReferenceFile(path, model, TINY)


def audiomae(folder: Path) -> ReferenceFile:
    """AudioMAE fine-tune: 1 channel, (1024, 128) time × frequency; args keep MAE's unused 224."""
    model, sd = _pathway(TINY_AUDIOMAE, seed=3)
    path = folder / "checkpoint-last.pth"
    _mae_save_model(path, sd, mae_args(model=TINY_MODEL_NAME, nb_classes=527, input_size=224, audio_exp=True,
                                       dataset="audioset", mixup=0.5))
    return ReferenceFile(path, model, TINY_AUDIOMAE)


def videomae_style_ddp_ema(folder: Path) -> ReferenceFile:
    """Video/utils.py save_model with DDP keys ("module.") and a model_ema beside the model."""
    model, sd = _pathway(TINY, seed=4)
    ema = OrderedDict((k, v * 0.5) for k, v in sd.items())  # different weights: --ema must pick them
    path = folder / "checkpoint-ddp-ema.pth"
    _mae_save_model(path, OrderedDict((f"module.{k}", v) for k, v in sd.items()),
                    mae_args(model=TINY_MODEL_NAME, nb_classes=10, input_size=32, global_pool=False),
                    model_ema=ema)
    return ReferenceFile(path, model, TINY)


def point_segmentation(folder: Path) -> ReferenceFile:
    """Point/segmentation scripts: model_state_dict, numpy scalars, pretrained_weight/_scale names."""
    model = make_pathway_model(TINY, seed=5)
    sd = OrderedDict(reference_state_dict(model, naming="pretrained"))
    path = folder / "best_model.pth"
    torch.save({"epoch": 250, "train_acc": np.float64(0.9731), "test_acc": np.float64(0.9402),
                "class_avg_iou": np.float64(0.8411), "inctance_avg_iou": np.float32(0.8603),
                "num_part": np.int64(50), "model_state_dict": sd,
                "optimizer_state_dict": _optimizer_state(sd)}, path)
    return ReferenceFile(path, model, TINY)


def point_mae_builder(folder: Path) -> ReferenceFile:
    """Point/tools/builder.py save_checkpoint: base_model with DDP "module." keys, metrics dicts."""
    model, sd = _pathway(TINY, seed=6)
    path = folder / "ckpt-best.pth"
    torch.save({"base_model": OrderedDict((f"module.{k}", v) for k, v in sd.items()),
                "optimizer": _optimizer_state(sd), "epoch": 300, "metrics": {"acc": 93.2},
                "best_metrics": {"acc": 93.8}}, path)
    return ReferenceFile(path, model, TINY)


CORPUS: dict[str, Callable[[Path], ReferenceFile]] = {
    "mae-finetune": mae_finetune,
    "mae-linear-probe": mae_linear_probe,
    "audiomae": audiomae,
    "ddp-ema": videomae_style_ddp_ema,
    "point-segmentation": point_segmentation,
    "point-mae-builder": point_mae_builder,
}
