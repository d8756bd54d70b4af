"""The model being trained: the target (any registered family), a new head if asked, pathways from
each aux, frozen parts."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

from torch import Tensor, nn

from m2pt_deploy.errors import M2ptError
from m2pt_deploy.families import ModelFamily, ModelSpec, family_of
from m2pt_deploy.families.base import numbered_blocks
from m2pt_deploy.families.heads import HeadCountUnknown
from m2pt_deploy.merge import merge_state_dict
from m2pt_deploy.model.build import build_vanilla, load_strict
from m2pt_deploy.model.checkpoint import Checkpoint, PathwayInfo, load_checkpoint
from m2pt_deploy.model.pathway import LambdaKind, add_pathways, pathway_layers
from m2pt_deploy.train.config import Mode

__all__ = [
    "AuxModel",
    "Mode",
    "attach_pathways",
    "blocks",
    "build_target",
    "load_aux",
    "set_drop_path",
    "set_trainable",
]



@dataclasses.dataclass(frozen=True)
class AuxModel:
    state_dict: dict[str, Tensor]
    info: dict[str, Any]


def blocks(model: nn.Module, family: ModelFamily) -> list[nn.Module]:
    """The model's transformer blocks in depth order, where its family says they are."""
    return [model.get_submodule(name) for name in family.pathway_blocks(n for n, _ in model.named_modules())]


def _with_classes(spec: ModelSpec, num_classes: int) -> ModelSpec:
    return dataclasses.replace(spec, model_kwargs={**spec.model_kwargs, "num_classes": num_classes})


def build_target(ckpt: Checkpoint, *, num_classes: int, probe_head: bool) -> tuple[nn.Module, ModelSpec]:
    """The target with its weights; the head is re-initialised when the class count changes."""
    if ckpt.pathway is not None:
        raise M2ptError("the target already has pathways; merge it first (m2pt-merge)", ckpt.path)
    family = family_of(ckpt.spec)
    spec = _with_classes(ckpt.spec, num_classes)
    model = build_vanilla(spec)
    heads = tuple(h + "." for h in family.head_modules())
    state = {k: v for k, v in ckpt.state_dict.items() if not k.startswith(heads)}
    if ckpt.spec.num_classes == num_classes:
        state = dict(ckpt.state_dict)
    else:
        state.update({k: v for k, v in model.state_dict().items() if k.startswith(heads)})
    load_strict(model, state, what=str(ckpt.path))
    if probe_head:
        family.add_probe_head(model)
    return model, spec


def load_aux(sources: Sequence[tuple[str | os.PathLike[str], str | None]]) -> list[AuxModel]:
    """Each ``(path, modality)``; the modality defaults to what our checkpoint says, else unknown.

    An aux that is itself a pathway model (an M2PT training checkpoint) contributes the
    weights it computes with: its pathways are merged on load, and its info says so.
    """
    out = []
    for path, modality in sources:
        ckpt = _load_aux_checkpoint(path)
        name = modality or ckpt.extra.get("modality") or "unknown"
        info = {"modality": name, "sha256": ckpt.sha256, "file": Path(path).name}
        state_dict = ckpt.state_dict
        if ckpt.pathway is not None:
            state_dict = merge_state_dict(state_dict)
            info["merged_on_load"] = True
        out.append(AuxModel(state_dict, info))
    return out


def _load_aux_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    try:
        return load_checkpoint(path)
    except M2ptError as e:
        if not isinstance(e.__cause__, HeadCountUnknown):
            raise
    # An aux lends only its weight matrices to the pathways: its head count is never used, and one
    # head divides every width.
    return load_checkpoint(path, options={"num_heads": 1})


def attach_pathways(
    model: nn.Module,
    auxes: Sequence[AuxModel],
    *,
    family: ModelFamily,
    layers: Sequence[str],
    lambda_kind: LambdaKind,
    train_aux: bool,
) -> PathwayInfo | None:
    if not auxes:
        return None
    targets = family.pathway_blocks(n for n, _ in model.named_modules())
    aux_blocks = [_aux_blocks(aux, family) for aux in auxes]
    for k, aux in enumerate(auxes):
        try:
            _check_aux(model, aux, k, layers, targets, aux_blocks[k])
        except M2ptError as e:
            raise M2ptError(e.message, aux.info["file"]) from e
    add_pathways(model, [a.state_dict for a in auxes], layers=layers, lambda_kind=lambda_kind,
                 train_aux=train_aux, blocks=targets, aux_blocks=aux_blocks[0])
    return PathwayInfo(tuple(layers), family.block_path, lambda_kind, tuple(a.info for a in auxes))


def _aux_blocks(aux: AuxModel, family: ModelFamily) -> list[str]:
    """Where an aux model keeps its blocks: where the target's family keeps them when the aux is
    laid out alike; else M2PT's aux models are timm ViTs (``blocks``) whatever the target's
    family, and a Point-MAE aux keeps them at ``blocks.blocks``."""
    same = family.pathway_blocks(aux.state_dict)
    if same:
        return same
    path = "blocks.blocks" if any(k.startswith("blocks.blocks.") for k in aux.state_dict) else "blocks"
    return numbered_blocks(aux.state_dict, path)


def _check_aux(model: nn.Module, aux: AuxModel, k: int, layers: Sequence[str], targets: Sequence[str],
               aux_blocks: Sequence[str]) -> None:
    """Depth and every pathway layer's shape, so the error names the aux file that does not fit."""
    if len(aux_blocks) != len(targets):
        raise M2ptError(f"depth mismatch: the target has {len(targets)} blocks, aux #{k} has {len(aux_blocks)}")
    for block, aux_block in zip(targets, aux_blocks, strict=True):
        for layer in layers:
            key = f"{aux_block}.{layer}.weight"
            target = tuple(cast(nn.Linear, model.get_submodule(f"{block}.{layer}")).weight.shape)
            if key not in aux.state_dict:
                raise M2ptError(f"aux #{k} has no weight {key}")
            got = tuple(aux.state_dict[key].shape)
            if got != target:
                raise M2ptError(f"architecture mismatch: {block}.{layer}: target weight {target} "
                                f"vs aux #{k} weight {got}")


def set_trainable(model: nn.Module, mode: Mode, *, train_aux: bool, head: str = "head") -> None:
    """``full``: everything but frozen aux weights; ``probe``: λ and the head only."""
    lambdas = {id(s) for p in pathway_layers(model).values() for s in p.scales}
    aux = {id(w) for p in pathway_layers(model).values() for w in p.aux_weights}
    for name, p in model.named_parameters():
        if id(p) in lambdas:
            p.requires_grad_(True)
        elif id(p) in aux:
            p.requires_grad_(train_aux)
        else:
            p.requires_grad_(mode == "full" or name.startswith(head + "."))


def set_drop_path(model: nn.Module, rate: float, family: ModelFamily) -> None:
    """Stochastic depth rising linearly to ``rate`` at the last block, as timm builds it."""
    from timm.layers import DropPath

    stack = list(blocks(model, family))
    for i, block in enumerate(stack):
        r = rate * i / max(1, len(stack) - 1)
        for attr in ("drop_path1", "drop_path2"):
            if hasattr(block, attr):
                setattr(block, attr, DropPath(r) if r > 0 else nn.Identity())
