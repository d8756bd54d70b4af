"""Read and write checkpoints: ours, the M2PT reference code's, and plain (vanilla) models of
every registered family.

Every reader returns a :class:`Checkpoint` whose state dict is in one layout: the
family's vanilla keys, plus ``<layer>.aux_weight.<k>`` and ``<layer>.cross_modal_scale.<k>``
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
from m2pt_deploy.families import ModelFamily, ModelSpec, detect_family, family_of, get_family
from m2pt_deploy.fileio import atomic_output, sha256_file
from m2pt_deploy.filekind import file_kind
from m2pt_deploy.model.pathway import LambdaKind
from m2pt_deploy.model.torchfile import load_torch_file

__all__ = [
    "METADATA_KEY",
    "NOTES_KEY",
    "Checkpoint",
    "PathwayInfo",
    "load_checkpoint",
    "read_checkpoint_file",
    "read_state_dict",
    "recorded_notes",
    "save_checkpoint",
]

METADATA_KEY = "m2pt_deploy"
#: The config key of what was read from args or assumed when a file was written from a foreign one.
NOTES_KEY = "notes"
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
    # By content, not by name: a safetensors file saved as .pth is still read (file_kind looks at
    # the header length and the JSON that follows it).
    if p.suffix == ".safetensors" or file_kind(p).kind == "safetensors":
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


def _split_layer(name: str, blocks: list[str], family: ModelFamily) -> tuple[str, str]:
    """``(block path, layer within its block)`` of a pathway layer, by the family's blocks; a layer
    outside them is read as ``<path>.<N>.<layer>`` (files written before families named blocks)."""
    block = next((b for b in blocks if name.startswith(b + ".")), None)
    if block is not None:
        return family.block_path, name[len(block) + 1:]
    b = _BLOCK_LAYER.match(name)
    if b is None:
        raise M2ptError(f"pathway layer {name} is not inside a numbered block")
    return b["blocks"], b["layer"]


def _pathway_info(sd: Mapping[str, Tensor], aux: tuple[dict[str, Any], ...] | None,
                  family: ModelFamily) -> PathwayInfo | None:
    # Longest first, so that a block is never read as its parent stage.
    blocks = sorted(family.pathway_blocks(sd), key=len, reverse=True)
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
        block_path, layer = _split_layer(m["layer"], blocks, family)
        block_paths.add(block_path)
        layers[layer] = None
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


def _without_pathways(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {k: v for k, v in sd.items() if not _AUX_SUFFIX.match(k)}


def load_checkpoint(
    path: str | os.PathLike[str],
    *,
    arch: str | None = None,
    input_size: tuple[int, ...] | None = None,
    ema: bool = False,
    family: str | None = None,
    options: Mapping[str, Any] | None = None,
) -> Checkpoint:
    """Read any supported checkpoint; ``arch`` / ``input_size`` / ``options`` override what it
    says or implies.

    The model family is recognised from the keys (``family`` names it instead); ``options``
    are the family's settings the weights do not show (Point-MAE's grouping). ``ema`` takes
    the ``model_ema`` weights of a training checkpoint instead of ``model``. Everything the
    file declares (our config, the training ``args``) is checked against the tensor shapes
    before anything is built; what was taken from it or assumed is listed in ``Checkpoint.notes``.
    """
    p = Path(path)
    if family is not None:
        get_family(family)  # an unknown name is refused before the file is read
    sd, metadata, args = read_checkpoint_file(p, ema=ema)
    _check_finite(sd, p)
    notes: list[str] = ["EMA weights (model_ema)"] if ema else []
    try:
        if METADATA_KEY in metadata:
            # Ours: a .safetensors file whose metadata holds the JSON config.
            kind: CheckpointKind = "m2pt"
            config = _read_config(metadata[METADATA_KEY])
            spec = _declared_spec(config, sd, family, arch, input_size, options)
            aux = tuple(config["pathway"]["aux"]) if config.get("pathway") else None
            extra = {k: v for k, v in config.items() if k not in ("spec", "pathway")}
            # The config states every setting, but a file written from a foreign one (merged,
            # trained) took some of them from that file's args or assumptions: said again here.
            notes.extend(f"when this file was written: {n}" for n in _written_notes(config))
        else:
            if any(k.rpartition(".")[2] in _REFERENCE_NAMES for k in sd):
                # The M2PT reference code's checkpoint: one pathway per layer.
                sd = _canonicalise_reference(sd)
                kind = "reference"
            else:
                # A plain timm or MAE fine-tuned ViT (or an auxiliary model).
                kind = "timm"
            view = _without_pathways(sd)
            fam = get_family(family) if family is not None else detect_family(view)
            spec = fam.infer_spec(fam.vanilla_view(view), arch=arch, input_size=input_size, args=args,
                                  options=options, notes=notes)
            aux, extra, config = None, {}, {}
        pathway = _pathway_info(sd, aux, family_of(spec))
    except M2ptError as e:
        raise M2ptError(e.message, p) from e
    if kind == "m2pt" and config.get("pathway"):
        declared = PathwayInfo.from_dict(config["pathway"])
        if pathway is None or set(declared.layers) != set(pathway.layers):
            found = pathway.layers if pathway else ()
            raise M2ptError(f"metadata lists pathway layers {declared.layers}, tensors have {found}", p)
        pathway = declared
    return Checkpoint(p, sha256_file(p), kind, sd, spec, pathway, extra, tuple(notes))


def _written_notes(config: Mapping[str, Any]) -> list[str]:
    notes = config.get(NOTES_KEY)
    return [str(n) for n in notes] if isinstance(notes, list) else []


def recorded_notes(ckpt: Checkpoint) -> list[str]:
    """What a file written from ``ckpt`` (a merge, a training run) records under ``"notes"``: the
    notes of a foreign file's reading, or those our file itself carries from its own source."""
    return _written_notes(ckpt.extra) if ckpt.kind == "m2pt" else list(ckpt.notes)


def _read_config(text: str) -> dict[str, Any]:
    try:
        config = json.loads(text)
        ModelSpec.from_dict(config["spec"])
    except (ValueError, KeyError, TypeError) as e:
        raise M2ptError(f"the {METADATA_KEY} metadata is not a valid config ({type(e).__name__}: {e})") from e
    return config


def _declared_spec(config: Mapping[str, Any], sd: Mapping[str, Tensor], family: str | None, arch: str | None,
                   input_size: tuple[int, ...] | None, options: Mapping[str, Any] | None) -> ModelSpec:
    spec = ModelSpec.from_dict(config["spec"])
    if family is not None and family != spec.family:
        raise M2ptError(f"--family {family}: the checkpoint's config says it is a {spec.family} model")
    fam: ModelFamily = family_of(spec)
    view = fam.vanilla_view(_without_pathways(sd))
    fam.check_spec(spec, view)
    return fam.override(spec, view, arch=arch, input_size=input_size, options=options)


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
