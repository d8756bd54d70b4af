"""What a ViT checkpoint is: its timm architecture and input, inferred from tensor shapes."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, cast

from torch import Tensor, nn

from m2pt_deploy.errors import M2ptError

__all__ = ["AUDIO_DATASETS", "ModelSpec", "arch_width", "audio_spec_input", "check_arch", "check_spec",
           "create_vit", "eval_preprocessing", "infer_spec"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# AudioMAE (and M2PT's Audio code): fbank spectrograms of 128 mel bins, time × frequency,
# normalised as (x - mean) / (2 * std) with per-dataset statistics; audioset is the default.
AUDIO_DATASETS: dict[str, tuple[int, float, float]] = {  # name: (frames, mean, std)
    "audioset": (1024, -4.2677393, 4.5689974),
    "k400": (1024, -4.2677393, 4.5689974),
    "esc50": (512, -6.6268077, 5.358466),
    "speechcommands": (128, -6.845978, 5.5654526),
}
_AUDIO_MEL_BINS = 16 * 8
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

    def describe(self) -> str:
        """What the model is, not just the timm template it is built from: an architecture name
        with overriding keyword arguments (a 2-block, 1-channel "vit_tiny") is named by its shape."""
        kw = self.model_kwargs
        shape = {k: kw[k] for k in ("embed_dim", "depth") if k in kw}
        if not shape and self.input_size[0] == 3:
            return self.arch
        c, h, w = self.input_size
        parts = [f"{kw['embed_dim']} wide" if "embed_dim" in kw else "",
                 f"{kw['depth']} blocks" if "depth" in kw else "", f"input {c}x{h}x{w}"]
        return f"ViT ({', '.join(p for p in parts if p)}; timm {self.arch} with overrides)"

    def with_input_size(self, input_size: tuple[int, int, int]) -> ModelSpec:
        c, h, w = input_size
        kwargs = {**self.model_kwargs, "in_chans": c, "img_size": (h, w)}
        mean, std = self.mean, self.std
        if len(mean) != c:
            mean, std = (0.5,) * c, (0.5,) * c
        return dataclasses.replace(self, model_kwargs=kwargs, input_size=(c, h, w), mean=mean, std=std)


def eval_preprocessing(spec: ModelSpec) -> tuple[float | None, str]:
    """``(crop_pct, interpolation)`` of timm's data config for the architecture: what training
    evaluates with, and what the export records so that a server crops and resizes the same way
    (``None``: timm's default crop for an architecture without a config)."""
    import timm

    cfg = timm.get_pretrained_cfg(spec.arch)
    if cfg is None:
        return None, "bilinear"
    return cfg.crop_pct, cfg.interpolation or "bilinear"


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


def audio_spec_input(dataset: str = "audioset") -> tuple[tuple[int, int, int], tuple[float], tuple[float]]:
    """AudioMAE's input (1, frames, 128) and its normalisation (mean, 2 × std) for a dataset."""
    frames, mean, std = AUDIO_DATASETS[dataset]
    return (1, frames, _AUDIO_MEL_BINS), (mean,), (2 * std,)


def _is_audiomae_grid(chans: int, patch: int, num_patches: int) -> bool:
    return chans == 1 and patch == 16 and num_patches == 512


def _grid(num_patches: int, input_size: tuple[int, int, int] | None, patch: int, chans: int,
          notes: list[str]) -> tuple[int, int]:
    if input_size is not None:
        h, w = input_size[1], input_size[2]
        if _is_audiomae_grid(chans, patch, num_patches) and (h // patch, w // patch) == (8, 64):
            raise M2ptError(
                f"--input-size 1 {h} {w} is AudioMAE's input transposed: it is time x frequency, "
                "(1, 1024, 128); the same 512 patches would meet a transposed position table"
            )
        return h, w
    if _is_audiomae_grid(chans, patch, num_patches):
        # NOTE a 512-patch grid is 64 × 8 (AudioMAE) or 8 × 64 (its transpose): both load,
        # only one is right, and 1-channel 512-patch ViTs are AudioMAE's.
        notes.append("assumed AudioMAE's input: 1 x 1024 x 128 (time x frequency), normalised as "
                     "(x + 4.2677) / (2 x 4.5690); pass --input-size to override")
        return 1024, _AUDIO_MEL_BINS
    side = math.isqrt(num_patches)
    if side * side != num_patches:
        raise M2ptError(
            f"pos_embed has {num_patches} patches, not a square grid; pass --input-size C H W"
        )
    return side * patch, side * patch


def arch_width(arch: str) -> int:
    """The embedding width of a timm architecture, built on the meta device (no memory, no init cost)."""
    import timm
    import torch

    with torch.device("meta"):
        model = timm.create_model(arch, pretrained=False)
    return cast(int, model.num_features)  # the width of the final features: embed_dim for ViTs


def infer_spec(
    state_dict: Mapping[str, Tensor],
    *,
    arch: str | None = None,
    input_size: tuple[int, int, int] | None = None,
    mean_std: tuple[tuple[float, ...], tuple[float, ...]] | None = None,
    notes: list[str] | None = None,
) -> ModelSpec:
    """Read a timm (or MAE fine-tuned) ViT's architecture off its tensor shapes.

    Embed dim, channels and patch size come from ``patch_embed.proj.weight``; depth from
    the block indices; the image size from ``pos_embed`` (square unless ``input_size``
    says otherwise; a 1-channel 512-patch grid is AudioMAE's 1024 × 128); classes from
    ``head.weight``; ``fc_norm`` without a final ``norm`` means MAE-style global average
    pooling. ``arch`` must have the weights' width. Assumptions are appended to ``notes``.
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
    height, img_w = _grid(num_patches, input_size, patch, chans, notes if notes is not None else [])
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
        named = arch_width(arch)
        if named != width:
            raise M2ptError(f"--arch {arch} is {named} wide, the checkpoint's weights are {width} wide")
        del kwargs["num_heads"]  # shapes do not show it; a named architecture does
    if mean_std is not None:
        mean, std = mean_std
    elif _is_audiomae_grid(chans, patch, num_patches) and (height, img_w) == (1024, _AUDIO_MEL_BINS):
        _, mean, std = audio_spec_input()
    else:
        mean, std = (IMAGENET_MEAN, IMAGENET_STD) if chans == 3 else ((0.5,) * chans, (0.5,) * chans)
    return ModelSpec(arch=arch, model_kwargs=kwargs, input_size=(chans, height, img_w), mean=mean, std=std)


# What a declared spec must agree on with the weights; the rest (mlp ratio, pooling) is checked
# when the state dict loads into the built model.
_CHECKED = ("embed_dim", "depth", "in_chans", "patch_size", "num_classes", "class_token")


def check_spec(spec: ModelSpec, state_dict: Mapping[str, Tensor]) -> None:
    """Refuse a declared spec (file metadata, ``args``) that the tensor shapes contradict.

    Runs on shapes only, before any model is built: a config claiming a 65536-pixel input
    for 32 × 32 weights would otherwise allocate a position table for 16M patches.
    """
    inferred = infer_spec(state_dict, input_size=spec.input_size)
    for key in _CHECKED:
        declared, actual = spec.model_kwargs.get(key), inferred.model_kwargs[key]
        if declared is not None and declared != actual:
            raise M2ptError(f"the config says {key} {declared!r}, the weights have {actual!r}")
    size = spec.model_kwargs.get("img_size")
    if size is not None and tuple(size if isinstance(size, (list, tuple)) else (size, size)) != spec.input_size[1:]:
        raise M2ptError(f"the config's img_size {size!r} disagrees with its input size {spec.input_size}")
