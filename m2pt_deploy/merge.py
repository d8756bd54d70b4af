"""Fold pathways away: a pathway ViT becomes a plain timm ViT at vanilla cost.

Both the model-level merge and the state-dict-level merge call :func:`merge_weight`,
which is the forward pass's own arithmetic, so merged outputs are bit-identical to the
unmerged model's in fp32 (checked with ``torch.equal``, not ``allclose``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor, nn

from m2pt_deploy.build import PROBE_BN_EPS, build_vanilla, load_strict
from m2pt_deploy.errors import M2ptError
from m2pt_deploy.pathway import effective_weight, pathway_layers
from m2pt_deploy.vit import ModelSpec

__all__ = ["fold_probe_head", "merge_model", "merge_state_dict", "merge_weight", "merged_state_dict"]


def merge_weight(weight: Tensor, aux_weights: Sequence[Tensor], scales: Sequence[Tensor]) -> Tensor:
    """``W + Σ_k λ_k W_aux_k``: the one place the fold is computed."""
    with torch.no_grad():
        return effective_weight(weight, aux_weights, scales).detach().clone()


def fold_probe_head(
    state_dict: Mapping[str, Tensor], *, eps: float = PROBE_BN_EPS
) -> dict[str, Tensor]:
    """``head = Sequential(BatchNorm1d(affine=False), Linear)`` → one ``Linear``.

    In eval mode the BatchNorm is ``(x - μ) / σ`` with ``σ = sqrt(var + eps)``, so
    ``W (x - μ)/σ + b = (W / σ) x + (b - W μ / σ)``. This changes rounding, so unlike the
    pathway fold it is equal within float tolerance, not bit for bit.
    """
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


def merge_state_dict(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
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
    return fold_probe_head(out)


def merged_state_dict(model: nn.Module) -> dict[str, Tensor]:
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
    return fold_probe_head(out)


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
            the target's architecture (for non-timm transformers).
        exportable: with a spec, build timm's exporter-friendly variant (no fused attention).
    """
    vanilla = build_vanilla(vanilla, exportable=exportable) if isinstance(vanilla, ModelSpec) else vanilla()
    load_strict(vanilla, merged_state_dict(model), what="merged state dict")
    return vanilla.eval()
