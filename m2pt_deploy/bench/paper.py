"""The models the paper measures, one per family, as ``m2pt-bench`` builds them with random weights,
and how a measured spec is recognised as one of them (the goals in :mod:`~m2pt_deploy.bench.goals`
were set for these sizes and are judged only on them).

- ``vit``: timm's ViT-B/16 at 3 × 224 × 224 (ImageNet);
- ``audiomae``: AudioMAE's ViT-B/16 on a 1 × 1024 × 128 fbank (time × frequency, 512 patches,
  mean pooling), the ``vit`` family's spectrogram input;
- ``videomae``: VideoMAE V2's ViT-B, 16 frames of 224 × 224 in 2 × 16 × 16 tubelets (1568 tokens);
- ``pointmae``: Point-MAE's 384-wide, 12-block transformer on 1024 points in 64 groups of 32.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from m2pt_deploy.errors import M2ptError
from m2pt_deploy.families import ModelSpec, get_family
from m2pt_deploy.families.audio import audio_spec_input

__all__ = ["PAPER_MODELS", "paper_model", "random_spec"]

_AUDIO_INPUT, _AUDIO_MEAN, _AUDIO_STD = audio_spec_input()
_VIT_B = {"embed_dim": 768, "depth": 12, "num_heads": 12, "mlp_ratio": 4.0}
PAPER_MODELS: dict[str, ModelSpec] = {
    "vit": ModelSpec("vit_base_patch16_224", {}, (3, 224, 224)),
    "audiomae": ModelSpec(
        "vit_base_patch16_224",
        {"img_size": _AUDIO_INPUT[1:], "in_chans": 1, "num_classes": 527, "global_pool": "avg", "fc_norm": True},
        _AUDIO_INPUT, _AUDIO_MEAN, _AUDIO_STD),
    "videomae": ModelSpec(
        "videomae_v2_base",
        {**_VIT_B, "patch_size": 16, "tubelet_size": 2, "num_frames": 16, "img_size": (224, 224), "in_chans": 3,
         "num_classes": 400, "qkv_bias": True, "init_values": 0.0, "use_mean_pooling": True},
        (3, 16, 224, 224), family="videomae"),
    "pointmae": ModelSpec(
        "point_mae",
        {"embed_dim": 384, "depth": 12, "num_heads": 6, "mlp_ratio": 4.0, "num_classes": 40, "npoints": 1024,
         "num_group": 64, "group_size": 32},
        (1024, 3), mean=(), std=(), family="pointmae"),
}


def paper_model(spec: Mapping[str, Any]) -> str | None:
    """Which of :data:`PAPER_MODELS` a measured spec (a report's ``spec`` dict) is, whatever its head."""
    family, kwargs = spec.get("family", "vit"), spec.get("model_kwargs") or {}
    size = tuple(spec.get("input_size") or ())
    keys: tuple[str, ...]
    if family == "videomae":
        paper = PAPER_MODELS["videomae"]
        keys = ("embed_dim", "depth", "num_heads", "patch_size", "tubelet_size", "mlp_ratio")
    elif family == "pointmae":
        paper = PAPER_MODELS["pointmae"]
        keys = ("embed_dim", "depth", "num_heads", "mlp_ratio", "npoints", "num_group", "group_size")
    elif family == "vit":
        # timm's ViT-B/16 template: its own sizes hold unless the kwargs override them.
        name = "audiomae" if size == _AUDIO_INPUT else "vit"
        img = kwargs.get("img_size", 224)
        img = (img, img) if isinstance(img, int) else tuple(img)
        fits = (str(spec.get("arch", "")).startswith("vit_base_patch16_")
                and size == tuple(PAPER_MODELS[name].input_size) and img == size[1:]
                and all(kwargs.get(k, v) == v for k, v in {**_VIT_B, "patch_size": 16}.items()))
        return name if fits else None
    else:
        return None
    if size != tuple(paper.input_size) or any(kwargs.get(k) != paper.model_kwargs[k] for k in keys):
        return None
    return family


def random_spec(family: str | None = None, *, arch: str | None = None, model_kwargs: Mapping[str, Any] | None = None,
                input_size: tuple[int, ...] | None = None, options: Mapping[str, Any] | None = None) -> ModelSpec:
    """The random-weight model of a family: its paper size, with the user's changes.

    ``vit`` (the default) is a timm ``arch`` with ``model_kwargs``; its 1 × 1024 × 128 input is
    AudioMAE's. VideoMAE V2 and Point-MAE take ``input_size`` and their family ``options``.
    """
    from m2pt_deploy.bench.latency import spec_for_arch

    name = family or "vit"
    model_family = get_family(name)
    if name == "vit":
        if options:
            raise M2ptError(f"{', '.join('--' + k.replace('_', '-') for k in options)}: the random ViT takes "
                            "--model-kwargs")
        if input_size is not None and tuple(input_size) == _AUDIO_INPUT and arch in (None, "vit_base_patch16_224") \
                and not model_kwargs:
            return PAPER_MODELS["audiomae"]
        kwargs = dict(model_kwargs or {})
        if input_size is not None:
            if len(input_size) != 3:
                raise M2ptError("--input-size of the random-weight ViT takes C H W")
            kwargs.update(in_chans=input_size[0], img_size=tuple(input_size[1:]))
        return spec_for_arch(arch or PAPER_MODELS["vit"].arch, kwargs)
    if arch is not None or model_kwargs:
        raise M2ptError(f"--arch and --model-kwargs are for the random ViT; a random {model_family.title} is "
                        f"the paper's size, changed by --input-size and its family settings")
    spec = PAPER_MODELS.get(name)
    if spec is None:
        raise M2ptError(f"no paper-size model of the {name} family to benchmark with random weights; "
                        "benchmark a checkpoint of it")
    given = {k: v for k, v in model_family.check_options(options).items() if (options or {}).get(k) is not None}
    if given:
        spec = dataclasses.replace(spec, model_kwargs={**spec.model_kwargs, **given})
        if "npoints" in given:
            spec = model_family.with_input_size(spec, (int(given["npoints"]), 3))
    if input_size is not None:
        spec = model_family.with_input_size(spec, tuple(input_size))
    return spec
