"""The ``vit`` family: timm image ViTs, MAE fine-tunes and linear probes, AudioMAE.

The architecture and input are inferred from tensor shapes (and the training ``args``);
the model is ``timm.create_model(spec.arch, **spec.model_kwargs)``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, cast

from torch import Tensor, nn

from m2pt_deploy.errors import M2ptError
from m2pt_deploy.families.base import IMAGENET_MEAN, IMAGENET_STD, ModelFamily, ModelSpec

__all__ = ["AUDIO_DATASETS", "PROBE_BN_EPS", "ViTFamily", "arch_width", "audio_spec_input", "check_arch",
           "check_spec", "create_vit", "eval_preprocessing", "fold_probe_head", "infer_spec"]

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


def _grid(num_patches: int, input_size: tuple[int, ...] | None, patch: int, chans: int,
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
    input_size: tuple[int, ...] | None = None,
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


# The MAE recipe's linear-probe BatchNorm epsilon, which the M2PT reference reuses.
PROBE_BN_EPS = 1e-6


def fold_probe_head(state_dict: Mapping[str, Tensor], *, eps: float = PROBE_BN_EPS) -> dict[str, Tensor]:
    """``head = Sequential(BatchNorm1d(affine=False), Linear)`` → one ``Linear``.

    In eval mode the BatchNorm is ``(x - μ) / σ`` with ``σ = sqrt(var + eps)``, so
    ``W (x - μ)/σ + b = (W / σ) x + (b - W μ / σ)``. This changes rounding, so unlike the
    pathway fold it is equal within float tolerance, not bit for bit.
    """
    import torch

    if "head.0.running_mean" not in state_dict:
        return dict(state_dict)
    out = {k: v for k, v in state_dict.items() if not k.startswith("head.")}
    mean = state_dict["head.0.running_mean"].double()
    std = torch.sqrt(state_dict["head.0.running_var"].double() + eps)
    weight = state_dict["head.1.weight"].double()
    bias = state_dict["head.1.bias"].double()
    out["head.weight"] = (weight / std).to(state_dict["head.1.weight"].dtype)
    out["head.bias"] = (bias - weight @ (mean / std)).to(state_dict["head.1.bias"].dtype)
    return out


class ViTFamily(ModelFamily):
    """timm ``VisionTransformer`` and the MAE / AudioMAE models built on it."""

    name = "vit"
    title = "ViT"
    input_axes = ("channels", "height", "width")
    modality = "image"

    def recognizes(self, state_dict: Mapping[str, Tensor]) -> bool:
        patch = state_dict.get("patch_embed.proj.weight")
        return patch is not None and patch.ndim == 4 and "pos_embed" in state_dict

    def vanilla_view(self, state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """A linear-probe head is read as its Linear."""
        out = {k: v for k, v in state_dict.items() if not k.startswith("head.")}
        for key in ("head.1.weight", "head.weight"):
            if key in state_dict:
                out["head.weight"] = state_dict[key]
                break
        return out

    def infer_spec(
        self,
        state_dict: Mapping[str, Tensor],
        *,
        arch: str | None = None,
        input_size: tuple[int, ...] | None = None,
        args: Mapping[str, Any] | None = None,
        options: Mapping[str, Any] | None = None,
        notes: list[str] | None = None,
    ) -> ModelSpec:
        from m2pt_deploy.families.training_args import check_against_args, hints_from_args

        self.check_options(options)
        notes = notes if notes is not None else []
        args = args or {}
        if arch is not None:
            check_arch(arch)
        patch = state_dict.get("patch_embed.proj.weight")
        hints = hints_from_args(args, channels=int(patch.shape[1]) if patch is not None and patch.ndim > 1 else 3)
        # What the user passed wins over args, and then args are not reported as used.
        if arch is None and hints.model_note is not None:
            notes.append(hints.model_note)
            if hints.model_name is not None:
                width = int(patch.shape[0]) if patch is not None else 0
                named = arch_width(hints.model_name)
                if named != width:
                    raise M2ptError(f"args.model {args['model']!r} is {named} wide, the weights are {width} wide")
                arch = hints.model_name
        mean_std = None
        if input_size is None and hints.input_note is not None:
            notes.append(hints.input_note)
            input_size, mean_std = hints.input_size, hints.mean_std
        spec = infer_spec(state_dict, arch=arch, input_size=_three(input_size), mean_std=mean_std, notes=notes)
        notes.extend(check_against_args(spec, args))
        return spec

    def check_spec(self, spec: ModelSpec, state_dict: Mapping[str, Tensor]) -> None:
        check_spec(spec, state_dict)

    def override(self, spec: ModelSpec, state_dict: Mapping[str, Tensor], *, arch: str | None = None,
                 input_size: tuple[int, ...] | None = None, options: Mapping[str, Any] | None = None) -> ModelSpec:
        self.check_options(options)
        if arch is not None:
            check_arch(arch)
            width = state_dict["patch_embed.proj.weight"].shape[0]
            if arch_width(arch) != width:
                raise M2ptError(f"--arch {arch} is {arch_width(arch)} wide, the checkpoint's weights are {width} wide")
            spec = dataclasses.replace(spec, arch=arch)
        if input_size is not None:
            spec = self.with_input_size(spec, input_size)
            check_spec(spec, state_dict)
        return spec

    def build(self, spec: ModelSpec, *, exportable: bool = False) -> nn.Module:
        try:
            return create_vit(spec, exportable=exportable)
        except (AssertionError, TypeError, ValueError) as e:
            raise M2ptError(f"cannot build {spec.arch} with {spec.model_kwargs}: {e}") from e

    def adapt_to_weights(self, model: nn.Module, state_dict: Mapping[str, Tensor]) -> nn.Module:
        """The reference linear-probe head: ``Sequential(BatchNorm1d(affine=False), Linear)``."""
        if "head.0.running_mean" in state_dict:
            linear = model.get_classifier()  # type: ignore[operator]
            assert isinstance(linear, nn.Linear)
            model.head = nn.Sequential(nn.BatchNorm1d(linear.in_features, affine=False, eps=PROBE_BN_EPS), linear)
        return model

    def add_probe_head(self, model: nn.Module) -> None:
        """The MAE / M2PT linear-probe head: ``BatchNorm1d(affine=False)`` before the classifier."""
        linear = cast(nn.Linear, model.get_classifier())  # type: ignore[operator]
        model.head = nn.Sequential(nn.BatchNorm1d(linear.in_features, affine=False, eps=PROBE_BN_EPS), linear)

    def merge_extras(self, state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return fold_probe_head(state_dict)

    def with_input_size(self, spec: ModelSpec, input_size: tuple[int, ...]) -> ModelSpec:
        c, h, w = _three(input_size) or (0, 0, 0)
        kwargs = {**spec.model_kwargs, "in_chans": c, "img_size": (h, w)}
        mean, std = spec.mean, spec.std
        if len(mean) != c:
            mean, std = (0.5,) * c, (0.5,) * c
        return dataclasses.replace(spec, model_kwargs=kwargs, input_size=(c, h, w), mean=mean, std=std)

    def describe(self, spec: ModelSpec) -> str:
        """What the model is, not just the timm template it is built from: an architecture name
        with overriding keyword arguments (a 2-block, 1-channel "vit_tiny") is named by its shape."""
        kw = spec.model_kwargs
        shape = {k: kw[k] for k in ("embed_dim", "depth") if k in kw}
        if not shape and spec.input_size[0] == 3:
            return spec.arch
        c, h, w = spec.input_size
        parts = [f"{kw['embed_dim']} wide" if "embed_dim" in kw else "",
                 f"{kw['depth']} blocks" if "depth" in kw else "", f"input {c}x{h}x{w}"]
        return f"ViT ({', '.join(p for p in parts if p)}; timm {spec.arch} with overrides)"

    def input_name(self, spec: ModelSpec) -> str:
        """``input_values`` for AudioMAE's spectrograms, as Hugging Face's audio models (AST,
        ``ASTForAudioClassification``, whose input is the same fbank, time x frequency) name
        theirs; ``pixel_values`` for images."""
        return "input_values" if _modality(spec) == "spectrogram" else super().input_name(spec)

    def input_metadata(self, spec: ModelSpec) -> dict[str, Any]:
        c, h, w = spec.input_size
        crop_pct, interpolation = eval_preprocessing(spec)
        modality = _modality(spec)
        return {**super().input_metadata(spec), "modality": modality, "channels": c, "height": h, "width": w,
                "crop_pct": crop_pct, "interpolation": interpolation}


def _modality(spec: ModelSpec) -> str:
    return "spectrogram" if tuple(spec.input_size) == audio_spec_input()[0] else "image"


def _three(input_size: tuple[int, ...] | None) -> tuple[int, int, int] | None:
    if input_size is None:
        return None
    if len(input_size) != 3:
        raise M2ptError(f"a ViT's --input-size is C H W (3 numbers), got {len(input_size)}: "
                        f"{' '.join(map(str, input_size))}")
    return (int(input_size[0]), int(input_size[1]), int(input_size[2]))
