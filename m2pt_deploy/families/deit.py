"""The ``deit`` family: timm's distilled DeiT (``VisionTransformerDistilled``, ``deit_*_distilled_*``).

A distilled DeiT is a ViT with a second prefix token (``dist_token``) and a second classifier
(``head_dist``) that reads it; in eval its output is the mean of the two heads. The ``vit`` family
would claim these weights (a 4-D patch embedding and a position table) and misread them: its
position table holds one prefix token more than a ViT's, so the patch grid comes out wrong, and
``head_dist`` fits no ViT. So this family outranks it, and reads the shapes through a ViT's view
of the weights: everything else (heads, input, normalisation, notes, export) is the ViT family's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from m2pt_deploy.errors import M2ptError
from m2pt_deploy.families.base import ModelFamily, ModelSpec
from m2pt_deploy.families.registry import register_family
from m2pt_deploy.families.vit import ViTFamily

if TYPE_CHECKING:
    from torch import Tensor, nn

__all__ = ["DeiTFamily"]

# timm's distilled DeiTs by width; another width is built from the base one with its shapes.
_ARCHS = {192: "deit_tiny_distilled_patch16_224", 384: "deit_small_distilled_patch16_224",
          768: "deit_base_distilled_patch16_224"}
_DIST_TOKEN, _HEAD_DIST = "dist_token", "head_dist"


@register_family(priority=10)  # before the generic ViT (0), which would take these weights
class DeiTFamily(ViTFamily):
    """timm ``VisionTransformerDistilled``: a ViT with a distillation token and head."""

    name = "deit"
    title = "DeiT"

    def recognizes(self, state_dict: Mapping[str, Tensor]) -> bool:
        return super().recognizes(state_dict) and _DIST_TOKEN in state_dict

    def vanilla_view(self, state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """The ViT these shapes would be: no distillation token or head, one prefix position fewer."""
        if _DIST_TOKEN not in state_dict:  # --family deit on other weights
            sample = ", ".join(list(state_dict)[:3])
            raise M2ptError(f"not a distilled DeiT checkpoint: no {_DIST_TOKEN} (keys: {sample}, ...)")
        view = super().vanilla_view({k: v for k, v in state_dict.items()
                                     if k != _DIST_TOKEN and not k.startswith(_HEAD_DIST + ".")})
        if "pos_embed" in view:
            view["pos_embed"] = view["pos_embed"][:, 1:]  # shapes only: [cls, dist, patches...]
        return view

    def default_arch(self, width: int) -> str:
        return _ARCHS.get(width, _ARCHS[768])

    def head_modules(self) -> tuple[str, ...]:
        return ("head", _HEAD_DIST)

    def add_probe_head(self, model: nn.Module) -> None:
        """Refused: MAE's linear probe replaces one head, and a DeiT averages two."""
        ModelFamily.add_probe_head(self, model)

    def describe(self, spec: ModelSpec) -> str:
        kw = spec.model_kwargs
        if "embed_dim" not in kw:
            return spec.arch
        c, h, w = spec.input_size
        return (f"DeiT ({kw['embed_dim']} wide, {kw['depth']} blocks, input {c}x{h}x{w}; timm {spec.arch}: "
                "the mean of head and head_dist)")
