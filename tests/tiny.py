"""The one registry of tiny models and the helpers that build checkpoints, exports and data sets from
them: plain functions, imported by tests and fixtures alike (fixtures live in the conftest files)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from m2pt_deploy.export.onnx import OnnxFromCheckpoint, save_onnx
from m2pt_deploy.families import ModelSpec
from m2pt_deploy.model.build import build_vanilla
from m2pt_deploy.model.checkpoint import Checkpoint, PathwayInfo, save_checkpoint
from m2pt_deploy.model.pathway import (
    DEFAULT_LAYERS,
    add_pathways,
    pathway_layers,
    pathway_parameters,
    pathway_state_dict,
)
from m2pt_deploy.pipelines.small_models import SMALL_MODELS
from m2pt_deploy.train import TrainConfig

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


# timm's distilled DeiT (a distillation token and a second head) at TINY's size: the ``deit`` family.
TINY_DEIT = ModelSpec(
    "deit_tiny_distilled_patch16_224",
    dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=1, num_classes=10),
    (3, 32, 32),
    family="deit",
)


def _classes(spec: ModelSpec, n: int) -> ModelSpec:
    return dataclasses.replace(spec, model_kwargs={**spec.model_kwargs, "num_classes": n})


# The library's small models (pipelines/small_models.py) at other class counts: VideoMAE V2 64 wide
# (one 64-wide head, which shape inference assumes), 4 frames of 32 × 32 in tubelets of 2 × 8 × 8 =
# 32 tokens; Point-MAE 48 wide, 3 heads of 16, 2 blocks, 128 points in 16 groups of 8; AudioMAE's real
# input, (1, 1024, 128) time × frequency, at 64 wide: 512 patches.
TINY_VIDEO = _classes(SMALL_MODELS["video"], 10)
TINY_POINT = _classes(SMALL_MODELS["points"], 5)
POINT_OPTIONS = {k: TINY_POINT.model_kwargs[k] for k in ("npoints", "num_group", "group_size", "num_heads")}
TINY_AUDIOMAE = _classes(SMALL_MODELS["spectrogram"], 527)

# Real files name a timm or MAE model in args.model; these tiny widths have no timm name,
# so the files name one timm does not know, which the loader reports and reads shapes for.
TINY_MODEL_NAME = "vit_m2pt_test_tiny"


def timm_vit(width: int, heads: int, *, seed: int = 0, **kwargs) -> nn.Module:
    """A real timm ViT built as users build it (not from a spec): the head count is the user's, and
    only the file they save can tell the toolkit anything."""
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(seed)
    kwargs = {"img_size": 32, "patch_size": 8, "num_classes": 10, **kwargs}
    return VisionTransformer(embed_dim=width, depth=2, num_heads=heads, **kwargs).eval()


def save_as_users_do(path: Path, model: nn.Module, /, **args) -> Path:
    """``torch.save(model.state_dict())`` as timm users do; with ``args``, MAE's ``save_model`` layout."""
    import argparse

    sd = model.state_dict()
    torch.save({"model": sd, "epoch": 1, "args": argparse.Namespace(**args)} if args else sd, path)
    return path


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


TRAINED_EPOCHS = 30  # the demo's budget


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


def save_proto(proto: onnx.ModelProto, path: Path) -> Path:
    onnx.save(proto, path)
    return path


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


def with_(config: TrainConfig, **changes) -> TrainConfig:
    return dataclasses.replace(config, **changes)
