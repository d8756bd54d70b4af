"""Build torch models from a :class:`~m2pt_deploy.model.checkpoint.Checkpoint`, through its family."""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn

from m2pt_deploy.errors import M2ptError
from m2pt_deploy.families import ModelSpec, family_of
from m2pt_deploy.model.checkpoint import Checkpoint
from m2pt_deploy.model.pathway import add_pathways, pathway_layers

__all__ = ["build_unmerged", "build_vanilla", "load_strict"]

def build_vanilla(spec: ModelSpec, *, exportable: bool = False) -> nn.Module:
    """The family's vanilla model for ``spec``, randomly initialised, in eval mode."""
    return family_of(spec).build(spec, exportable=exportable)


def load_strict(model: nn.Module, state_dict: Mapping[str, Tensor], *, what: str) -> None:
    """``load_state_dict(strict=True)`` with a one-line message naming the first problem."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    if missing or unexpected:
        raise M2ptError(f"{what} does not fit the model: missing {missing[:3]}, unexpected {unexpected[:3]}")
    for k, v in state_dict.items():
        if own[k].shape != v.shape:
            raise M2ptError(f"{what}: {k} has shape {tuple(v.shape)}, the model expects {tuple(own[k].shape)}")
    model.load_state_dict(state_dict, strict=True)


_Split = tuple[dict[str, Tensor], list[dict[str, Tensor]], dict[str, list[Tensor]]]


def _split(sd: Mapping[str, Tensor], n_aux: int) -> _Split:
    base: dict[str, Tensor] = {}
    aux: list[dict[str, Tensor]] = [{} for _ in range(n_aux)]
    scales: dict[str, list[Tensor]] = {}
    for key, value in sd.items():
        layer, _, k = key.rpartition(".")
        stem, _, kind = layer.rpartition(".")
        if kind == "aux_weight" and k.isdigit():
            aux[int(k)][f"{stem}.weight"] = value
        elif kind == "cross_modal_scale" and k.isdigit():
            scales.setdefault(stem, [None] * n_aux)[int(k)] = value  # type: ignore[list-item]
        else:
            base[key] = value
    return base, aux, scales


def build_unmerged(ckpt: Checkpoint, *, train_aux: bool = False) -> nn.Module:
    """The model exactly as trained: the target with its pathways (and any variant its weights
    carry, such as a linear-probe head)."""
    model = family_of(ckpt.spec).adapt_to_weights(build_vanilla(ckpt.spec), ckpt.state_dict)
    if ckpt.pathway is None:
        load_strict(model, ckpt.state_dict, what=str(ckpt.path))
        return model.eval()
    info = ckpt.pathway
    base, aux, scales = _split(ckpt.state_dict, len(info.aux))
    load_strict(model, base, what=str(ckpt.path))
    family = family_of(ckpt.spec)
    # The family says where its blocks are; the aux weights are stored under the target's names.
    blocks = (family.pathway_blocks(n for n, _ in model.named_modules())
              if info.block_path == family.block_path else None)
    try:
        add_pathways(model, aux, layers=info.layers, block_path=info.block_path, blocks=blocks,
                     lambda_kind=info.lambda_kind, train_aux=train_aux)
    except M2ptError as e:
        raise M2ptError(e.message, ckpt.path) from e
    for name, pathway in pathway_layers(model).items():
        for param, value in zip(pathway.scales, scales[name], strict=True):
            param.data.copy_(value.reshape(param.shape))
    return model.eval()
