"""What the reference training scripts' saved ``args`` say about the model.

MAE-style ``save_model`` (the M2PT Image, Audio and Video code) stores the run's
``argparse.Namespace`` beside the weights. Some of it describes the model and cannot be
read off tensor shapes: the timm model name (hence the head count), and for audio the
dataset, which fixes the spectrogram length and its normalisation. Other fields are
checked against the shapes instead (``nb_classes``, ``global_pool``). Audio runs keep
MAE's unused ``--input_size 224``, so ``input_size`` is read for image runs only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from m2pt_deploy.errors import M2ptError
from m2pt_deploy.families.audio import AUDIO_DATASETS, audio_spec_input
from m2pt_deploy.families.base import ModelSpec

__all__ = ["ArgsHints", "check_against_args", "hints_from_args"]


@dataclasses.dataclass(frozen=True)
class ArgsHints:
    """Model facts taken from ``args``, each with the note that says so."""

    model_name: str | None = None
    input_size: tuple[int, ...] | None = None
    mean_std: tuple[tuple[float, ...], tuple[float, ...]] | None = None
    model_note: str | None = None
    input_note: str | None = None


def _timm_name(name: str) -> str | None:
    import timm

    # MAE names its models without the resolution suffix (vit_base_patch16).
    return next((n for n in (name, f"{name}_224") if timm.is_model(n)), None)


def hints_from_args(args: Mapping[str, Any], *, channels: int) -> ArgsHints:
    """Architecture name and input layout from ``args``; empty when ``args`` says nothing usable."""
    model_name, model_note, input_note = None, None, None
    if isinstance(args.get("model"), str):
        model_name = _timm_name(args["model"])
        if model_name is not None:
            model_note = f"architecture {model_name} from args.model {args['model']!r}"
        else:
            model_note = f"args.model {args['model']!r} is not a timm architecture: read from tensor shapes"
    input_size, mean_std = None, None
    if args.get("audio_exp") and channels == 1:
        dataset = args.get("dataset", "audioset")
        if dataset in AUDIO_DATASETS:
            input_size, mean, std = audio_spec_input(dataset)
            mean_std = (mean, std)
            input_note = (f"audio input 1 x {input_size[1]} x 128 (time x frequency) and its normalisation "
                          f"from args.dataset {dataset!r}")
    elif isinstance(args.get("input_size"), int) and not isinstance(args.get("input_size"), bool):
        side = args["input_size"]
        input_size = (channels, side, side)
        input_note = f"input {side} x {side} from args.input_size"
    return ArgsHints(model_name, input_size, mean_std, model_note, input_note)


def check_against_args(spec: ModelSpec, args: Mapping[str, Any]) -> list[str]:
    """Refuse a spec that the run's ``args`` contradict; notes for what agreed."""
    notes = []
    classes = args.get("nb_classes")
    if isinstance(classes, int) and spec.num_classes:
        if classes != spec.num_classes:
            raise M2ptError(f"args.nb_classes is {classes}, the head has {spec.num_classes} outputs")
        notes.append(f"{classes} classes, as args.nb_classes says")
    pool = args.get("global_pool")
    if isinstance(pool, bool):
        avg = spec.model_kwargs.get("global_pool") == "avg"
        if pool != avg:
            shapes = "fc_norm and no final norm" if avg else "a final norm and no fc_norm"
            raise M2ptError(f"args.global_pool is {pool}, but the weights have {shapes}")
        notes.append(f"{'mean' if avg else 'cls-token'} pooling, as args.global_pool says")
    return notes
