"""Fold pathways away: a pathway model becomes its family's vanilla model at vanilla cost.

Both the model-level merge and the state-dict-level merge call :func:`merge_weight`,
which is the forward pass's own arithmetic, so merged outputs are bit-identical to the
unmerged model's in fp32 (checked with ``torch.equal``, not ``allclose``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from m2pt_deploy.errors import M2ptError
from m2pt_deploy.families import ModelFamily, ModelSpec, detect_family, family_of
from m2pt_deploy.model.build import build_vanilla, load_strict
from m2pt_deploy.model.checkpoint import Checkpoint
from m2pt_deploy.model.pathway import effective_weight, pathway_layers

__all__ = ["merge_checkpoint", "merge_model", "merge_state_dict", "merge_weight", "merged_state_dict"]


def merge_weight(weight: Tensor, aux_weights: Sequence[Tensor], scales: Sequence[Tensor]) -> Tensor:
    """``W + Σ_k λ_k W_aux_k``: the one place the fold is computed."""
    with torch.no_grad():
        return effective_weight(weight, aux_weights, scales).detach().clone()


def _fold_extras(state_dict: dict[str, Tensor], family: ModelFamily | None) -> dict[str, Tensor]:
    """The family folds what its variant added (a ViT's linear-probe BatchNorm); a model of no
    registered family (``merge_model`` with a callable) has nothing to fold."""
    if family is None:
        try:
            family = detect_family(state_dict)
        except M2ptError:
            return state_dict
    return family.merge_extras(state_dict)


def merge_state_dict(state_dict: Mapping[str, Tensor], *, family: ModelFamily | None = None) -> dict[str, Tensor]:
    """Merge a checkpoint-layout state dict (see ``checkpoint``) without building a model."""
    aux: dict[str, dict[int, Tensor]] = {}
    scales: dict[str, dict[int, Tensor]] = {}
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        layer, _, k = key.rpartition(".")
        stem, _, kind = layer.rpartition(".")
        if kind == "aux_weight" and k.isdigit():
            aux.setdefault(stem, {})[int(k)] = value
        elif kind == "cross_modal_scale" and k.isdigit():
            scales.setdefault(stem, {})[int(k)] = value
        else:
            out[key] = value
    for stem, weights in aux.items():
        if stem not in scales or sorted(scales[stem]) != sorted(weights):
            raise M2ptError(f"{stem}: aux weights {sorted(weights)} without matching λ")
        order = sorted(weights)
        target = out[f"{stem}.weight"]
        for index in order:
            if weights[index].shape != target.shape:
                raise M2ptError(f"{stem}: target weight {tuple(target.shape)} "
                                f"vs aux #{index} weight {tuple(weights[index].shape)}")
        out[f"{stem}.weight"] = merge_weight(
            target, [weights[i] for i in order], [scales[stem][i] for i in order]
        )
    return _fold_extras(out, family)


def merged_state_dict(model: nn.Module, *, family: ModelFamily | None = None) -> dict[str, Tensor]:
    """The vanilla-layout state dict of a pathway model, each pathway weight folded."""
    folded = {
        f"{name}.weight": merge_weight(_original_weight(model, name), list(p.aux_weights), list(p.scales))
        for name, p in pathway_layers(model).items()
    }
    out: dict[str, Tensor] = {}
    for key, value in model.state_dict().items():
        layer, sep, rest = key.partition(".parametrizations.weight.")
        if not sep:
            out[key] = value.detach().clone()
        elif rest == "original":
            out[f"{layer}.weight"] = folded[f"{layer}.weight"]
    return _fold_extras(out, family)


def _original_weight(model: nn.Module, name: str) -> Tensor:
    parametrizations = model.get_submodule(name).parametrizations
    assert isinstance(parametrizations, nn.ModuleDict)
    return parametrizations["weight"].original  # type: ignore[return-value]


def merge_model(
    model: nn.Module, vanilla: ModelSpec | Callable[[], nn.Module], *, exportable: bool = False
) -> nn.Module:
    """A fresh vanilla model carrying ``model``'s merged weights.

    Args:
        model: the pathway model; left untouched (no ``deepcopy`` + ``remove_parametrizations``,
            which would corrupt it because parametrize's generated class is shared).
        vanilla: the target's :class:`ModelSpec`, or any callable returning a fresh model of
            the target's architecture (for a transformer of no registered family).
        exportable: with a spec, build the family's exporter-friendly variant (timm: no fused attention).
    """
    family = family_of(vanilla) if isinstance(vanilla, ModelSpec) else None
    vanilla = build_vanilla(vanilla, exportable=exportable) if isinstance(vanilla, ModelSpec) else vanilla()
    load_strict(vanilla, merged_state_dict(model, family=family), what="merged state dict")
    return vanilla.eval()


def merge_checkpoint(
    checkpoint: str | os.PathLike[str] | Checkpoint,
    output: str | os.PathLike[str] | None = None,
    *,
    model: Mapping[str, Any] | None = None,
    force: bool = False,
) -> tuple[Path, int, int]:
    """A pathway checkpoint → a vanilla ``.safetensors`` of its family (``m2pt-merge``).

    Returns the file written (default: ``<stem>_merged.safetensors`` beside the source), how
    many pathway layers were folded and how many tensors the merged file holds. ``model``
    takes ``load_checkpoint``'s keyword arguments.
    """
    from m2pt_deploy.model.checkpoint import NOTES_KEY, load_checkpoint, recorded_notes, save_checkpoint
    from m2pt_deploy.request import MergeRequest, ModelRequest

    src = checkpoint.path if isinstance(checkpoint, Checkpoint) else Path(checkpoint)
    request = MergeRequest(src, output, force, ModelRequest.of(model)).validate()
    out = request.destination
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(src, **request.model.load_kwargs())
    merged = merge_state_dict(ckpt.state_dict, family=family_of(ckpt.spec))
    load_strict(build_vanilla(ckpt.spec), merged, what="merged state dict")
    extra: dict[str, Any] = {"merged_from": {"sha256": ckpt.sha256, "kind": ckpt.kind,
                                             "pathway": ckpt.pathway.to_dict() if ckpt.pathway else None}}
    if recorded_notes(ckpt):  # the config will state what was only assumed: keep saying so
        extra[NOTES_KEY] = recorded_notes(ckpt)
    save_checkpoint(out, merged, ckpt.spec, extra={**ckpt.extra, **extra}, force=force)
    layers = sum(key.endswith(".aux_weight.0") for key in ckpt.state_dict)
    return out, layers, len(merged)
