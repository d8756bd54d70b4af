"""Encoded image → model input, and logits → top-k classes, driven by the ONNX metadata.

Preprocessing is the usual ViT evaluation transform without the crop margin: resize the
shorter side to the model's input size (bicubic), centre-crop, scale to [0, 1], then
normalise with the ``mean``/``std`` stored in ``m2pt_deploy.input`` at export time.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from m2pt_deploy.serving.protocol import ProtocolError

__all__ = ["MAX_PIXELS", "InputSpec", "decode_image", "input_spec", "top_k"]

# Far above any ViT input, far below what would let a small PNG expand into gigabytes.
MAX_PIXELS = 64 * 1024 * 1024


class InputSpec:
    def __init__(self, name: str, channels: int, height: int, width: int,
                 mean: Sequence[float], std: Sequence[float]) -> None:
        if channels not in (1, 3) or len(mean) != channels or len(std) != channels:
            raise ValueError(f"{channels} channels with {len(mean)} means and {len(std)} stds")
        self.name, self.channels, self.height, self.width = name, channels, height, width
        self.mean = np.asarray(mean, np.float32).reshape(-1, 1, 1)
        self.std = np.asarray(std, np.float32).reshape(-1, 1, 1)


def input_spec(metadata: Mapping[str, Any]) -> InputSpec | None:
    """The ``m2pt_deploy.input`` entry as an :class:`InputSpec`, or None when absent or unusable."""
    raw = metadata.get("m2pt_deploy.input")
    if not isinstance(raw, dict):
        return None
    try:
        return InputSpec(str(raw["name"]), int(raw["channels"]), int(raw["height"]),
                         int(raw["width"]), raw["mean"], raw["std"])
    except (KeyError, TypeError, ValueError):
        return None


def _open(data: bytes) -> Any:
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(data), formats=["JPEG", "PNG"])
        if image.width * image.height > MAX_PIXELS:
            raise ProtocolError(f"image is {image.width}x{image.height}; at most {MAX_PIXELS} "
                                "pixels are accepted", status=413)
        image.load()
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError, SyntaxError):
        raise ProtocolError("body is not a readable JPEG or PNG image") from None
    return image


def decode_image(data: bytes, spec: InputSpec) -> np.ndarray:
    """JPEG/PNG bytes → normalised float32 array of shape (1, C, H, W)."""
    from PIL import Image

    image = _open(data).convert("RGB" if spec.channels == 3 else "L")
    scale = max(spec.width / image.width, spec.height / image.height)
    size = (max(spec.width, round(image.width * scale)), max(spec.height, round(image.height * scale)))
    image = image.resize(size, Image.Resampling.BICUBIC)
    left, top = (size[0] - spec.width) // 2, (size[1] - spec.height) // 2
    image = image.crop((left, top, left + spec.width, top + spec.height))
    pixels = np.asarray(image, np.float32).reshape(spec.height, spec.width, spec.channels) / 255.0
    chw = (pixels.transpose(2, 0, 1) - spec.mean) / spec.std
    return chw[None].astype(np.float32)


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
