"""Cross-Modal Re-parameterization: add multimodal pathways to a transformer.

Each chosen ``nn.Linear`` of each block keeps its class and its ``weight`` attribute;
``torch.nn.utils.parametrize`` makes ``weight`` the effective weight, so code that reads
``.weight`` directly (VideoMAE's attention does) sees the pathway as ``F.linear`` does.

# pathway forward: y = x (W + Σ_k λ_k W_aux_k)^T + b
#   W        the target layer's own weight (trained)
#   W_aux_k  the same layer of auxiliary model k (frozen unless train_aux=True)
#   λ_k      learnable, initialised to 0: shape [1] (scalar, as in the paper) or
#            [out_features] (one per output channel)
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from m2pt_deploy.errors import M2ptError
from m2pt_deploy.model.pathway_options import DEFAULT_LAYERS, LambdaKind

__all__ = [
    "DEFAULT_LAYERS",
    "CrossModalPathway",
    "LambdaKind",
    "add_pathways",
    "effective_weight",
    "is_pathway",
    "pathway_layers",
    "pathway_parameters",
]


AuxSource = nn.Module | Mapping[str, Tensor]


def effective_weight(weight: Tensor, aux_weights: Sequence[Tensor], scales: Sequence[Tensor]) -> Tensor:
    """``W + Σ_k λ_k W_aux_k``, summed left to right.

    The forward pass and every merge call this one function, so a merged weight is
    the very tensor the unmerged forward multiplies with: bit-identical, not close.
    """
    out = weight
    for aux, scale in zip(aux_weights, scales, strict=True):
        out = out + scale.reshape(-1, *([1] * (weight.dim() - 1))) * aux
    return out


class CrossModalPathway(nn.Module):
    """A parametrization of ``Linear.weight`` that adds one or several auxiliary weights."""

    def __init__(
        self,
        aux_weights: Sequence[Tensor],
        *,
        lambda_kind: LambdaKind = "scalar",
        train_aux: bool = False,
    ) -> None:
        super().__init__()
        if not aux_weights:
            raise ValueError("a pathway needs at least one auxiliary weight")
        if lambda_kind not in ("scalar", "channel"):
            raise M2ptError(f"lambda kind must be 'scalar' or 'channel', got {lambda_kind!r}")
        out_features = aux_weights[0].shape[0]
        shape = (1,) if lambda_kind == "scalar" else (out_features,)
        self.lambda_kind: LambdaKind = lambda_kind
        self.aux_weights = nn.ParameterList(
            nn.Parameter(w.detach().clone(), requires_grad=train_aux) for w in aux_weights
        )
        self.scales = nn.ParameterList(nn.Parameter(torch.zeros(shape)) for _ in aux_weights)

    def forward(self, weight: Tensor) -> Tensor:
        return effective_weight(weight, list(self.aux_weights), list(self.scales))


def _aux_state_dict(aux: AuxSource) -> Mapping[str, Tensor]:
    return aux.state_dict() if isinstance(aux, nn.Module) else aux


def _numbered(keys: Iterator[str] | Sequence[str], block_path: str) -> list[str]:
    """``block_path.0`` ... ``block_path.{depth-1}``: a flat stack of numbered blocks."""
    prefix = block_path + "."
    indices = {
        int(rest.split(".", 1)[0])
        for k in keys
        if k.startswith(prefix) and (rest := k[len(prefix):]).split(".", 1)[0].isdigit()
    }
    return [f"{block_path}.{i}" for i in range(max(indices) + 1)] if indices else []


def _target_linear(model: nn.Module, name: str) -> nn.Linear:
    try:
        module = model.get_submodule(name)
    except AttributeError as e:
        raise M2ptError(f"target has no layer {name}") from e
    if not isinstance(module, nn.Linear):
        raise M2ptError(f"{name} is a {type(module).__name__}, not an nn.Linear")
    if is_pathway(module):
        raise M2ptError(f"{name} already has a pathway")
    return module


def _aux_weight(aux_sd: Mapping[str, Tensor], key: str, k: int, layer: nn.Linear) -> Tensor:
    if key not in aux_sd:
        raise M2ptError(f"aux #{k} has no weight {key}")
    weight = aux_sd[key]
    if tuple(weight.shape) != tuple(layer.weight.shape):
        name = key.removesuffix(".weight")
        raise M2ptError(
            f"{name}: target weight {tuple(layer.weight.shape)} vs aux #{k} weight {tuple(weight.shape)}"
        )
    return weight.to(dtype=layer.weight.dtype, device=layer.weight.device)


def add_pathways(
    model: nn.Module,
    aux: AuxSource | Sequence[AuxSource],
    *,
    layers: Sequence[str] = DEFAULT_LAYERS,
    block_path: str = "blocks",
    aux_block_path: str | None = None,
    blocks: Sequence[str] | None = None,
    aux_blocks: Sequence[str] | None = None,
    lambda_kind: LambdaKind = "scalar",
    train_aux: bool = False,
) -> nn.Module:
    """Add a pathway from every auxiliary model to every chosen layer of every block, in place.

    Args:
        model: the target transformer.
        aux: one auxiliary model or state dict, or several (one λ per aux and layer).
        layers: linear layers inside each block, relative to the block.
        block_path: where the blocks live in ``model`` (``blocks``, ``blocks.blocks``, ...).
        aux_block_path: where they live in the aux state dicts; defaults to ``block_path``.
        blocks: the blocks themselves, in depth order, as module names (a family's
            ``pathway_blocks``: a hierarchical model's are not one numbered stack); default
            ``block_path.0``, ``block_path.1``, ...
        aux_blocks: the same blocks' names in the aux state dicts; default ``blocks`` when given,
            else the numbered children of ``aux_block_path``.
        lambda_kind: ``scalar`` (one λ per layer, the paper's) or ``channel`` (one per output).
        train_aux: leave the auxiliary weights trainable (the reference implementation does).

    Returns:
        ``model``, whose chosen layers are still ``nn.Linear``.
    """
    auxes = [aux] if isinstance(aux, (nn.Module, Mapping)) else list(aux)
    if not auxes:
        raise M2ptError("no auxiliary model given")
    aux_sds = [_aux_state_dict(a) for a in auxes]
    target_blocks = list(blocks) if blocks is not None else _numbered([n for n, _ in model.named_modules()],
                                                                      block_path)
    if not target_blocks:
        raise M2ptError(f"target has no blocks under {block_path!r}")
    depth = len(target_blocks)
    per_aux = []
    for k, sd in enumerate(aux_sds):
        names = list(aux_blocks) if aux_blocks is not None else (
            target_blocks if blocks is not None and aux_block_path is None
            else _numbered(list(sd.keys()), aux_block_path or block_path))
        if len(names) != depth:
            raise M2ptError(f"depth mismatch: target has {depth} blocks, aux #{k} has {len(names)}")
        per_aux.append(names)

    for i, block in enumerate(target_blocks):
        for layer_name in layers:
            linear = _target_linear(model, f"{block}.{layer_name}")
            weights = [_aux_weight(sd, f"{per_aux[k][i]}.{layer_name}.weight", k, linear)
                       for k, sd in enumerate(aux_sds)]
            pathway = CrossModalPathway(weights, lambda_kind=lambda_kind, train_aux=train_aux)
            parametrize.register_parametrization(linear, "weight", pathway.to(linear.weight.device))
    return model


def _pathway_of(module: nn.Module) -> CrossModalPathway | None:
    if not parametrize.is_parametrized(module, "weight"):
        return None
    chain = module.parametrizations["weight"]  # type: ignore[index]
    return next((p for p in chain if isinstance(p, CrossModalPathway)), None)


def is_pathway(module: nn.Module) -> bool:
    """True for a module whose ``weight`` carries a :class:`CrossModalPathway`, or that contains one."""
    return any(_pathway_of(m) is not None for m in module.modules())


def pathway_layers(model: nn.Module) -> dict[str, CrossModalPathway]:
    """``{layer name: its pathway}`` in module order."""
    return {name: p for name, m in model.named_modules() if (p := _pathway_of(m)) is not None}


def pathway_parameters(model: nn.Module) -> Iterator[nn.Parameter]:
    """The λ parameters, e.g. for their own learning rate and no weight decay."""
    for pathway in pathway_layers(model).values():
        yield from pathway.scales


def pathway_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The model's state dict in the checkpoint layout, free of parametrize's internals.

    ``<layer>.weight`` is the target's own weight; each aux ``k`` adds
    ``<layer>.aux_weight.<k>`` and ``<layer>.cross_modal_scale.<k>`` (the reference
    implementation's names, with an index for several modalities).
    """
    out: dict[str, Tensor] = {}
    for key, value in model.state_dict().items():
        layer, sep, rest = key.partition(".parametrizations.weight.")
        if not sep:
            out[key] = value
        elif rest == "original":
            out[f"{layer}.weight"] = value
        else:
            _, kind, k = rest.split(".")
            name = "aux_weight" if kind == "aux_weights" else "cross_modal_scale"
            out[f"{layer}.{name}.{k}"] = value
    return out
