"""Fixtures shared by every test folder: tiny checkpoints in each format, their exports, a trained model."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import onnx
import pytest
import torch

from m2pt_deploy.export.onnx import BatchSpec
from m2pt_deploy.families import ModelSpec
from m2pt_deploy.model.build import build_vanilla
from m2pt_deploy.model.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from m2pt_deploy.model.pathway import (
    pathway_state_dict,
)
from tests.tiny import (
    TINY,
    TRAINED_EPOCHS,
    export,
    make_pathway_checkpoint,
    make_pathway_model,
    pathway_info,
    reference_state_dict,
)


@pytest.fixture
def input_batch() -> Callable[[ModelSpec, int], torch.Tensor]:
    def make(spec: ModelSpec = TINY, n: int = 4) -> torch.Tensor:
        return torch.randn(n, *spec.input_size, generator=torch.Generator().manual_seed(123))

    return make  # type: ignore[return-value]


@pytest.fixture
def m2pt_ckpt(tmp_path: Path) -> Path:
    """Our own format: a two-aux pathway checkpoint."""
    model = make_pathway_model(n_aux=2)
    path = tmp_path / "tiny_m2pt.safetensors"
    save_checkpoint(path, pathway_state_dict(model), TINY, pathway=pathway_info(2))
    return path


@pytest.fixture
def reference_ckpt(tmp_path: Path) -> Path:
    """The reference code's training checkpoint: nested under 'model', DDP 'module.' prefix."""
    model = make_pathway_model()
    sd = {f"module.{k}": v for k, v in reference_state_dict(model).items()}
    path = tmp_path / "reference.pth"
    torch.save({"model": sd, "epoch": 3}, path)
    return path


@pytest.fixture(scope="session")
def trained_digits(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The demo's pathway ViT trained on scikit-learn's digits, and the digits ``.npz``.

    A trained model has confident logits, so int8 agreement measures quantization, not ties.
    """
    from m2pt_deploy.pipelines.demo import DEMO_SPEC, demo_config, write_digits
    from m2pt_deploy.train import train

    out = tmp_path_factory.mktemp("digits")
    write_digits(out / "digits.npz")
    torch.manual_seed(0)
    save_checkpoint(out / "target_init.safetensors", build_vanilla(DEMO_SPEC).state_dict(), DEMO_SPEC)
    result = train(demo_config(out, epochs=TRAINED_EPOCHS, seed=0, aux=True), progress=False)
    return result.best, out / "digits.npz"


@pytest.fixture(scope="session")
def verify_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("verify")


@pytest.fixture(scope="session")
def pathway_ckpt_path(verify_dir: Path) -> Path:
    return make_pathway_checkpoint(verify_dir / "pathway.safetensors")


@pytest.fixture(scope="session")
def pathway_ckpt(pathway_ckpt_path: Path) -> Checkpoint:
    return load_checkpoint(pathway_ckpt_path)


@pytest.fixture(scope="session")
def good_onnx(pathway_ckpt: Checkpoint, verify_dir: Path) -> Path:
    """fp32, dynamic batch: the export the pipeline ships by default."""
    return export(pathway_ckpt, verify_dir / "pathway.onnx")


@pytest.fixture
def good_proto(good_onnx: Path) -> onnx.ModelProto:
    """A fresh copy per test: tests edit it (tamper, fuse), and a shared one would carry the edits."""
    return onnx.load(good_onnx)


@pytest.fixture(scope="session")
def static_onnx(pathway_ckpt: Checkpoint, verify_dir: Path) -> Path:
    return export(pathway_ckpt, verify_dir / "pathway-b2.onnx", batch=BatchSpec(2, 2, 2))


@pytest.fixture(scope="session")
def fp16_onnx(pathway_ckpt: Checkpoint, verify_dir: Path) -> Path:
    return export(pathway_ckpt, verify_dir / "pathway-fp16.onnx", precision="fp16")
