"""Tiny models and checkpoints in every supported format, made inside the tests."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from m2pt_deploy.families import ModelSpec
from m2pt_deploy.model.build import build_vanilla
from m2pt_deploy.model.checkpoint import PathwayInfo, save_checkpoint
from m2pt_deploy.model.pathway import DEFAULT_LAYERS, add_pathways, pathway_layers, pathway_state_dict

# One registry of tiny configurations (embed dim 64 = one 64-wide head, so shape
# inference recovers the head count), all 32×32 inputs with 8×8 patches.
TINY = ModelSpec(
    "vit_tiny_patch16_224",
    dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=1, num_classes=10),
    (3, 32, 32),
)
TINY_MAE = dataclasses.replace(
    TINY, model_kwargs={**TINY.model_kwargs, "global_pool": "avg", "fc_norm": True}
)
TINY_AUDIO = ModelSpec(
    "vit_tiny_patch16_224",
    dict(img_size=(16, 48), patch_size=8, in_chans=1, embed_dim=64, depth=2, num_heads=1, num_classes=5),
    (1, 16, 48),
    mean=(0.5,),
    std=(0.5,),
)


def random_lambdas(model: nn.Module, seed: int = 0, scale: float = 0.5) -> None:
    gen = torch.Generator().manual_seed(seed)
    for pathway in pathway_layers(model).values():
        for s in pathway.scales:
            s.data.copy_(torch.randn(s.shape, generator=gen) * scale)


def make_pathway_model(
    spec: ModelSpec = TINY, *, n_aux: int = 1, lambda_kind: str = "scalar", seed: int = 0
) -> nn.Module:
    torch.manual_seed(seed)
    target = build_vanilla(spec)
    auxes = [build_vanilla(spec) for _ in range(n_aux)]
    add_pathways(target, auxes, lambda_kind=lambda_kind)  # type: ignore[arg-type]
    random_lambdas(target, seed)
    return target.eval()


def pathway_info(n_aux: int = 1, lambda_kind: str = "scalar") -> PathwayInfo:
    aux = tuple({"modality": m, "sha256": None} for m in ("audio", "point_cloud", "video")[:n_aux])
    return PathwayInfo(DEFAULT_LAYERS, "blocks", lambda_kind, aux)  # type: ignore[arg-type]


def reference_state_dict(model: nn.Module, *, naming: str = "aux") -> dict[str, torch.Tensor]:
    """The M2PT reference code's key layout for a one-aux pathway model."""
    names = {"aux": ("aux_weight", "cross_modal_scale"), "pretrained": ("pretrained_weight", "pretrained_scale")}
    weight_name, scale_name = names[naming]
    out = {}
    for key, value in pathway_state_dict(model).items():
        out[key.replace(".aux_weight.0", f".{weight_name}").replace(".cross_modal_scale.0", f".{scale_name}")] = value
    return out


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


TRAINED_EPOCHS = 30  # the demo's budget


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

