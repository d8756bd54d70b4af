"""A small trained model per family, made here: what int8 checks and ``m2pt-bench`` measure
accuracy and agreement on, since random weights say nothing about either.

Each family's small model is trained by :func:`m2pt_deploy.train.train` on its learnable task
(:mod:`m2pt_deploy.inputs.learnable`: changing digits, geometric solids, synthesized sounds; the
image family has the demo's digits ViT) with one pathway from a second, seeded model of the
same shape: the int8 and bench checks need a trained pathway model, not the cross-modal gain
the demo shows. The trained checkpoints ship in ``m2pt_deploy/assets/small/`` (written by
``scripts/make_small_models.py``, which records each one's validation accuracy beside it), so
that nobody waits minutes of training to measure int8.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from m2pt_deploy.errors import M2ptError
from m2pt_deploy.families import ModelSpec
from m2pt_deploy.inputs.learnable import LabelledInputs, learnable_task
from m2pt_deploy.model.build import build_vanilla
from m2pt_deploy.model.checkpoint import save_checkpoint
from m2pt_deploy.train import TrainConfig, train

__all__ = ["RECIPES", "SMALL_MODELS", "SmallModel", "small_model", "train_small_model"]

ASSETS = Path(__file__).parents[1] / "assets" / "small"

#: One small spec per input modality, four classes each (the learnable tasks' classes).
SMALL_MODELS: dict[str, ModelSpec] = {
    # 4 frames of 32 × 32 in tubelets of 2 × 8 × 8: 32 tokens, one 64-wide head.
    "video": ModelSpec(
        "videomae_v2_w64",
        dict(embed_dim=64, depth=2, num_heads=1, mlp_ratio=4.0, patch_size=8, tubelet_size=2, num_frames=4,
             img_size=(32, 32), in_chans=3, num_classes=4, qkv_bias=True, init_values=0.0, use_mean_pooling=True),
        (3, 4, 32, 32), family="videomae"),
    # 128 points in 16 groups of 8, 48 wide, 3 heads of 16.
    "points": ModelSpec(
        "point_mae",
        {"embed_dim": 48, "depth": 2, "mlp_ratio": 4.0, "num_classes": 4, "npoints": 128, "num_group": 16,
         "group_size": 8, "num_heads": 3},
        (128, 3), mean=(), std=(), family="pointmae"),
    # AudioMAE's own input (1 × 1024 × 128, time × frequency, 512 patches) at 64 wide.
    "spectrogram": ModelSpec(
        "vit_tiny_patch16_224",
        dict(img_size=(1024, 128), patch_size=16, in_chans=1, embed_dim=64, depth=2, num_heads=1, num_classes=4,
             global_pool="avg", fc_norm=True),
        (1, 1024, 128), mean=(-4.2677393,), std=(2 * 4.5689974,)),
}


#: ``(inputs, epochs)`` each small model trains on, a quarter held out for validation; measured
#: with seed 0 (scripts/make_small_models.py records the accuracy each run reached).
RECIPES: dict[str, tuple[int, int]] = {"video": (384, 25), "points": (192, 20), "spectrogram": (192, 12)}
_LR = 3e-3


def small_model(modality: str) -> Path:
    """The shipped trained checkpoint of ``modality``'s small model."""
    _check(modality)
    path = ASSETS / f"{modality}.safetensors"
    if not path.is_file():
        raise M2ptError("the small trained model is missing; rebuild it with scripts/make_small_models.py", path)
    return path


def _check(modality: str) -> None:
    if modality not in SMALL_MODELS:
        raise M2ptError(f"no small model for {modality!r} inputs (known: {', '.join(SMALL_MODELS)})")


@dataclasses.dataclass(frozen=True)
class SmallModel:
    """A trained pathway checkpoint, the inputs it was trained on, and fresh inputs it never saw."""

    checkpoint: Path
    train: LabelledInputs
    held_out: LabelledInputs
    best_val_acc: float


def train_small_model(modality: str, folder: Path, *, epochs: int | None = None, count: int | None = None,
                      held_out: int = 64, seed: int = 0) -> SmallModel:
    """Train the small model of ``modality`` ("video", "points", "spectrogram") under ``folder``
    (``count`` and ``epochs`` default to its recipe)."""
    _check(modality)
    spec = SMALL_MODELS[modality]
    count, epochs = count or RECIPES[modality][0], epochs or RECIPES[modality][1]
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    target = save_checkpoint(folder / "target.safetensors", build_vanilla(spec).state_dict(), spec, force=True)
    aux = save_checkpoint(folder / "aux.safetensors", build_vanilla(spec).state_dict(), spec, force=True)
    data = learnable_task(spec, count, seed=seed)
    np.savez(folder / "train.npz", x=data.x, y=data.y, classes=np.array(data.classes))
    config = TrainConfig(target=str(target), data=str(folder / "train.npz"), out_dir=str(folder / "run"),
                         aux=((str(aux), modality),), epochs=epochs, batch_size=16, lr=_LR, warmup_epochs=0.5,
                         val_split=0.25, seed=seed, device="cpu")
    result = train(config, force=True, progress=False)
    fresh = learnable_task(spec, held_out, seed=seed + 1)
    return SmallModel(Path(result.best), data, fresh, result.best_val_acc)
