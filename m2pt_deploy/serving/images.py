"""Encoded image → model input, and logits → top-k classes, driven by the ONNX metadata.

Preprocessing is timm's evaluation transform (``create_transform(..., is_training=False)``, the one
``m2pt_deploy.inputs.preprocess.image_transform`` evaluates, calibrates and verifies with), reproduced with
PIL and numpy because the server never imports torch: resize so the shorter side is
``floor(size / crop_pct)``, centre-crop to the input size, scale to [0, 1], normalise with the
``mean``/``std`` stored in ``m2pt_deploy.input`` at export time. ``crop_pct`` and ``interpolation``
come from the same entry when it has them, else timm's data config for this project's ViTs
(``vit_*_patch16_224``: bicubic, 0.9). tests/serving/test_images.py checks the output against
timm's own transform.

Before that, EXIF orientation is applied and 16-bit greyscale is scaled to 8 bits (PIL's own
conversion clips it). Work is bounded before a pixel is decoded: the source's pixels, its aspect
ratio, and the pixels of the resized image, which for a thin strip dwarfs the source (a 1 x 100,000
PNG of 472 bytes resizes to 35 x 3,500,000).
"""

from __future__ import annotations

import io
import math
import struct
from collections.abc import Mapping, Sequence
from typing import Any, Literal, get_args

import numpy as np

from m2pt_deploy.metadata import INPUT_KEY
from m2pt_deploy.serving.protocol import ProtocolError

__all__ = ["MAX_ASPECT", "MAX_PIXELS", "MAX_RESIZED_PIXELS", "InputSpec", "decode_image", "input_spec",
           "resized_size", "top_k"]

Interpolation = Literal["bicubic", "bilinear", "nearest", "lanczos", "box", "hamming"]

# Far above any ViT input, far below what would let a small PNG expand into gigabytes.
MAX_PIXELS = 64 * 1024 * 1024
# The centre crop keeps at most 1/64 of a 1:64 strip; past that the image is not what the model sees.
MAX_ASPECT = 64
# A 1:64 strip resized for a 460-pixel input (512 at crop 0.9): 48 MiB of RGB.
MAX_RESIZED_PIXELS = 512 * 512 * MAX_ASPECT
DEFAULT_CROP_PCT = 0.9
DEFAULT_INTERPOLATION: Interpolation = "bicubic"
_TIMM_CROP_PCT = 0.875  # what timm uses for crop_pct=None (an architecture without a data config)

_UNREADABLE = "body is not a readable JPEG or PNG image"
_WIDE_GREY = ("I", "I;16", "I;16L", "I;16B", "I;16N")


class InputSpec:
    def __init__(self, name: str, channels: int, height: int, width: int,
                 mean: Sequence[float], std: Sequence[float], *,
                 crop_pct: float = DEFAULT_CROP_PCT,
                 interpolation: Interpolation = DEFAULT_INTERPOLATION) -> None:
        if channels not in (1, 3) or len(mean) != channels or len(std) != channels:
            raise ValueError(f"{channels} channels with {len(mean)} means and {len(std)} stds")
        if not crop_pct > 0 or min(height, width) < crop_pct:  # resizing to 0 pixels
            raise ValueError(f"input {height}x{width} with crop_pct {crop_pct}")
        if interpolation not in get_args(Interpolation):
            raise ValueError(f"interpolation {interpolation!r}, expected one of {get_args(Interpolation)}")
        self.name, self.channels, self.height, self.width = name, channels, height, width
        self.mean = np.asarray(mean, np.float32).reshape(-1, 1, 1)
        self.std = np.asarray(std, np.float32).reshape(-1, 1, 1)
        self.crop_pct, self.interpolation = float(crop_pct), interpolation


def input_spec(metadata: Mapping[str, Any]) -> InputSpec | None:
    """The ``m2pt_deploy.input`` entry as an :class:`InputSpec`, or None when absent or unusable."""
    raw = INPUT_KEY.get(metadata)
    if not isinstance(raw, dict) or raw.get("modality", "image") not in ("image", "spectrogram"):
        return None
    try:
        return InputSpec(str(raw["name"]), int(raw["channels"]), int(raw["height"]),
                         int(raw["width"]), raw["mean"], raw["std"],
                         crop_pct=float(raw.get("crop_pct", DEFAULT_CROP_PCT) or _TIMM_CROP_PCT),
                         interpolation=raw.get("interpolation", DEFAULT_INTERPOLATION))
    except (KeyError, TypeError, ValueError):
        return None


