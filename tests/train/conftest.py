"""Tiny models and data sets for the training tests: a 2-block, 64-wide ViT on 16×16 inputs."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from m2pt_deploy.families import ModelSpec
from m2pt_deploy.model.build import build_vanilla
from m2pt_deploy.model.checkpoint import save_checkpoint
from m2pt_deploy.train import TrainConfig

NUM_CLASSES = 4


def tiny_spec(*, depth: int = 2, embed_dim: int = 64, channels: int = 1, num_classes: int = NUM_CLASSES,
              size: int = 16) -> ModelSpec:
    kwargs = dict(img_size=size, patch_size=4, in_chans=channels, embed_dim=embed_dim, depth=depth,
                  num_heads=embed_dim // 64, num_classes=num_classes)
    return ModelSpec("vit_tiny_patch16_224", kwargs, (channels, size, size), (0.5,) * channels, (0.5,) * channels)


def write_model(path: Path, spec: ModelSpec, *, seed: int, **extra) -> Path:
    torch.manual_seed(seed)
    save_checkpoint(path, build_vanilla(spec).state_dict(), spec, extra=extra or None)
    return path


def write_npz(path: Path, *, n: int = 96, classes: int = NUM_CLASSES, size: int = 12, seed: int = 0) -> Path:
    """Learnable: each class brightens a different quadrant."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    x = rng.random((n, 1, size, size)).astype(np.float32) * 0.5
    half = size // 2
    for i, label in enumerate(y):
        r, c = divmod(int(label) % 4, 2)
        x[i, 0, r * half:(r + 1) * half, c * half:(c + 1) * half] += 0.5
    np.savez(path, x=x, y=y)
    return path


def write_image_folder(root: Path, *, classes: tuple[str, ...] = ("a", "b"), per_class: int = 6,
                       size: int = 20, seed: int = 0) -> Path:
    """Random grey PNGs, one sub-folder per class: enough for the augmentation paths to run."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread, and far faster when the cores are shared.

    Subprocesses get ``OMP_NUM_THREADS=1`` so that their float results match these.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def target(tmp_path: Path) -> Path:
    return write_model(tmp_path / "target.safetensors", tiny_spec(), seed=1)


@pytest.fixture
def aux(tmp_path: Path) -> Path:
    # Another modality's model: same blocks, different input (3-channel 32×32).
    spec = tiny_spec(channels=3, size=32, num_classes=7)
    return write_model(tmp_path / "aux.safetensors", spec, seed=2, modality="audio")


@pytest.fixture
def npz(tmp_path: Path) -> Path:
    return write_npz(tmp_path / "data.npz")


@pytest.fixture
def config(tmp_path: Path, target: Path, aux: Path, npz: Path) -> TrainConfig:
    return TrainConfig(target=str(target), data=str(npz), out_dir=str(tmp_path / "run"),
                       aux=((str(aux), None),), epochs=3, batch_size=16, lr=2e-3, lambda_lr=1e-2,
                       warmup_epochs=1, val_split=0.25, seed=0)


def with_(config: TrainConfig, **changes) -> TrainConfig:
    return dataclasses.replace(config, **changes)
