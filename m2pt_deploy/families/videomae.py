"""The ``videomae`` family: VideoMAE V2's fine-tuning ViT, M2PT's video (Kinetics-400) target.

The model keeps VideoMAE V2's state-dict keys (``patch_embed.proj`` Conv3d, ``blocks.N.attn.qkv``
without bias plus ``q_bias`` / ``v_bias``, ``fc_norm``, ``head``), so reference checkpoints load
strictly and a merged model is the vanilla one. Two facts are not in the weights: the head count
(read from ``args.model`` or the standard width table) and the input's frames × height × width,
which fix the size of the sinusoidal position table (a non-persistent buffer, never saved).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from m2pt_deploy.errors import M2ptError
from m2pt_deploy.families.base import IMAGENET_MEAN, IMAGENET_STD, ModelFamily, ModelSpec
from m2pt_deploy.families.heads import NUM_HEADS, Stated, by_width, resolve_heads
from m2pt_deploy.families.registry import register_family

if TYPE_CHECKING:
    from torch import Tensor, nn

__all__ = ["DEFAULT_INPUT", "VideoMAEFamily"]

#: VideoMAE V2's fine-tuning input: 3 channels, 16 frames, 224 × 224 (C, T, H, W).
DEFAULT_INPUT = (3, 16, 224, 224)
# VideoMAE V2's registered models (modeling_finetune.py): width and heads of each size.
_SIZES = {"small": (384, 6), "base": (768, 12), "large": (1024, 16), "huge": (1280, 16), "giant": (1408, 16)}
_SIZE_BY_WIDTH = {width: size for size, (width, _) in _SIZES.items()}
_CONVENTION = {width: (heads, f"VideoMAE V2-{size}") for size, (width, heads) in _SIZES.items()}
# "videomae_v2_base" (ours) or VideoMAE V2's own "vit_base_patch16_224".
_ARCH_NAME = re.compile(r"^(?:videomae_v2_(?P<ours>[a-z]+)|vit_(?P<theirs>[a-z]+)_patch(?P<patch>\d+)_\d+)$")
_CHECKED = ("embed_dim", "depth", "in_chans", "patch_size", "tubelet_size", "num_classes", "mlp_ratio",
            "qkv_bias", "init_values", "use_mean_pooling")


@dataclasses.dataclass(frozen=True)
class _Shapes:
    """What the weights show."""

    width: int
    chans: int
    tubelet: int
    patch: int
    depth: int
    mlp_ratio: float
    num_classes: int
    qkv_bias: bool
    layer_scale: bool
    mean_pooling: bool


def _shapes(state_dict: Mapping[str, Tensor]) -> _Shapes:
    weight = state_dict.get("patch_embed.proj.weight")
    if weight is None or weight.ndim != 5:
        sample = ", ".join(list(state_dict)[:3])
        raise M2ptError(f"not a VideoMAE V2 checkpoint: no 5-D patch_embed.proj.weight (keys: {sample}, ...)")
    if "pos_embed" in state_dict:
        raise M2ptError("a learned pos_embed (VideoMAE's --use_learnable_pos_emb) is not supported: "
                        "only the fixed sinusoidal table of the fine-tuning scripts")
    width, chans, tubelet, patch, patch_w = (int(d) for d in weight.shape)
    if patch != patch_w:
        raise M2ptError(f"non-square patches {patch}x{patch_w} are not supported")
    blocks = {int(k.split(".")[1]) for k in state_dict if k.startswith("blocks.") and k.split(".")[1].isdigit()}
    if not blocks:
        raise M2ptError("not a VideoMAE V2 checkpoint: no blocks.N weights")
    head = state_dict.get("head.weight")
    return _Shapes(
        width=width, chans=chans, tubelet=tubelet, patch=patch, depth=max(blocks) + 1,
        mlp_ratio=state_dict["blocks.0.mlp.fc1.weight"].shape[0] / width,
        num_classes=int(head.shape[0]) if head is not None else 0,
        qkv_bias="blocks.0.attn.q_bias" in state_dict,
        layer_scale="blocks.0.gamma_1" in state_dict,
        mean_pooling="fc_norm.weight" in state_dict,
    )


def _named_size(name: str, *, what: str, width: int, patch: int) -> tuple[str, int]:
    """``(size, heads)`` of an architecture name, checked against the weights."""
    m = _ARCH_NAME.match(name)
    size = (m["ours"] or m["theirs"]) if m else None
    if size not in _SIZES:
        raise M2ptError(f"{what} {name!r} is not a VideoMAE V2 architecture "
                        f"(videomae_v2_<size> or vit_<size>_patch16_224, size one of {', '.join(_SIZES)})")
    named_width, heads = _SIZES[size]
    if named_width != width:
        raise M2ptError(f"{what} {name!r} is {named_width} wide, the weights are {width} wide")
    if m is not None and m["patch"] is not None and int(m["patch"]) != patch:
        raise M2ptError(f"{what} {name!r} has patch {m['patch']}, the weights' Conv3d has patch {patch}")
    return size, heads


def _heads(shapes: _Shapes, *, arch: str | None, args: Mapping[str, Any], option: int | None,
           stated: Stated | None, notes: list[str]) -> tuple[str, int]:
    """``(arch, num_heads)``: --num-heads, which may not contradict what the config (``stated``),
    --arch or args.model say; then those; then the width table or 64-wide heads (noted)."""
    width = shapes.width
    arch_name = f"videomae_v2_{_SIZE_BY_WIDTH[width]}" if width in _SIZE_BY_WIDTH else f"videomae_v2_w{width}"
    if arch is not None:
        size, heads = _named_size(arch, what="--arch", width=width, patch=shapes.patch)
        arch_name = f"videomae_v2_{size}"
        if stated is not None and stated[0] != heads:
            raise M2ptError(f"--arch {arch!r} has {heads} heads, {stated[1]} says {stated[0]}")
        stated = (heads, f"--arch {arch!r}")
    elif stated is None and isinstance(args.get("model"), str):
        model = args["model"]
        m = _ARCH_NAME.match(model)
        if m is not None and (m["ours"] or m["theirs"]) in _SIZES:
            size, heads = _named_size(model, what="args.model", width=width, patch=shapes.patch)
            notes.append(f"{heads} attention heads from args.model {model!r}")
            stated = (heads, f"args.model {model!r}")
        else:
            notes.append(f"args.model {model!r} is not a VideoMAE V2 architecture: heads from the width")
    heads = resolve_heads(width, flag=option, stated=stated, convention=by_width(width, _CONVENTION),
                          title="VideoMAE V2", notes=notes)
    return arch_name, heads


def _four(input_size: Sequence[int]) -> tuple[int, int, int, int]:
    if len(input_size) != 4:
        raise M2ptError(f"a VideoMAE V2's --input-size is C T H W (4 numbers), got {len(input_size)}: "
                        f"{' '.join(map(str, input_size))}")
    c, t, h, w = (int(v) for v in input_size)
    return c, t, h, w


def _input(shapes: _Shapes, input_size: tuple[int, ...] | None, args: Mapping[str, Any],
           notes: list[str]) -> tuple[int, int, int, int]:
    """``(C, T, H, W)``: the user's --input-size, then args.num_frames / args.input_size, then defaults."""
    tubelet = args.get("tubelet_size")
    if isinstance(tubelet, int) and tubelet != shapes.tubelet:
        raise M2ptError(f"args.tubelet_size is {tubelet}, the weights' Conv3d has tubelet {shapes.tubelet}")
    if input_size is not None:
        c, t, h, w = _four(input_size)
        source = f"--input-size {c} {t} {h} {w}"
    else:
        frames, side = _int_arg(args, "num_frames"), _int_arg(args, "input_size")
        t = frames * (_int_arg(args, "num_segments") or 1) if frames else DEFAULT_INPUT[1]
        h = w = side or DEFAULT_INPUT[2]
        c = shapes.chans
        if frames or side:
            source = "args.num_frames / args.input_size"
            notes.append(f"input {t} x {h} x {w} (frames x height x width) from {source}")
        else:
            source = "the default input"
            notes.append(f"assumed VideoMAE V2's default input {c} x {t} x {h} x {w} (C x T x H x W): the "
                         "position table is not in the weights; pass --input-size C T H W to override")
    if c != shapes.chans:
        raise M2ptError(f"--input-size says {c} channels, the checkpoint has {shapes.chans}")
    if min(t, h, w) < 1:
        raise M2ptError(f"{source}: every size must be positive")
    if t % shapes.tubelet:
        raise M2ptError(f"{source}: {t} frames do not divide into tubelets of {shapes.tubelet} (the weights' Conv3d)")
    if h % shapes.patch or w % shapes.patch:
        raise M2ptError(f"{source}: {h} x {w} does not divide into {shapes.patch} x {shapes.patch} patches "
                        "(the weights' Conv3d)")
    return c, t, h, w


