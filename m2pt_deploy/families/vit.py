"""The ``vit`` family: timm image ViTs, MAE fine-tunes and linear probes, AudioMAE.

The architecture and input are inferred from tensor shapes (and the training ``args``);
the model is ``timm.create_model(spec.arch, **spec.model_kwargs)``. What is AudioMAE's own (its
spectrogram input) is in :mod:`~m2pt_deploy.families.audio`. A ViT variant with more parts is a
family of its own that reuses these functions (``deit``: a distillation token and a second head).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, cast

from m2pt_deploy.errors import M2ptError
from m2pt_deploy.families.audio import (
    AUDIO_INPUT_NAME,
    audio_grid,
    audio_normalisation,
    is_audio_input,
    is_spectrogram,
)
from m2pt_deploy.families.base import IMAGENET_MEAN, IMAGENET_STD, ModelFamily, ModelSpec
from m2pt_deploy.families.heads import NUM_HEADS, Stated, by_width, resolve_heads
from m2pt_deploy.families.registry import register_family
from m2pt_deploy.families.training_args import check_against_args, hints_from_args

if TYPE_CHECKING:
    from torch import Tensor, nn

__all__ = ["PROBE_BN_EPS", "ViTFamily", "arch_heads", "arch_width", "check_arch",
           "check_spec", "create_vit", "eval_preprocessing", "fold_probe_head", "infer_spec"]

# timm's standard ViT widths, their head counts and names (for the note); other widths assume 64-wide heads.
_TIMM_SIZES = {192: (3, "timm's ViT-Ti"), 384: (6, "timm's ViT-S"), 768: (12, "timm's ViT-B"),
               1024: (16, "timm's ViT-L"), 1280: (16, "timm's ViT-H")}
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


def _grid(num_patches: int, input_size: tuple[int, ...] | None, patch: int, chans: int,
          notes: list[str]) -> tuple[int, int]:
    audio = audio_grid(chans, patch, num_patches, input_size, notes)
    if audio is not None:
        return audio
    if input_size is not None:
        return input_size[1], input_size[2]
    side = math.isqrt(num_patches)
    if side * side != num_patches:
        raise M2ptError(
            f"pos_embed has {num_patches} patches, not a square grid; pass --input-size C H W"
        )
    # NOTE a square count is not a square grid (256 patches are 16 x 16 or 8 x 32): both load.
    notes.append(f"input {chans} x {side * patch} x {side * patch}: a square {side} x {side} grid assumed from "
                 f"pos_embed's {num_patches} patches, not in the weights; pass --input-size C H W if not")
    return side * patch, side * patch


@functools.lru_cache(maxsize=32)
def _arch_dims(arch: str) -> tuple[int, int | None]:
    import timm
    import torch

    with torch.device("meta"):  # no memory, no init cost
        model = timm.create_model(arch, pretrained=False)
    blocks = getattr(model, "blocks", None)
    heads = getattr(getattr(blocks[0], "attn", None), "num_heads", None) if blocks else None
    return cast(int, model.num_features), heads  # the width of the final features: embed_dim for ViTs


def arch_width(arch: str) -> int:
    """The embedding width of a timm architecture, built on the meta device."""
    return _arch_dims(arch)[0]


def arch_heads(arch: str) -> int | None:
    """The head count of a timm ViT architecture (None for a model without ViT blocks)."""
    return _arch_dims(arch)[1]


def _normalisation(chans: int, audio: bool, notes: list[str]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The input normalisation nothing in the file states, with the note that says so."""
    if audio:
        return audio_normalisation(notes)
    if chans == 3:
        notes.append("ImageNet mean/std assumed for the input normalisation, not in the weights")
        return IMAGENET_MEAN, IMAGENET_STD
    notes.append(f"mean 0.5, std 0.5 assumed for the {chans}-channel input normalisation, not in the weights")
    return (0.5,) * chans, (0.5,) * chans


