"""Read and write checkpoints: ours, the M2PT reference code's, and plain timm / MAE ViTs.

Every reader returns a :class:`Checkpoint` whose state dict is in one layout: the
vanilla timm keys, plus ``<layer>.aux_weight.<k>`` and ``<layer>.cross_modal_scale.<k>``
for each pathway layer and auxiliary model ``k`` (see ``pathway.pathway_state_dict``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from m2pt_deploy import __version__
from m2pt_deploy.errors import M2ptError
from m2pt_deploy.fileio import atomic_output, sha256_file
from m2pt_deploy.pathway import LambdaKind
from m2pt_deploy.torchfile import load_torch_file
from m2pt_deploy.training_args import check_against_args, hints_from_args
from m2pt_deploy.vit import ModelSpec, arch_width, check_arch, check_spec, infer_spec

__all__ = [
    "METADATA_KEY",
    "Checkpoint",
    "PathwayInfo",
    "load_checkpoint",
    "read_checkpoint_file",
    "read_state_dict",
    "save_checkpoint",
]

METADATA_KEY = "m2pt_deploy"
# Where the reference writers put the weights (see shared M2PT_REFERENCE.md's table).
_WRAPPER_KEYS = ("model", "module", "state_dict", "base_model", "model_state_dict")
_EMA_KEY = "model_ema"
_PREFIXES = ("module.", "_orig_mod.", "backbone.", "encoder.", "MAE_encoder.")
_AUX_SUFFIX = re.compile(r"^(?P<layer>.+)\.(?P<kind>aux_weight|cross_modal_scale)\.(?P<k>\d+)$")
# The reference code's names for a single pathway: the main variant, then its
# point-cloud segmentation variant.
_REFERENCE_NAMES = {
    "aux_weight": "aux_weight",
    "cross_modal_scale": "cross_modal_scale",
    "pretrained_weight": "aux_weight",
    "pretrained_scale": "cross_modal_scale",
}
_BLOCK_LAYER = re.compile(r"^(?P<blocks>.+?)\.(?P<index>\d+)\.(?P<layer>.+)$")
CheckpointKind = Literal["m2pt", "reference", "timm"]


@dataclasses.dataclass(frozen=True)
class PathwayInfo:
    """Which layers carry pathways, and from which auxiliary models."""

    layers: tuple[str, ...]
    block_path: str
    lambda_kind: LambdaKind
    aux: tuple[dict[str, Any], ...]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PathwayInfo:
        return cls(
            layers=tuple(d["layers"]),
            block_path=d["block_path"],
            lambda_kind=d["lambda_kind"],
            aux=tuple(dict(a) for a in d["aux"]),
        )


@dataclasses.dataclass
class Checkpoint:
    path: Path
    sha256: str
    kind: CheckpointKind
    state_dict: dict[str, Tensor]
    spec: ModelSpec
    pathway: PathwayInfo | None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: What was read from the file's training ``args`` or assumed, for reports.
    notes: tuple[str, ...] = ()

    @property
    def has_probe_head(self) -> bool:
        """The reference linear-probe head: ``Sequential(BatchNorm1d(affine=False), Linear)``."""
        return "head.0.running_mean" in self.state_dict


def _load_safetensors(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="pt") as f:
            metadata = f.metadata() or {}
            return {k: f.get_tensor(k) for k in f.keys()}, metadata  # noqa: SIM118 (safe_open is no dict)
    except (SafetensorError, OSError, ValueError) as e:
        raise M2ptError(f"truncated or corrupt safetensors file ({e})", path) from e


def _unwrap(obj: Any, path: Path, *, ema: bool = False) -> dict[str, Tensor]:
    """The state dict inside a training checkpoint, with wrapper prefixes stripped."""
    if ema:
        if not isinstance(obj, Mapping) or not isinstance(obj.get(_EMA_KEY), Mapping):
            raise M2ptError(f"--ema: the checkpoint has no {_EMA_KEY!r} weights", path)
        obj = obj[_EMA_KEY]
    # Training checkpoints nest the weights under one of a few names, sometimes twice;
    # "model" wins over "model_ema" (the EMA weights are taken only when asked for).
    for _ in range(3):
        if not isinstance(obj, Mapping):
            break
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping) or not obj:
        raise M2ptError("not a checkpoint: no state dict inside", path)
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, Tensor)}
    if not tensors:
        raise M2ptError("not a checkpoint: no tensors in its state dict", path)
    return _strip_prefixes(tensors)


def _strip_prefixes(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    # DDP ("module."), torch.compile ("_orig_mod."), and the reference loaders' model
    # wrappers; a prefix is stripped only when every key has it, because "encoder." is
    # also a real submodule of Point-MAE (its mini-PointNet).
    stripped = True
    while stripped:
        stripped = False
        for prefix in _PREFIXES:
            if all(k.startswith(prefix) for k in tensors):
                tensors = {k.removeprefix(prefix): v for k, v in tensors.items()}
                stripped = True
    return tensors


def _training_args(obj: Any) -> dict[str, Any]:
    """The ``args`` the reference training scripts save beside the weights, as a plain dict."""
    args = obj.get("args") if isinstance(obj, Mapping) else None
    if isinstance(args, argparse.Namespace):
        args = vars(args)
    return dict(args) if isinstance(args, Mapping) else {}


def read_checkpoint_file(
    path: str | os.PathLike[str], *, ema: bool = False
) -> tuple[dict[str, Tensor], dict[str, str], dict[str, Any]]:
    """Tensors, safetensors metadata (empty for .pth) and training ``args`` (empty if none)."""
    p = Path(path)
    if not p.exists():
        raise M2ptError("no such file", p)
    if p.is_dir():
        raise M2ptError("is a directory, not a checkpoint file", p)
    if not os.access(p, os.R_OK):
        raise M2ptError("file is not readable (permission denied)", p)
    with open(p, "rb") as f:
        head = f.read(8)
    if len(head) < 8:
        raise M2ptError("truncated or empty file", p)
    if p.suffix == ".safetensors":
        if ema:
            raise M2ptError("--ema is for training checkpoints (.pth) that hold 'model_ema'", p)
        tensors, metadata = _load_safetensors(p)
        return _unwrap(tensors, p), metadata, {}
    obj = load_torch_file(p)
    return _unwrap(obj, p, ema=ema), {}, _training_args(obj)


def read_state_dict(path: str | os.PathLike[str]) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Tensors and safetensors metadata (empty for .pth) of a checkpoint file, unwrapped."""
    tensors, metadata, _ = read_checkpoint_file(path)
    return tensors, metadata


