"""What a ViT checkpoint is: its timm architecture and input, inferred from tensor shapes."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from m2pt_deploy.errors import M2ptError

__all__ = ["ModelSpec", "check_arch", "create_vit", "infer_spec"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# timm's standard ViT widths and their head counts; other widths assume 64-wide heads.
_HEADS_BY_WIDTH = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16}
_ARCH_BY_WIDTH = {192: "vit_tiny", 384: "vit_small", 768: "vit_base", 1024: "vit_large", 1280: "vit_huge"}


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Enough to rebuild the model: ``timm.create_model(arch, **model_kwargs)`` plus its input."""

    arch: str
    model_kwargs: dict[str, Any]
    input_size: tuple[int, int, int]
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    @property
    def num_classes(self) -> int:
        return int(self.model_kwargs.get("num_classes", 1000))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelSpec:
        return cls(
            arch=d["arch"],
            model_kwargs=dict(d["model_kwargs"]),
            input_size=tuple(d["input_size"]),  # type: ignore[arg-type]
            mean=tuple(d["mean"]),
            std=tuple(d["std"]),
        )

    def with_input_size(self, input_size: tuple[int, int, int]) -> ModelSpec:
        c, h, w = input_size
        kwargs = {**self.model_kwargs, "in_chans": c, "img_size": (h, w)}
        mean, std = self.mean, self.std
        if len(mean) != c:
            mean, std = (0.5,) * c, (0.5,) * c
        return dataclasses.replace(self, model_kwargs=kwargs, input_size=(c, h, w), mean=mean, std=std)


def check_arch(arch: str) -> None:
    import timm

    if not timm.is_model(arch):
        close = timm.list_models(f"*{arch.split('_')[0]}*")[:3]
        raise M2ptError(f"unknown timm architecture {arch!r} (e.g. {', '.join(close) or 'vit_base_patch16_224'})")


def create_vit(spec: ModelSpec, *, exportable: bool = False) -> nn.Module:
    """A fresh, randomly initialised timm model in eval mode.

    ``exportable=True`` makes timm avoid fused attention, which trips ONNX exporters.
    """
    import timm

    try:
        model = timm.create_model(spec.arch, pretrained=False, exportable=exportable, **spec.model_kwargs)
    except RuntimeError as e:
        raise M2ptError(f"unknown timm architecture {spec.arch!r}: {e}") from e
    return model.eval()


def _grid(num_patches: int, input_size: tuple[int, int, int] | None, patch: int) -> tuple[int, int]:
    if input_size is not None:
        return input_size[1], input_size[2]
    side = math.isqrt(num_patches)
    if side * side != num_patches:
        raise M2ptError(
            f"pos_embed has {num_patches} patches, not a square grid; pass --input-size C H W"
        )
    return side * patch, side * patch


def infer_spec(
    state_dict: Mapping[str, Tensor],
    *,
    arch: str | None = None,
    input_size: tuple[int, int, int] | None = None,
) -> ModelSpec:
    """Read a timm (or MAE fine-tuned) ViT's architecture off its tensor shapes.

    Embed dim, channels and patch size come from ``patch_embed.proj.weight``; depth from
    the block indices; the image size from ``pos_embed`` (square unless ``input_size``
    says otherwise); classes from ``head.weight``; ``fc_norm`` without a final ``norm``
    means MAE-style global average pooling.
    """
    if "patch_embed.proj.weight" not in state_dict or "pos_embed" not in state_dict:
        sample = ", ".join(list(state_dict)[:3])
        raise M2ptError(f"not a ViT checkpoint: no patch_embed.proj.weight / pos_embed (keys: {sample}, ...)")
    width, chans, patch, patch_w = state_dict["patch_embed.proj.weight"].shape
    if patch != patch_w:
        raise M2ptError(f"non-square patches {patch}x{patch_w} are not supported")
    depth = 1 + max(int(k.split(".")[1]) for k in state_dict if k.startswith("blocks."))
    has_cls = "cls_token" in state_dict
    num_reg = state_dict["reg_token"].shape[1] if "reg_token" in state_dict else 0
    num_prefix = int(has_cls) + num_reg
    num_patches = state_dict["pos_embed"].shape[1] - num_prefix
    if input_size is not None and input_size[0] != chans:
        raise M2ptError(f"--input-size says {input_size[0]} channels, the checkpoint has {chans}")
    height, img_w = _grid(num_patches, input_size, patch)
    if (height // patch) * (img_w // patch) != num_patches:
        raise M2ptError(
            f"input {height}x{img_w} with patch {patch} gives {(height // patch) * (img_w // patch)} "
            f"patches, pos_embed has {num_patches}"
        )
    avg_pool = "fc_norm.weight" in state_dict and "norm.weight" not in state_dict
    kwargs: dict[str, Any] = {
        "img_size": (height, img_w) if height != img_w else height,
        "patch_size": patch,
        "in_chans": chans,
        "embed_dim": width,
        "depth": depth,
        "num_heads": _HEADS_BY_WIDTH.get(width, max(1, width // 64)),
        "mlp_ratio": state_dict["blocks.0.mlp.fc1.weight"].shape[0] / width,
        "qkv_bias": "blocks.0.attn.qkv.bias" in state_dict,
        "class_token": has_cls,
        "reg_tokens": num_reg,
        "global_pool": "avg" if avg_pool else "token",
        "fc_norm": avg_pool,
        "num_classes": state_dict["head.weight"].shape[0] if "head.weight" in state_dict else 0,
    }
    if arch is None:
        arch = f"{_ARCH_BY_WIDTH.get(width, 'vit_base')}_patch16_224"
    else:
        del kwargs["num_heads"]  # shapes do not show it; a named architecture does
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if chans == 3 else ((0.5,) * chans, (0.5,) * chans)
    return ModelSpec(arch=arch, model_kwargs=kwargs, input_size=(chans, height, img_w), mean=mean, std=std)
