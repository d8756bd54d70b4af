"""Tiny models of every family trained for a few epochs on learnable synthetic inputs, and .npz files of
those inputs in each family's own model-ready layout: int8 agreement is only meaningful on a model
with confident logits (a random one's top-2 logits are near ties, and any rounding flips them)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from m2pt_deploy.model.build import build_vanilla
from m2pt_deploy.model.checkpoint import save_checkpoint
from m2pt_deploy.train import TrainConfig, train
from tests.families.point_formats import TINY_POINT
from tests.families.video_formats import TINY_VIDEO
from tests.reference_formats import AUDIOMAE

# AudioMAE's own input (1 x 1024 x 128, time x frequency, 512 patches) at a tiny width, two classes.
TINY_AUDIOMAE = dataclasses.replace(AUDIOMAE, model_kwargs={**AUDIOMAE.model_kwargs, "num_classes": 2})
TRAINED_SPECS = {
    "video": dataclasses.replace(TINY_VIDEO, model_kwargs={**TINY_VIDEO.model_kwargs, "num_classes": 2}),
    "points": dataclasses.replace(TINY_POINT, model_kwargs={**TINY_POINT.model_kwargs, "num_classes": 2}),
    "audio": TINY_AUDIOMAE,
}


def family_inputs(kind: str, n: int, *, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)``: ``n`` inputs of two classes in the family's layout, as ``m2pt-train`` reads them.

    video: clips [N, 3, T, H, W] brighter or darker overall; points: clouds [N, P, 3] on a sphere
    or filling a cube; audio: raw fbank [N, 1, 1024, 128] (log-mel values around AudioSet's mean)
    with energy in the low or the high frequency bins.
    """
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    sign = (2 * y - 1).astype(np.float32)
    if kind == "video":
        x = rng.standard_normal((n, *TINY_VIDEO.input_size)) + 0.75 * sign[:, None, None, None, None]
    elif kind == "points":
        cube = rng.uniform(-1, 1, (n, *TINY_POINT.input_size))
        sphere = cube / np.linalg.norm(cube, axis=-1, keepdims=True)
        x = np.where(y[:, None, None] == 1, cube, sphere)
    else:
        x = rng.normal(-4.27, 2.0, (n, *TINY_AUDIOMAE.input_size))
        band = np.where(y == 1, 0, 64)
        for i, start in enumerate(band):
            x[i, 0, :, start:start + 64] += 6.0
    return x.astype(np.float32), y.astype(np.int64)


def train_tiny(kind: str, folder: Path, *, epochs: int = 4) -> Path:
    """A pathway model of ``kind`` (one aux of the same shape) trained by ``m2pt_deploy.train``."""
    spec = TRAINED_SPECS[kind]
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    target = save_checkpoint(folder / "target.safetensors", build_vanilla(spec).state_dict(), spec)
    aux = save_checkpoint(folder / "aux.safetensors", build_vanilla(spec).state_dict(), spec)
    x, y = family_inputs(kind, 64, seed=0)
    np.savez(folder / "train.npz", x=x, y=y)
    config = TrainConfig(target=str(target), data=str(folder / "train.npz"), out_dir=str(folder / "run"),
                         aux=((str(aux), kind),), epochs=epochs, batch_size=16, lr=1e-3, warmup_epochs=0.5,
                         val_split=0.25, seed=0, device="cpu")
    return Path(train(config, progress=False).best)