def infer_spec(
    state_dict: Mapping[str, Tensor],
    *,
    arch: str | None = None,
    input_size: tuple[int, ...] | None = None,
    mean_std: tuple[tuple[float, ...], tuple[float, ...]] | None = None,
    num_heads: int | None = None,
    arch_from: str | None = None,
    pooling_stated: bool = False,
    default_arch: Callable[[int], str] | None = None,
    notes: list[str] | None = None,
) -> ModelSpec:
    """Read a timm (or MAE fine-tuned) ViT's architecture off its tensor shapes.

    Embed dim, channels and patch size come from ``patch_embed.proj.weight``; depth from
    the block indices; the image size from ``pos_embed`` (square unless ``input_size``
    says otherwise; a 1-channel 512-patch grid is AudioMAE's 1024 × 128); classes from
    ``head.weight``; ``fc_norm`` without a final ``norm`` means MAE-style global average
    pooling. ``arch`` (named by ``arch_from``, default ``--arch``) must have the weights' width and
    fixes the head count, which ``num_heads`` (--num-heads) may not contradict; without either,
    timm's width table or 64-wide heads. Every value the weights do not show is noted in ``notes``
    unless given: the grid, the head count, the normalisation (``mean_std``), timm's conventions.
    Without ``arch`` the timm name is ``default_arch(width)`` (a family built on this one names
    its own), by default timm's ViT of that width.
    """
    notes = notes if notes is not None else []
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
    height, img_w = _grid(num_patches, input_size, patch, chans, notes)
    if (height // patch) * (img_w // patch) != num_patches:
        raise M2ptError(
            f"input {height}x{img_w} with patch {patch} gives {(height // patch) * (img_w // patch)} "
            f"patches, pos_embed has {num_patches}"
        )
    avg_pool = "fc_norm.weight" in state_dict and "norm.weight" not in state_dict
    stated: Stated | None = None
    if arch is not None:
        named, heads = _arch_dims(arch)
        if named != width and arch_from:
            raise M2ptError(f"{arch_from} is {named} wide, the weights are {width} wide")
        if named != width:
            raise M2ptError(f"--arch {arch} is {named} wide, the checkpoint's weights are {width} wide")
        arch_from = arch_from or f"--arch {arch}"
        stated = (heads, arch_from) if heads is not None else None
    heads = resolve_heads(width, flag=num_heads, stated=stated, convention=by_width(width, _TIMM_SIZES),
                          title="ViT", notes=notes)
    kwargs: dict[str, Any] = {
        "img_size": (height, img_w) if height != img_w else height,
        "patch_size": patch,
        "in_chans": chans,
        "embed_dim": width,
        "depth": depth,
        "num_heads": heads,
        "mlp_ratio": state_dict["blocks.0.mlp.fc1.weight"].shape[0] / width,
        "qkv_bias": "blocks.0.attn.qkv.bias" in state_dict,
        "class_token": has_cls,
        "reg_tokens": num_reg,
        "global_pool": "avg" if avg_pool else "token",
        "fc_norm": avg_pool,
        "num_classes": state_dict["head.weight"].shape[0] if "head.weight" in state_dict else 0,
    }
    if arch is None:
        arch = (default_arch or vit_arch)(width)
    elif stated is not None:
        del kwargs["num_heads"]  # the named architecture's own
    if mean_std is None:
        audio = is_audio_input(chans, patch, num_patches, height, img_w)
        # AudioMAE's default grid note already names its normalisation.
        mean_std = _normalisation(chans, audio, notes if input_size is not None or not audio else [])
    notes.append(_conventions(avg_pool, pooling_stated=pooling_stated))
    mean, std = mean_std
    spec = ModelSpec(arch=arch, model_kwargs=kwargs, input_size=(chans, height, img_w), mean=mean, std=std)
    if chans == 3:  # what the export records for a server's /classify (see input_metadata)
        crop_pct, interpolation = eval_preprocessing(spec)
        crop = f"crop {crop_pct}" if crop_pct is not None else "timm's default crop"
        notes.append(f"{crop} and {interpolation} resize for served images: timm {arch}'s eval config assumed, "
                     "not in the weights")
    return spec


def vit_arch(width: int) -> str:
    """timm's ViT of this width (ViT-B's name for a width timm has no ViT of)."""
    return f"{_ARCH_BY_WIDTH.get(width, 'vit_base')}_patch16_224"


def _conventions(avg_pool: bool, *, pooling_stated: bool) -> str:
    # timm's VisionTransformer and MAE's subclass agree on these; no weight shows them.
    pooling = ("mean pooling (fc_norm and no final norm: MAE's global pool)" if avg_pool
               else "cls-token pooling (a final norm and no fc_norm)")
    assumed = ["LayerNorm eps 1e-6", "exact GELU", *(() if pooling_stated else (pooling,))]
    return f"timm ViT conventions assumed: {', '.join(assumed)}, not in the weights"


# What a declared spec must agree on with the weights; the rest (mlp ratio, pooling) is checked
# when the state dict loads into the built model.
_CHECKED = ("embed_dim", "depth", "in_chans", "patch_size", "num_classes", "class_token")


def check_spec(spec: ModelSpec, state_dict: Mapping[str, Tensor]) -> None:
    """Refuse a declared spec (file metadata, ``args``) that the tensor shapes contradict.

    Runs on shapes only, before any model is built: a config claiming a 65536-pixel input
    for 32 × 32 weights would otherwise allocate a position table for 16M patches.
    """
    # Heads are not in the shapes: one head (any count that divides the width) reads the same.
    inferred = infer_spec(state_dict, input_size=spec.input_size, num_heads=1)
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


# The generic ViT: any 4-D patch embedding with a position table. More specific families built on
# timm's VisionTransformer (deit) outrank it.
@register_family(priority=0)
class ViTFamily(ModelFamily):
    """timm ``VisionTransformer`` and the MAE / AudioMAE models built on it."""

    name = "vit"
    title = "ViT"
    input_axes = ("channels", "height", "width")
    modality = "image"
    options = (NUM_HEADS,)  # from args.model or --arch, else timm's width table or 64-wide heads

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
        heads = self.check_options(options)["num_heads"]
        notes = notes if notes is not None else []
        args = args or {}
        if arch is not None:
            check_arch(arch)
        patch = state_dict.get("patch_embed.proj.weight")
        hints = hints_from_args(args, channels=int(patch.shape[1]) if patch is not None and patch.ndim > 1 else 3)
        arch_from = None
        # What the user passed wins over args, and then args are not reported as used.
        if arch is None and hints.model_note is not None:
            notes.append(hints.model_note)
            if hints.model_name is not None:
                arch, arch_from = hints.model_name, f"args.model {args['model']!r}"
        mean_std = None
        if input_size is None and hints.input_note is not None:
            notes.append(hints.input_note)
            input_size, mean_std = hints.input_size, hints.mean_std
        spec = infer_spec(state_dict, arch=arch, input_size=_three(input_size), mean_std=mean_std, num_heads=heads,
                          arch_from=arch_from, pooling_stated=isinstance(args.get("global_pool"), bool),
                          default_arch=self.default_arch, notes=notes)
        if spec.family != self.name:  # a family built on this one (deit)
            spec = dataclasses.replace(spec, family=self.name)
        notes.extend(check_against_args(spec, args))
        return spec

    def default_arch(self, width: int) -> str:
        """The timm architecture a checkpoint of this width is built as when nothing names one."""
        return vit_arch(width)

    def check_spec(self, spec: ModelSpec, state_dict: Mapping[str, Tensor]) -> None:
        check_spec(spec, state_dict)

    def override(self, spec: ModelSpec, state_dict: Mapping[str, Tensor], *, arch: str | None = None,
                 input_size: tuple[int, ...] | None = None, options: Mapping[str, Any] | None = None) -> ModelSpec:
        """Our config with the user's flags: --num-heads must be the count the config states."""
        heads = self.check_options(options)["num_heads"]
        width = state_dict["patch_embed.proj.weight"].shape[0]
        if heads is not None:
            declared = spec.model_kwargs.get("num_heads") or arch_heads(spec.arch)
            resolve_heads(width, flag=heads, stated=(declared, "the checkpoint's config") if declared else None,
                          convention=None, title=self.title, notes=[])
        if arch is not None:
            check_arch(arch)
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
            self.add_probe_head(model)
        return model

    def add_probe_head(self, model: nn.Module) -> None:
        """The MAE / M2PT linear-probe head: ``BatchNorm1d(affine=False)`` before the classifier."""
        from torch import nn

        linear = model.get_classifier()  # type: ignore[operator]
        assert isinstance(linear, nn.Linear)
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
        """``input_values`` for AudioMAE's spectrograms (see ``audio.AUDIO_INPUT_NAME``),
        ``pixel_values`` for images."""
        return AUDIO_INPUT_NAME if _modality(spec) == "spectrogram" else super().input_name(spec)

    def input_metadata(self, spec: ModelSpec) -> dict[str, Any]:
        c, h, w = spec.input_size
        crop_pct, interpolation = eval_preprocessing(spec)
        modality = _modality(spec)
        return {**super().input_metadata(spec), "modality": modality, "channels": c, "height": h, "width": w,
                "crop_pct": crop_pct, "interpolation": interpolation}


def _modality(spec: ModelSpec) -> str:
    return "spectrogram" if is_spectrogram(spec.input_size) else "image"


def _three(input_size: tuple[int, ...] | None) -> tuple[int, int, int] | None:
    if input_size is None:
        return None
    if len(input_size) != 3:
        raise M2ptError(f"a ViT's --input-size is C H W (3 numbers), got {len(input_size)}: "
                        f"{' '.join(map(str, input_size))}")
    return (int(input_size[0]), int(input_size[1]), int(input_size[2]))
