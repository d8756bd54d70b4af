"""How inputs become model inputs: timm's image transforms and the array transform of ``.npz`` data,
shared by training, calibration, verification and evaluation so that all of them see the same numbers.

Preprocessing comes from the model's :class:`~m2pt_deploy.families.ModelSpec` (input size,
mean, std): images get timm's standard train-time augmentation and its resize +
centre-crop for evaluation; arrays (spectrograms, small images) are resized to the input
size and normalised, never flipped or cropped, since that would change their meaning.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from m2pt_deploy.families import ModelSpec, family_of

__all__ = ["IMAGE_EXTENSIONS", "Transform", "array_inputs", "array_transform", "image_transform", "input_layout",
           "resizable"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
Transform = Callable[[Tensor], Tensor]


def image_transform(spec: ModelSpec, *, train: bool) -> Callable:
    """timm's transform for the model's input: RandomResizedCrop + flip + jitter, or resize + crop.

    Size, mean and std are the checkpoint's; interpolation and crop fraction come from timm's
    data config for the architecture (bicubic, 0.9 for its ViTs), as timm's own scripts use them.
    """
    from timm.data import create_transform

    layout = family_of(spec).input_metadata(spec)
    crop_pct, interpolation = layout.get("crop_pct"), layout.get("interpolation") or "bilinear"
    size = cast(tuple[int, int, int], spec.input_size)  # image families only: C, H, W
    return create_transform(size, is_training=train, mean=spec.mean, std=spec.std,
                            interpolation=interpolation, crop_pct=crop_pct)


def resizable(spec: ModelSpec) -> bool:
    """Image models (AudioMAE's spectrograms included) take pictures of any size, resized as training
    resizes them; other families' inputs come model-ready."""
    return family_of(spec).modality in ("image", "spectrogram")


def input_layout(spec: ModelSpec) -> str:
    """``[N, 3, 16, 224, 224] (batch, channels, frames, height, width)``: the input's shape and axes."""
    axes = ", ".join(("batch", *family_of(spec).input_axes))
    return f"[N, {', '.join(map(str, spec.input_size))}] ({axes})"


def _model_ready(x: Tensor) -> Tensor:
    return x


def array_transform(spec: ModelSpec) -> Transform:
    """Resize a ``[C, H, W]`` float array to the model's input and normalise it; inputs of other
    families (video clips, point clouds) come model-ready and pass as they are."""
    if not resizable(spec):
        return _model_ready
    _, height, width = spec.input_size
    mean = torch.tensor(spec.mean, dtype=torch.float32).view(-1, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float32).view(-1, 1, 1)

    def transform(x: Tensor) -> Tensor:
        if tuple(x.shape[-2:]) != (height, width):
            x = F.interpolate(x[None], size=(height, width), mode="bilinear", antialias=True,
                              align_corners=False)[0]
        return (x - mean) / std

    return transform


def array_inputs(spec: ModelSpec, x: np.ndarray) -> np.ndarray:
    """The model inputs an ``.npz``'s ``x`` rows become: :func:`array_transform` of each, float32."""
    transform = array_transform(spec)
    return np.stack([transform(torch.from_numpy(row.astype(np.float32, copy=False))).numpy() for row in x])
