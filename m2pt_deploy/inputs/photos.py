"""Real photographs as model inputs, with no download: what RGB image models calibrate and verify on.

scikit-learn ships two photographs (``china.jpg``, ``flower.jpg``, 427×640) inside its
wheel. Random crops at many scales, flips and resizes turn them into as many distinct
input tiles as calibration needs; real photo statistics matter for activation ranges,
which random noise gets badly wrong.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from m2pt_deploy.errors import M2ptError
from m2pt_deploy.vocabulary import CALIBRATION_SEED

__all__ = ["PHOTO_NAMES", "photo_tiles", "sample_photos"]

PHOTO_NAMES = ("china.jpg", "flower.jpg")


def sample_photos() -> list[np.ndarray]:
    """The bundled photographs as ``uint8`` arrays of shape (H, W, 3)."""
    from PIL import Image

    folder = _photo_folder()
    return [np.asarray(Image.open(folder / name).convert("RGB")) for name in PHOTO_NAMES]


def photo_tiles(
    input_size: tuple[int, ...],
    mean: Sequence[float],
    std: Sequence[float],
    *,
    count: int,
    seed: int = CALIBRATION_SEED,
) -> np.ndarray:
    """``count`` normalised float32 tiles of shape (C, H, W), deterministic for a seed."""
    if count < 1:
        raise M2ptError(f"need at least one photo tile, got {count}")
    c, h, w = input_size
    if len(mean) != c or len(std) != c:
        raise M2ptError(f"mean/std have {len(mean)}/{len(std)} values for {c} input channels")
    rng = np.random.default_rng(seed)
    photos = sample_photos()
    tiles = np.stack([_tile(photos[i % len(photos)], (h, w), c, rng) for i in range(count)])
    m = np.asarray(mean, np.float32).reshape(1, c, 1, 1)
    s = np.asarray(std, np.float32).reshape(1, c, 1, 1)
    return ((tiles - m) / s).astype(np.float32)


def _photo_folder() -> Path:
    # find_spec locates the wheel without importing scikit-learn (and scipy with it).
    spec = importlib.util.find_spec("sklearn")
    if spec is None or spec.origin is None:
        raise M2ptError("calibration images come from scikit-learn's bundled photos; "
                        "install scikit-learn")
    return Path(spec.origin).parent / "datasets" / "images"


def _tile(photo: np.ndarray, size: tuple[int, int], channels: int, rng: np.random.Generator) -> np.ndarray:
    from PIL import Image

    ph, pw = photo.shape[:2]
    side = int(min(ph, pw) * rng.uniform(0.15, 1.0))
    top, left = int(rng.integers(0, ph - side + 1)), int(rng.integers(0, pw - side + 1))
    crop = photo[top:top + side, left:left + side]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    image = Image.fromarray(np.ascontiguousarray(crop))
    if channels != 3:
        image = image.convert("L")
    pixels = np.asarray(image.resize((size[1], size[0]), Image.Resampling.BILINEAR), np.float32) / 255.0
    if channels == 3:
        return pixels.transpose(2, 0, 1)
    return np.repeat(pixels[None], channels, axis=0)
