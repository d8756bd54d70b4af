"""Tiny checkpoints and their exports, built once per session and shared by the verify tests.

Imported by ``tests/verify/conftest.py`` and by ``tests/cli/test_verify.py``.
"""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
import torch

from m2pt_deploy.export.onnx import BatchSpec, OnnxFromCheckpoint, save_onnx
from m2pt_deploy.families import ModelSpec
from m2pt_deploy.model.build import build_vanilla
from m2pt_deploy.model.checkpoint import Checkpoint, PathwayInfo, load_checkpoint, save_checkpoint
from m2pt_deploy.model.pathway import add_pathways, pathway_parameters, pathway_state_dict

TINY = ModelSpec(
    "vit_tiny_patch16_224",
    dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=1, num_classes=10),
    (3, 32, 32),
)
LAYERS = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")


def make_pathway_checkpoint(path: Path, *, seed: int = 0, n_aux: int = 1) -> Path:
    torch.manual_seed(seed)
    target = build_vanilla(TINY)
    auxes = [build_vanilla(TINY) for _ in range(n_aux)]
    add_pathways(target, auxes)
    for lam in pathway_parameters(target):
        lam.data.uniform_(-0.5, 0.5)
    aux_info = tuple({"modality": f"aux{k}", "sha256": None} for k in range(n_aux))
    return save_checkpoint(
        path,
        pathway_state_dict(target),
        TINY,
        pathway=PathwayInfo(LAYERS, "blocks", "scalar", aux_info),
    )


def export(ckpt: Checkpoint | Path, path: Path, **kwargs) -> Path:
    return save_onnx(OnnxFromCheckpoint(ckpt, **kwargs)(), path)


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


@pytest.fixture(scope="session")
def good_proto(good_onnx: Path) -> onnx.ModelProto:
    return onnx.load(good_onnx)


@pytest.fixture(scope="session")
def static_onnx(pathway_ckpt: Checkpoint, verify_dir: Path) -> Path:
    return export(pathway_ckpt, verify_dir / "pathway-b2.onnx", batch=BatchSpec(2, 2, 2))


@pytest.fixture(scope="session")
def fp16_onnx(pathway_ckpt: Checkpoint, verify_dir: Path) -> Path:
    return export(pathway_ckpt, verify_dir / "pathway-fp16.onnx", precision="fp16")


def save_proto(proto: onnx.ModelProto, path: Path) -> Path:
    onnx.save(proto, path)
    return path
