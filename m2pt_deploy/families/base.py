"""What a target model family is: the contract every family (ViT, VideoMAE, Point-MAE, DeiT, yours) fulfils.

The rest of the pipeline never names a family: it reads a :class:`ModelSpec` (plain data, which
knows its family only by name), asks the registry for that family (``registry.family_of(spec)``)
and calls the methods below. A family recognises its checkpoints from their keys, infers its
spec from tensor shapes (and from the training ``args`` the reference scripts save), builds its
vanilla model, says where its pathway layers are, and makes example inputs and the metadata that
describes its input layout.

Nothing here imports torch when the module loads, and neither may a family module: the command
line reads every family's declared ``options`` to make its flags, before (and often without)
importing torch.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from m2pt_deploy.errors import M2ptError

if TYPE_CHECKING:
    from torch import Tensor, nn

__all__ = ["PIXEL_VALUES", "FamilyOption", "ModelFamily", "ModelSpec", "numbered_blocks"]

# Hugging Face's name for image and video inputs (``ViTForImageClassification``,
# ``VideoMAEForVideoClassification``): the default ONNX input name, so clients written for them
# feed an export unchanged. Families whose input is not pixels name theirs (``input_name``).
PIXEL_VALUES = "pixel_values"

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Enough to rebuild a model: its family, an architecture name with keyword arguments, and
    its input (one sample's shape, without the batch axis) with the normalisation it expects."""

    arch: str
    model_kwargs: dict[str, Any]
    input_size: tuple[int, ...]
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    family: str = "vit"

    @property
    def num_classes(self) -> int:
        return int(self.model_kwargs.get("num_classes", 1000))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelSpec:
        return cls(
            arch=d["arch"],
            model_kwargs=dict(d["model_kwargs"]),
            input_size=tuple(int(v) for v in d["input_size"]),
            mean=tuple(d["mean"]),
            std=tuple(d["std"]),
            family=str(d.get("family", "vit")),  # files written before families existed are ViTs
        )


@dataclasses.dataclass(frozen=True)
class FamilyOption:
    """A model setting the weights do not show (Point-MAE's grouping, a head count), given on the
    command line as ``--<name with dashes>`` and to the library as ``options={name: value}``."""

    name: str
    help: str
    default: int | None = None


def numbered_blocks(names: Iterable[str], block_path: str) -> list[str]:
    """``block_path.0``, ``block_path.1``, ...: the numbered children of ``block_path`` among
    ``names`` (module names or state-dict keys), in index order."""
    prefix = block_path + "."
    indices = {int(head) for n in names if n.startswith(prefix)
               and (head := n[len(prefix):].split(".", 1)[0]).isdigit()}
    return [f"{block_path}.{i}" for i in sorted(indices)]


