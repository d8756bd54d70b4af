"""Tiny models and data sets for the training tests: a 2-block, 64-wide ViT on 16×16 inputs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from m2pt_deploy.train import TrainConfig
from tests.tiny import (
    tiny_spec,
    write_model,
    write_npz,
)


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