def _int_arg(args: Mapping[str, Any], name: str) -> int | None:
    value = args.get(name)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _mean_std(chans: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    # VideoMAE V2's datasets normalise with ImageNet statistics (its timm _cfg's 0.5s are unused).
    return (IMAGENET_MEAN, IMAGENET_STD) if chans == 3 else ((0.5,) * chans, (0.5,) * chans)


def _convention_notes(chans: int) -> list[str]:
    """What every VideoMAE V2 spec read from a foreign file assumes; no weight shows it."""
    stats = "ImageNet mean/std (VideoMAE V2's datasets)" if chans == 3 else f"mean 0.5, std 0.5 ({chans} channels)"
    return [f"{stats} assumed for the input normalisation, not in the weights",
            "VideoMAE V2 conventions assumed: LayerNorm eps 1e-6, exact GELU, a fixed sinusoidal position table, "
            "not in the weights"]


# Its 5-D (Conv3d) patch embedding is no other built-in family's.
@register_family(priority=0)
class VideoMAEFamily(ModelFamily):
    """VideoMAE V2 fine-tuned video classifiers (``Video/`` of the M2PT reference)."""

    name = "videomae"
    title = "VideoMAE V2"
    input_axes = ("channels", "frames", "height", "width")
    modality = "video"
    options = (NUM_HEADS,)  # from args.model or the config, else the standard width table or 64-wide heads
    verify_inputs = 1  # a 16-frame clip is 1,568 tokens: eight images' worth, ten times their compute
    held_out_batch = 2  # one clip's 12 attention maps per block are 118 MB

    def recognizes(self, state_dict: Mapping[str, Tensor]) -> bool:
        weight = state_dict.get("patch_embed.proj.weight")
        return weight is not None and weight.ndim == 5

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
        """Shapes give width, channels, tubelet, patch, depth, MLP ratio and classes; the head count
        and T × H × W come from the user, then ``args``, then VideoMAE V2's defaults (noted), and so
        does every other convention the weights do not show."""
        return self._infer(state_dict, arch=arch, input_size=input_size, args=args, options=options, notes=notes)

    def _infer(self, state_dict: Mapping[str, Tensor], *, arch: str | None, input_size: tuple[int, ...] | None,
               args: Mapping[str, Any] | None, options: Mapping[str, Any] | None, notes: list[str] | None,
               stated: Stated | None = None) -> ModelSpec:
        """``infer_spec``, given the head count a config states (``stated``), which --num-heads may
        not contradict."""
        from m2pt_deploy.families.training_args import check_against_args

        opts = self.check_options(options)
        notes = notes if notes is not None else []
        args = args or {}
        shapes = _shapes(state_dict)
        arch_name, heads = _heads(shapes, arch=arch, args=args, option=opts["num_heads"], stated=stated,
                                  notes=notes)
        c, t, h, w = _input(shapes, input_size, args, notes)
        mean, std = _mean_std(c)
        notes.extend(_convention_notes(c))
        kwargs: dict[str, Any] = {
            "embed_dim": shapes.width, "depth": shapes.depth, "num_heads": heads, "mlp_ratio": shapes.mlp_ratio,
            "patch_size": shapes.patch, "tubelet_size": shapes.tubelet, "num_frames": t, "img_size": (h, w),
            "in_chans": c, "num_classes": shapes.num_classes, "qkv_bias": shapes.qkv_bias,
            # Only whether gammas exist matters once weights load; 0.1 is VideoMAE's layer-scale init.
            "init_values": 0.1 if shapes.layer_scale else 0.0,
            "use_mean_pooling": shapes.mean_pooling,
        }
        spec = ModelSpec(arch_name, kwargs, (c, t, h, w), mean=mean, std=std, family=self.name)
        pooling = args.get("use_mean_pooling")
        if isinstance(pooling, bool) and pooling != shapes.mean_pooling:
            raise M2ptError(f"args.use_mean_pooling is {pooling}, but the weights have "
                            f"{'fc_norm' if shapes.mean_pooling else 'no fc_norm'}")
        notes.extend(check_against_args(spec, args))
        return spec

    def check_spec(self, spec: ModelSpec, state_dict: Mapping[str, Tensor]) -> None:
        """Refuse a declared spec the shapes contradict, before building anything."""
        if len(spec.input_size) != 4:
            raise M2ptError(f"the config's input size {spec.input_size} is not C T H W")
        heads = spec.model_kwargs.get("num_heads")
        inferred = self.infer_spec(state_dict, input_size=spec.input_size,
                                   options={"num_heads": heads} if isinstance(heads, int) else None)
        for key in _CHECKED:
            declared, actual = spec.model_kwargs.get(key), inferred.model_kwargs[key]
            if key == "init_values" and declared is not None:
                declared, actual = declared > 0, actual > 0  # layer scale present or not
            if declared is not None and declared != actual:
                raise M2ptError(f"the config says {key} {declared!r}, the weights have {actual!r}")
        kw = spec.model_kwargs
        declared_input = (kw.get("in_chans"), kw.get("num_frames"), *tuple(kw.get("img_size") or (None, None)))
        if declared_input != tuple(spec.input_size):
            raise M2ptError(f"the config's model input {declared_input} disagrees with its input size "
                            f"{tuple(spec.input_size)}")

    def override(self, spec: ModelSpec, state_dict: Mapping[str, Tensor], *, arch: str | None = None,
                 input_size: tuple[int, ...] | None = None, options: Mapping[str, Any] | None = None) -> ModelSpec:
        """A declared spec with --arch / --input-size / --num-heads applied; the declared head
        count stays unless --arch or --num-heads says otherwise."""
        given = {k: v for k, v in self.check_options(options).items() if v is not None}
        if arch is None and input_size is None and not given:
            return spec
        declared = spec.model_kwargs.get("num_heads")
        new = self._infer(state_dict, arch=arch, input_size=input_size or spec.input_size, args=None,
                          options={"num_heads": given.get("num_heads")}, notes=None,
                          stated=(declared, "the checkpoint's config") if isinstance(declared, int) else None)
        return new if arch is not None else dataclasses.replace(new, arch=spec.arch)

    def build(self, spec: ModelSpec, *, exportable: bool = False) -> nn.Module:
        """``exportable`` changes nothing: the attention is plain tensor ops either way."""
        from m2pt_deploy.families.video_transformer import VideoMAEClassifier

        try:
            return VideoMAEClassifier(**spec.model_kwargs).eval()
        except (TypeError, ValueError) as e:
            raise M2ptError(f"cannot build {spec.arch} with {spec.model_kwargs}: {e}") from e

    def with_input_size(self, spec: ModelSpec, input_size: tuple[int, ...]) -> ModelSpec:
        c, t, h, w = _four(input_size)
        kw = spec.model_kwargs
        tubelet, patch = int(kw["tubelet_size"]), int(kw["patch_size"])
        if t < 1 or t % tubelet:
            raise M2ptError(f"--input-size {c} {t} {h} {w}: {t} frames do not divide into tubelets of {tubelet}")
        if h < 1 or w < 1 or h % patch or w % patch:
            raise M2ptError(f"--input-size {c} {t} {h} {w}: {h} x {w} does not divide into {patch} x {patch} patches")
        mean, std = (spec.mean, spec.std) if len(spec.mean) == c else _mean_std(c)
        kwargs = {**kw, "in_chans": c, "num_frames": t, "img_size": (h, w)}
        return dataclasses.replace(spec, model_kwargs=kwargs, input_size=(c, t, h, w), mean=mean, std=std)

    def describe(self, spec: ModelSpec) -> str:
        kw = spec.model_kwargs
        c, t, h, w = spec.input_size
        return (f"VideoMAE V2 ({spec.arch}: {kw['embed_dim']} wide, {kw['depth']} blocks, {kw['num_heads']} heads, "
                f"tubelet {kw['tubelet_size']}, patch {kw['patch_size']}; input {c}x{t}x{h}x{w})")

    def input_metadata(self, spec: ModelSpec) -> dict[str, Any]:
        c, t, h, w = spec.input_size
        kw = spec.model_kwargs
        return {**super().input_metadata(spec), "channels": c, "frames": t, "height": h, "width": w,
                "tubelet_size": kw["tubelet_size"], "patch_size": kw["patch_size"]}