class ModelFamily(ABC):
    """One kind of target transformer. Subclass it and decorate the class with
    ``@register_family(priority=...)`` (see :mod:`~m2pt_deploy.families.registry`)."""

    #: Registry name, recorded in every spec, checkpoint and ONNX file ("vit", "videomae", ...).
    name: ClassVar[str]
    #: One line for help texts and errors.
    title: ClassVar[str]
    #: Where the transformer blocks live in the model: the module holding them (numbered
    #: ``block_path.N`` unless ``pathway_blocks`` says otherwise), recorded in pathway checkpoints.
    block_path: ClassVar[str] = "blocks"
    #: The classifier module, re-initialised when training changes the class count.
    head: ClassVar[str] = "head"
    #: The linear layers of each block that get pathways by default (M2PT's four).
    pathway_layers: ClassVar[tuple[str, ...]] = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")
    #: Names of one sample's input axes, in order, e.g. ("channels", "height", "width").
    input_axes: ClassVar[tuple[str, ...]]
    #: What the input is, for metadata and serving: "image", "spectrogram", "video", "points".
    modality: ClassVar[str]
    #: Settings not visible in the weights, accepted by ``infer_spec`` as ``options``.
    options: ClassVar[tuple[FamilyOption, ...]] = ()
    #: Seeded inputs a verification runs by default: each is run by three models (unmerged, merged,
    #: ONNX Runtime), so a family with costly inputs keeps this low to keep verification near the
    #: export's own cost (more with ``m2pt-verify --batch-size`` or ``--inputs``).
    verify_inputs: ClassVar[int] = 4
    #: Inputs per batch when int8 / TensorRT-precision verification runs its held-out inputs: every
    #: activation of a batch is alive at once, in torch and in ONNX Runtime, so a family with long
    #: token sequences keeps this low (VideoMAE V2 ViT-B at 16: 12.3 GB peak for the int8 check).
    held_out_batch: ClassVar[int] = 16

    def pathway_blocks(self, names: Iterable[str]) -> list[str]:
        """The blocks whose linear layers get pathways, in depth order, as module-name prefixes
        found among ``names`` (a model's module names or a state dict's keys). The default is
        ``block_path.0``, ``block_path.1``, ...; a hierarchical model (stages of blocks) yields
        ``stages.0.blocks.0``, ``stages.0.blocks.1``, ``stages.1.blocks.0``, ... instead."""
        return numbered_blocks(names, self.block_path)

    def head_modules(self) -> tuple[str, ...]:
        """Every classifier module (a distilled model has two), re-initialised together when
        training changes the class count."""
        return (self.head,)

    @abstractmethod
    def recognizes(self, state_dict: Mapping[str, Tensor]) -> bool:
        """True when these vanilla-layout weights (pathway tensors removed) are this family's."""

    @abstractmethod
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
        """The spec the weights imply. The user's ``arch`` / ``input_size`` / ``options`` win over
        the training ``args``, which win over defaults; every fact taken from ``args`` or assumed
        is appended to ``notes``. Contradictions raise :class:`M2ptError` (one line)."""

    @abstractmethod
    def check_spec(self, spec: ModelSpec, state_dict: Mapping[str, Tensor]) -> None:
        """Refuse a declared spec (file metadata) the tensor shapes contradict, before building."""

    @abstractmethod
    def build(self, spec: ModelSpec, *, exportable: bool = False) -> nn.Module:
        """A fresh, randomly initialised vanilla model in eval mode, whose state-dict keys are the
        checkpoint's. ``exportable`` asks for a variant that ONNX exporters handle (same math)."""

    def override(self, spec: ModelSpec, state_dict: Mapping[str, Tensor], *, arch: str | None = None,
                 input_size: tuple[int, ...] | None = None, options: Mapping[str, Any] | None = None) -> ModelSpec:
        """A declared spec (our checkpoint's config) with the user's flags applied, checked against
        the weights. The default re-infers from the weights with the declared values as defaults."""
        if arch is not None and arch != spec.arch:
            raise M2ptError(f"--arch does not apply to a {self.title}")
        declared = {o.name: spec.model_kwargs.get(o.name) for o in self.options}
        given = {k: v for k, v in (options or {}).items() if v is not None}
        if input_size is None and not given:
            return spec
        return self.infer_spec(state_dict, input_size=input_size or spec.input_size,
                               options={**declared, **given})

    def adapt_to_weights(self, model: nn.Module, state_dict: Mapping[str, Tensor]) -> nn.Module:
        """Reshape a vanilla model to a variant its weights carry (e.g. a linear-probe head);
        the default keeps it as it is."""
        return model

    def merge_extras(self, state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Fold what a variant added (``adapt_to_weights``) back into the vanilla layout."""
        return dict(state_dict)

    def add_probe_head(self, model: nn.Module) -> None:
        """Turn the classifier into a linear-probe head (``m2pt-train --mode probe``)."""
        raise M2ptError(f"linear probing (--mode probe) is MAE's recipe for ViTs, not for a {self.title}")

    def vanilla_view(self, state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """The keys the vanilla model has, for shape inference; the default is every key."""
        return dict(state_dict)

    def with_input_size(self, spec: ModelSpec, input_size: tuple[int, ...]) -> ModelSpec:
        """``spec`` for another input size; families with a fixed input refuse."""
        raise M2ptError(f"a {self.title} takes no --input-size")

    def example_input(self, spec: ModelSpec, batch: int, *, seed: int = 0) -> Tensor:
        """Inputs for tracing and checks: seeded standard-normal values of the input's shape."""
        import torch

        gen = torch.Generator().manual_seed(seed)
        return torch.randn((batch, *spec.input_size), generator=gen)

    def describe(self, spec: ModelSpec) -> str:
        return f"{self.title} ({spec.arch}, input {'x'.join(map(str, spec.input_size))})"

    def input_name(self, spec: ModelSpec) -> str:
        """The exported graph's input name, recorded in its metadata; servers read it off the graph."""
        return PIXEL_VALUES

    def input_metadata(self, spec: ModelSpec) -> dict[str, Any]:
        """How the exported model's input is laid out, for the ONNX metadata and for servers."""
        return {
            "modality": self.modality,
            "layout": ["batch", *self.input_axes],
            "shape": list(spec.input_size),
            "mean": list(spec.mean),
            "std": list(spec.std),
        }

    def check_options(self, options: Mapping[str, Any] | None) -> dict[str, Any]:
        """The options with this family's defaults filled in; options it does not take are refused."""
        given = {k: v for k, v in (options or {}).items() if v is not None}
        known = {o.name: o for o in self.options}
        unknown = sorted(set(given) - set(known))
        if unknown:
            flags = ", ".join("--" + k.replace("_", "-") for k in unknown)
            raise M2ptError(f"{flags} do{'es' if len(unknown) == 1 else ''} not apply to a {self.title}")
        return {name: given.get(name, o.default) for name, o in known.items()}
