"""The ``pointmae`` family: Point-MAE's ``PointTransformer`` classifier (M2PT's Point target).

The model (:mod:`~m2pt_deploy.families.point_transformer`) takes raw points (B, N, 3) and groups
them itself. The state-dict keys are Point-MAE's (``encoder.first_conv.0.weight``,
``blocks.blocks.0.attn.qkv.weight``, ``cls_head_finetune.8.bias``, ...). Width, depth, MLP
ratio and class count are read off the shapes; the grouping and the head count are not
visible in the weights and are family options with Point-MAE's defaults.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from m2pt_deploy.errors import M2ptError
from m2pt_deploy.families.base import FamilyOption, ModelFamily, ModelSpec
from m2pt_deploy.families.heads import NUM_HEADS, resolve_heads
from m2pt_deploy.families.registry import register_family

if TYPE_CHECKING:
    from torch import Tensor, nn

__all__ = ["ARCH", "PointMAEFamily"]

ARCH = "point_mae"
_OPTIONS = (
    FamilyOption("npoints", "points per cloud (the input is npoints x 3)", 1024),
    FamilyOption("num_group", "groups (farthest-point centres) per cloud", 64),
    FamilyOption("group_size", "points per group, nearest neighbours of each centre", 32),
    NUM_HEADS,  # from the config, else 6 as in every Point-MAE config
)
# Every config in Point-MAE's cfgs/ uses 6 heads, at width 384 and 768.
_HEADS = 6
_CONVENTIONS = ("Point-MAE conventions assumed: LayerNorm and BatchNorm eps 1e-5, exact GELU, farthest point "
                "sampling from point 0, kNN by squared distance, not in the weights")
_BLOCKS = "blocks.blocks"


def _shape(sd: Mapping[str, Tensor], key: str) -> tuple[int, ...]:
    if key not in sd:
        sample = ", ".join(list(sd)[:3])
        raise M2ptError(f"not a Point-MAE classifier: no {key} (keys: {sample}, ...)")
    return tuple(sd[key].shape)


def _architecture(sd: Mapping[str, Tensor]) -> dict[str, Any]:
    """Width, depth, MLP ratio and classes from the shapes, each cross-checked once."""
    width = _shape(sd, "cls_token")[-1]
    checks = {
        "cls_pos": (_shape(sd, "cls_pos")[-1], width),
        "encoder.second_conv.3.weight (encoder_dims)": (_shape(sd, "encoder.second_conv.3.weight")[0], width),
        "pos_embed.2.weight": (_shape(sd, "pos_embed.2.weight")[0], width),
        "blocks.blocks.0.attn.qkv.weight": (_shape(sd, f"{_BLOCKS}.0.attn.qkv.weight"), (3 * width, width)),
        "cls_head_finetune.0.weight": (_shape(sd, "cls_head_finetune.0.weight")[1], 2 * width),
    }
    for key, (actual, expected) in checks.items():
        if actual != expected:
            raise M2ptError(f"{key} has {actual}, the cls token's width {width} implies {expected}")
    prefix = _BLOCKS + "."
    depth = 1 + max(int(k[len(prefix):].split(".", 1)[0]) for k in sd if k.startswith(prefix))
    hidden = _shape(sd, f"{_BLOCKS}.0.mlp.fc1.weight")[0]
    return {"embed_dim": width, "depth": depth, "mlp_ratio": hidden / width,
            "num_classes": _shape(sd, "cls_head_finetune.8.weight")[0]}


def _two(input_size: tuple[int, ...]) -> int:
    if len(input_size) != 2 or input_size[1] != 3:
        raise M2ptError(f"a Point-MAE's --input-size is N 3 (points x xyz), got {' '.join(map(str, input_size))}")
    return int(input_size[0])


def _check_grouping(settings: Mapping[str, int], width: int) -> None:
    for name, value in settings.items():
        if not isinstance(value, int) or value < 1:
            raise M2ptError(f"--{name.replace('_', '-')} must be a whole number of at least 1, got {value!r}")
    npoints, num_group, group_size = settings["npoints"], settings["num_group"], settings["group_size"]
    if npoints < num_group:
        raise M2ptError(f"--npoints {npoints} is fewer than --num-group {num_group}: "
                        f"farthest point sampling picks {num_group} distinct centres from the cloud")
    if group_size > npoints:
        raise M2ptError(f"--group-size {group_size} is more than --npoints {npoints}: "
                        f"each group takes its {group_size} nearest points from the cloud")
    if width % settings["num_heads"]:
        raise M2ptError(f"--num-heads {settings['num_heads']} does not divide the width {width} "
                        f"(pass the head count the model was trained with)")


# Its Conv1d mini-PointNet encoder is no other built-in family's.
@register_family(priority=0)
class PointMAEFamily(ModelFamily):
    """Point-MAE ``PointTransformer`` classifiers (ModelNet40, ScanObjectNN fine-tunes)."""

    name = "pointmae"
    title = "Point-MAE"
    block_path = _BLOCKS
    head = "cls_head_finetune"
    input_axes = ("points", "xyz")
    modality = "points"
    options = _OPTIONS

    def input_name(self, spec: ModelSpec) -> str:
        """``points``: raw xyz coordinates, not pixels (Hugging Face has no point-cloud convention)."""
        return "points"

    def recognizes(self, state_dict: Mapping[str, Tensor]) -> bool:
        conv = state_dict.get("encoder.first_conv.0.weight")
        return (conv is not None and conv.ndim == 3 and f"{_BLOCKS}.0.attn.qkv.weight" in state_dict
                and "cls_token" in state_dict)

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
        """Architecture from the shapes; grouping and heads from ``options`` / ``input_size``,
        then the training ``args`` (a Point-MAE config's names), then Point-MAE's defaults."""
        settings = self.check_options(options)
        flag = settings.pop("num_heads")
        given = {k for k, v in (options or {}).items() if v is not None and k != "num_heads"}
        notes = notes if notes is not None else []
        if input_size is not None:
            npoints = _two(input_size)
            if "npoints" in given and settings["npoints"] != npoints:
                raise M2ptError(f"--input-size says {npoints} points, --npoints says {settings['npoints']}")
            settings["npoints"] = npoints
            given.add("npoints")
        from_args = [k for k in settings if k not in given and isinstance((args or {}).get(k), int)]
        for key in from_args:
            settings[key] = int((args or {})[key])
        if from_args:
            notes.append(f"from the training args: {', '.join(f'{k} {settings[k]}' for k in from_args)}")
        assumed = [k for k in settings if k not in given and k not in from_args]
        if assumed:
            notes.append(f"assumed Point-MAE's grouping: {settings['npoints']} points, {settings['num_group']} "
                         f"groups of {settings['group_size']} (pass --npoints/--num-group/--group-size)")
        kwargs = _architecture(state_dict)
        width = kwargs["embed_dim"]
        args_heads = (args or {}).get("num_heads")
        settings["num_heads"] = resolve_heads(
            width, flag=flag, title=self.title, notes=notes,
            stated=(args_heads, "the training args' num_heads") if isinstance(args_heads, int) else None,
            convention=(_HEADS, "as in every Point-MAE config") if width % _HEADS == 0 else None)
        notes.append(_CONVENTIONS)
        kwargs.update(settings)
        _check_grouping(settings, width)
        if arch is not None and arch != ARCH:
            raise M2ptError(f"--arch {arch}: a Point-MAE model is {ARCH!r} (its shape comes from the weights)")
        return ModelSpec(ARCH, kwargs, (settings["npoints"], 3), mean=(), std=(), family=self.name)

    def check_spec(self, spec: ModelSpec, state_dict: Mapping[str, Tensor]) -> None:
        kw = spec.model_kwargs
        actual = _architecture(state_dict)
        for key, value in actual.items():
            if kw.get(key) is not None and kw[key] != value:
                raise M2ptError(f"the config says {key} {kw[key]!r}, the weights have {value!r}")
        missing = [o.name for o in self.options if kw.get(o.name) is None]
        if missing:
            raise M2ptError(f"the config's model_kwargs lack {', '.join(missing)} (a Point-MAE spec records them)")
        _check_grouping({o.name: kw[o.name] for o in self.options}, actual["embed_dim"])
        if _two(spec.input_size) != kw["npoints"]:
            raise M2ptError(f"the config's npoints {kw['npoints']} disagrees with its input size {spec.input_size}")

    def override(self, spec: ModelSpec, state_dict: Mapping[str, Tensor], *, arch: str | None = None,
                 input_size: tuple[int, ...] | None = None, options: Mapping[str, Any] | None = None) -> ModelSpec:
        """The declared grouping and heads with the user's values on top; an ``input_size``
        replaces the declared ``npoints`` (the base default would call them a contradiction)."""
        given = {k: v for k, v in self.check_options(options).items() if (options or {}).get(k) is not None}
        if arch is not None and arch != spec.arch:
            raise M2ptError(f"--arch {arch}: a Point-MAE model is {ARCH!r} (its shape comes from the weights)")
        if input_size is None and not given:
            return spec
        declared = {o.name: spec.model_kwargs.get(o.name) for o in self.options}
        if "num_heads" in given and isinstance(declared["num_heads"], int):
            resolve_heads(int(spec.model_kwargs["embed_dim"]), flag=given["num_heads"], convention=None,
                          stated=(declared["num_heads"], "the checkpoint's config"), title=self.title, notes=[])
        if input_size is not None and "npoints" not in given:
            declared.pop("npoints")
        return self.infer_spec(state_dict, input_size=input_size, options={**declared, **given})

    def build(self, spec: ModelSpec, *, exportable: bool = False) -> nn.Module:
        """``exportable`` changes nothing: the grouping is already written in exportable ops."""
        from m2pt_deploy.families.point_transformer import PointTransformer

        kw = spec.model_kwargs
        try:
            model = PointTransformer(embed_dim=kw["embed_dim"], depth=kw["depth"], num_heads=kw["num_heads"],
                                     mlp_ratio=kw["mlp_ratio"], num_classes=kw["num_classes"],
                                     num_group=kw["num_group"], group_size=kw["group_size"])
        except (KeyError, TypeError, ValueError) as e:
            raise M2ptError(f"cannot build a Point-MAE model from {kw}: {type(e).__name__}: {e}") from e
        return model.eval()

    def with_input_size(self, spec: ModelSpec, input_size: tuple[int, ...]) -> ModelSpec:
        npoints = _two(input_size)
        settings = {o.name: spec.model_kwargs[o.name] for o in self.options} | {"npoints": npoints}
        _check_grouping(settings, spec.model_kwargs["embed_dim"])
        return dataclasses.replace(spec, model_kwargs={**spec.model_kwargs, "npoints": npoints},
                                   input_size=(npoints, 3))

    def example_input(self, spec: ModelSpec, batch: int, *, seed: int = 0) -> Tensor:
        """Seeded uniform points in [-1, 1]³: continuous values, so FPS and KNN meet no ties
        (a standard-normal cloud would work too; a unit cube reads like normalised shapes)."""
        import torch

        gen = torch.Generator().manual_seed(seed)
        return torch.rand((batch, *spec.input_size), generator=gen) * 2 - 1

    def describe(self, spec: ModelSpec) -> str:
        kw = spec.model_kwargs
        return (f"Point-MAE ({kw['embed_dim']} wide, {kw['depth']} blocks, {kw['num_heads']} heads; "
                f"{kw['npoints']} points in {kw['num_group']} groups of {kw['group_size']})")

    def input_metadata(self, spec: ModelSpec) -> dict[str, Any]:
        """Raw xyz, not normalised by the model (mean/std are empty): Point-MAE's loaders centre
        and scale each cloud to the unit sphere before it reaches the model."""
        kw = spec.model_kwargs
        return {**super().input_metadata(spec), "points": kw["npoints"], "num_group": kw["num_group"],
                "group_size": kw["group_size"], "sampling": "farthest point sampling from point 0, kNN"}