def resized_size(width: int, height: int, spec: InputSpec) -> tuple[int, int]:
    """(width, height) of a ``width`` x ``height`` image after timm's eval resize, before the crop.

    A square target is torchvision's ``Resize(int)`` (shorter side exact, longer side truncated);
    any other is timm's ``ResizeKeepRatio`` (both sides rounded).
    """
    scale_h, scale_w = math.floor(spec.height / spec.crop_pct), math.floor(spec.width / spec.crop_pct)
    if scale_h == scale_w:
        short, long = (width, height) if width <= height else (height, width)
        new_long = int(scale_h * long / short)
        return (scale_h, new_long) if width <= height else (new_long, scale_h)
    ratio = min(height / scale_h, width / scale_w)
    return round(width / ratio), round(height / ratio)


def _check_work(width: int, height: int, spec: InputSpec) -> None:
    """Refuse, from the header alone, images whose decoding or resizing would cost too much."""
    if width * height > MAX_PIXELS:
        raise ProtocolError(f"image is {width}x{height}; at most {MAX_PIXELS} pixels are accepted",
                            status=413)
    if max(width, height) > MAX_ASPECT * min(width, height):
        raise ProtocolError(f"image is {width}x{height}; sides more than {MAX_ASPECT} times apart are "
                            "refused (crop it closer to square)", status=413)
    # EXIF may swap the sides, and a PNG's EXIF can follow its pixels: bound both orientations.
    resized = max(math.prod(resized_size(width, height, spec)), math.prod(resized_size(height, width, spec)))
    if resized > MAX_RESIZED_PIXELS:
        raise ProtocolError(f"image is {width}x{height}; resizing it for the {spec.width}x{spec.height} "
                            f"input makes {resized} pixels, at most {MAX_RESIZED_PIXELS} are accepted",
                            status=413)


def _open(data: bytes, spec: InputSpec) -> Any:
    """Decoded, upright, 8-bit image; the limits are checked before the pixels are decoded."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    errors = (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError, SyntaxError,
              struct.error)
    try:
        image: Image.Image = Image.open(io.BytesIO(data), formats=["JPEG", "PNG"])
    except errors:
        raise ProtocolError(_UNREADABLE) from None
    _check_work(image.width, image.height, spec)
    try:
        image.load()
        ImageOps.exif_transpose(image, in_place=True)
    except errors:
        raise ProtocolError(_UNREADABLE) from None
    if image.mode in _WIDE_GREY:
        # 16-bit range to 8 bits, rounding v / 257 (the inverse of 8 → 16 bit's v * 257)
        wide = np.clip(np.asarray(image), 0, 65535).astype(np.uint32)
        image = Image.fromarray(((wide * 2 + 257) // 514).astype(np.uint8))
    return image


def decode_image(data: bytes, spec: InputSpec) -> np.ndarray:
    """JPEG/PNG bytes → normalised float32 array of shape (1, C, H, W)."""
    from PIL import Image

    image = _open(data, spec).convert("RGB" if spec.channels == 3 else "L")
    size = resized_size(image.width, image.height, spec)
    if size != image.size:  # as torchvision: an image already that size is not resampled
        image = image.resize(size, Image.Resampling[spec.interpolation.upper()])
    left, top = _crop_origin(size, spec)
    image = image.crop((left, top, left + spec.width, top + spec.height))
    pixels = np.asarray(image, np.float32).reshape(spec.height, spec.width, spec.channels) / 255.0
    chw = (pixels.transpose(2, 0, 1) - spec.mean) / spec.std
    return chw[None].astype(np.float32)


def _crop_origin(size: tuple[int, int], spec: InputSpec) -> tuple[int, int]:
    """torchvision's ``center_crop``: a side shorter than the crop is zero-padded, split low-first."""
    def origin(have: int, want: int) -> int:
        return -((want - have) // 2) if want > have else int(round((have - want) / 2.0))

    return origin(size[0], spec.width), origin(size[1], spec.height)


def top_k(logits: np.ndarray, k: int, labels: Sequence[str] | None) -> list[dict[str, Any]]:
    """Softmax over one row of logits; the ``k`` most likely classes, best first."""
    row = logits.reshape(-1).astype(np.float64)
    probs = np.exp(row - row.max())
    probs /= probs.sum()
    order = np.argsort(-probs, kind="stable")[:k]
    return [
        {"index": int(i), "label": labels[i] if labels and i < len(labels) else None,
         "score": float(probs[i])}
        for i in order
    ]