def _canonicalise_reference(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for key, value in sd.items():
        layer, _, name = key.rpartition(".")
        if name in _REFERENCE_NAMES:
            canonical = _REFERENCE_NAMES[name]
            out[f"{layer}.{canonical}.0"] = value.reshape(-1) if canonical == "cross_modal_scale" else value
        else:
            out[key] = value
    return out


def _pathway_info(sd: Mapping[str, Tensor], aux: tuple[dict[str, Any], ...] | None) -> PathwayInfo | None:
    layers: dict[str, None] = {}
    block_paths: set[str] = set()
    n_aux = 0
    kinds: set[str] = set()
    for key, value in sd.items():
        m = _AUX_SUFFIX.match(key)
        if not m:
            continue
        n_aux = max(n_aux, int(m["k"]) + 1)
        if m["kind"] == "cross_modal_scale":
            kinds.add("scalar" if value.numel() == 1 else "channel")
        b = _BLOCK_LAYER.match(m["layer"])
        if b is None:
            raise M2ptError(f"pathway layer {m['layer']} is not inside a numbered block")
        block_paths.add(b["blocks"])
        layers[b["layer"]] = None
    if not layers:
        return None
    if len(block_paths) != 1 or len(kinds) != 1:
        raise M2ptError(f"inconsistent pathway layout: block paths {sorted(block_paths)}, λ kinds {sorted(kinds)}")
    if aux is None:
        aux = tuple({"modality": "unknown", "sha256": None} for _ in range(n_aux))
    return PathwayInfo(tuple(layers), block_paths.pop(), kinds.pop(), aux)  # type: ignore[arg-type]


def _check_finite(sd: Mapping[str, Tensor], path: Path) -> None:
    for key, value in sd.items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            what = "NaN" if torch.isnan(value).any() else "Inf"
            raise M2ptError(f"{key} contains {what} values", path)


def _vanilla_view(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The keys a vanilla ViT has, for shape inference (probe head read as its Linear)."""
    out = {k: v for k, v in sd.items() if not _AUX_SUFFIX.match(k) and not k.startswith("head.")}
    if "head.1.weight" in sd:
        out["head.weight"] = sd["head.1.weight"]
    elif "head.weight" in sd:
        out["head.weight"] = sd["head.weight"]
    return out


def load_checkpoint(
    path: str | os.PathLike[str],
    *,
    arch: str | None = None,
    input_size: tuple[int, int, int] | None = None,
    ema: bool = False,
) -> Checkpoint:
    """Read any supported checkpoint; ``arch`` / ``input_size`` override what it says or implies.

    ``ema`` takes the ``model_ema`` weights of a training checkpoint instead of ``model``.
    Everything the file declares (our config, the training ``args``) is checked against
    the tensor shapes before anything is built; what was taken from it or assumed is
    listed in ``Checkpoint.notes``.
    """
    p = Path(path)
    if arch is not None:
        check_arch(arch)
    sd, metadata, args = read_checkpoint_file(p, ema=ema)
    _check_finite(sd, p)
    notes: list[str] = ["EMA weights (model_ema)"] if ema else []
    try:
        if METADATA_KEY in metadata:
            # Ours: a .safetensors file whose metadata holds the JSON config.
            kind: CheckpointKind = "m2pt"
            config = _read_config(metadata[METADATA_KEY])
            spec = _declared_spec(config, sd, arch, input_size)
            aux = tuple(config["pathway"]["aux"]) if config.get("pathway") else None
            extra = {k: v for k, v in config.items() if k not in ("spec", "pathway")}
        else:
            if any(k.rpartition(".")[2] in _REFERENCE_NAMES for k in sd):
                # The M2PT reference code's checkpoint: one pathway per layer.
                sd = _canonicalise_reference(sd)
                kind = "reference"
            else:
                # A plain timm or MAE fine-tuned ViT (or an auxiliary model).
                kind = "timm"
            spec = _inferred_spec(_vanilla_view(sd), args, arch, input_size, notes)
            aux, extra, config = None, {}, {}
        pathway = _pathway_info(sd, aux)
    except M2ptError as e:
        raise M2ptError(e.message, p) from e
    if kind == "m2pt" and config.get("pathway"):
        declared = PathwayInfo.from_dict(config["pathway"])
        if pathway is None or set(declared.layers) != set(pathway.layers):
            found = pathway.layers if pathway else ()
            raise M2ptError(f"metadata lists pathway layers {declared.layers}, tensors have {found}", p)
        pathway = declared
    return Checkpoint(p, sha256_file(p), kind, sd, spec, pathway, extra, tuple(notes))


def _read_config(text: str) -> dict[str, Any]:
    try:
        config = json.loads(text)
        ModelSpec.from_dict(config["spec"])
    except (ValueError, KeyError, TypeError) as e:
        raise M2ptError(f"the {METADATA_KEY} metadata is not a valid config ({type(e).__name__}: {e})") from e
    return config


def _declared_spec(config: Mapping[str, Any], sd: Mapping[str, Tensor], arch: str | None,
                   input_size: tuple[int, int, int] | None) -> ModelSpec:
    spec = ModelSpec.from_dict(config["spec"])
    view = _vanilla_view(sd)
    check_spec(spec, view)
    if arch is not None:
        width = view["patch_embed.proj.weight"].shape[0]
        if arch_width(arch) != width:
            raise M2ptError(f"--arch {arch} is {arch_width(arch)} wide, the checkpoint's weights are {width} wide")
        spec = dataclasses.replace(spec, arch=arch)
    if input_size is not None:
        spec = spec.with_input_size(input_size)
        check_spec(spec, view)
    return spec


def _inferred_spec(view: Mapping[str, Tensor], args: Mapping[str, Any], arch: str | None,
                   input_size: tuple[int, int, int] | None, notes: list[str]) -> ModelSpec:
    patch = view.get("patch_embed.proj.weight")
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
    spec = infer_spec(view, arch=arch, input_size=input_size, mean_std=mean_std, notes=notes)
    notes.extend(check_against_args(spec, args))
    return spec


def save_checkpoint(
    path: str | os.PathLike[str],
    state_dict: Mapping[str, Tensor],
    spec: ModelSpec,
    *,
    pathway: PathwayInfo | None = None,
    extra: Mapping[str, Any] | None = None,
    force: bool = False,
) -> Path:
    """Write one ``.safetensors`` file, atomically, with the JSON config in its metadata."""
    from safetensors.torch import save_file

    config = {
        "format_version": 1,
        "toolkit_version": __version__,
        "spec": spec.to_dict(),
        "pathway": pathway.to_dict() if pathway else None,
        **(extra or {}),
    }
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    metadata = {METADATA_KEY: json.dumps(config, sort_keys=True), "format": "pt"}
    out = Path(path)
    with atomic_output(out, force=force) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return out
