"""Real images for calibration and verification, with no download.

scikit-learn ships two photographs (``china.jpg``, ``flower.jpg``, 427×640) inside its
wheel. Random crops at many scales, flips and resizes turn them into as many distinct
input tiles as calibration needs; real photo statistics matter for activation ranges,
which random noise gets badly wrong.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from m2pt_deploy.errors import M2ptError
from m2pt_deploy.families import ModelSpec, family_of

__all__ = ["PHOTO_NAMES", "calibration_tiles", "input_layout", "load_calibration_data", "sample_photos"]

PHOTO_NAMES = ("china.jpg", "flower.jpg")


def sample_photos() -> list[np.ndarray]:
    """The bundled photographs as ``uint8`` arrays of shape (H, W, 3)."""
    from PIL import Image

    folder = _photo_folder()
    return [np.asarray(Image.open(folder / name).convert("RGB")) for name in PHOTO_NAMES]


def calibration_tiles(
    input_size: tuple[int, ...],
    mean: Sequence[float],
    std: Sequence[float],
    *,
    count: int,
    seed: int = 0,
) -> np.ndarray:
    """``count`` normalised float32 tiles of shape (C, H, W), deterministic for a seed."""
    if count < 1:
        raise M2ptError(f"need at least one calibration image, got {count}")
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


_IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})


def load_calibration_data(path: str | os.PathLike[str], spec: ModelSpec, *, count: int, seed: int = 0) -> np.ndarray:
    """Up to ``count`` of the user's inputs, preprocessed as training (``m2pt-train``) reads them.

    ``path``: for image models a folder of images (searched recursively; decoded, resized and
    centre-cropped with timm's eval transform for the model) or an ``.npz`` whose ``x`` is
    ``[N, C, H, W]`` (or ``[N, H, W]``) raw inputs, resized and normalised like training's
    ``.npz`` data; AudioMAE spectrograms the same, but at the model's own size (``[N, 1, 1024,
    128]``: time x frequency, normalised, never resized); for every other family an ``.npz`` whose ``x`` is
    model-ready in the family's own layout, exactly the model's input shape (VideoMAE clips
    ``[N, C, T, H, W]``, Point-MAE clouds ``[N, P, 3]``). A seeded shuffle picks which ones when
    there are more than ``count``.
    """
    p = Path(path)
    if not p.exists():
        raise M2ptError("no such calibration data", p)
    rng = np.random.default_rng(seed)
    if p.is_dir():
        if not _resizable(spec):
            raise M2ptError(f"a {family_of(spec).title} calibrates on an .npz of model-ready inputs, "
                            f"x {input_layout(spec)}, not a folder", p)
        return _images(p, spec, count, rng)
    if p.suffix != ".npz":
        raise M2ptError("calibration data must be an image folder or an .npz file" if _resizable(spec) else
                        f"calibration data must be an .npz with x {input_layout(spec)}", p)
    return _arrays(p, spec, count, rng)


def _resizable(spec: ModelSpec) -> bool:
    """Image models (AudioMAE's spectrograms included) take pictures of any size, resized as training
    resizes them; other families' inputs come model-ready."""
    return family_of(spec).modality in ("image", "spectrogram")


def input_layout(spec: ModelSpec) -> str:
    """``[N, 3, 16, 224, 224] (batch, channels, frames, height, width)``: the input's shape and axes."""
    axes = ", ".join(("batch", *family_of(spec).input_axes))
    return f"[N, {', '.join(map(str, spec.input_size))}] ({axes})"


def _images(folder: Path, spec: ModelSpec, count: int, rng: np.random.Generator) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    from m2pt_deploy.train.data import image_transform

    files = sorted(f for f in folder.rglob("*") if f.suffix.lower() in _IMAGE_SUFFIXES and f.is_file())
    if not files:
        raise M2ptError("no images (.jpg, .png, ...) in the calibration folder", folder)
    chosen = [files[i] for i in rng.permutation(len(files))[:count]]
    transform = image_transform(spec, train=False)
    mode = "RGB" if spec.input_size[0] == 3 else "L"
    out = []
    for f in chosen:
        try:
            with Image.open(f) as image:
                out.append(transform(image.convert(mode)).numpy())
        except (OSError, UnidentifiedImageError, ValueError) as e:
            raise M2ptError(f"cannot read calibration image ({type(e).__name__})", f) from e
    return np.stack(out).astype(np.float32)


def _arrays(path: Path, spec: ModelSpec, count: int, rng: np.random.Generator) -> np.ndarray:
    import torch

    from m2pt_deploy.train.data import array_transform

    try:
        # allow_pickle=False: an .npz with object arrays is refused, never unpickled.
        with np.load(path, allow_pickle=False) as f:
            if "x" not in f.files:
                raise M2ptError(f"a calibration .npz needs an array 'x', it has {sorted(f.files)}", path)
            x = f["x"]
    except (OSError, ValueError, EOFError) as e:
        raise M2ptError("not a readable .npz file", path) from e
    if len(x) == 0 or not np.issubdtype(x.dtype, np.number):
        raise M2ptError(f"'x' must be a non-empty numeric array, got {x.dtype} {_shape(x.shape)}", path)
    if _resizable(spec):
        x = _pictures(x, spec, path)
    elif tuple(x.shape[1:]) != tuple(spec.input_size):
        raise M2ptError(f"'x' is {_shape(x.shape)}, a {family_of(spec).title} takes model-ready "
                        f"{input_layout(spec)}", path)
    if not np.isfinite(x).all():
        raise M2ptError("'x' contains NaN or Inf", path)
    transform = array_transform(spec)
    rows = x[np.sort(rng.permutation(len(x))[:count])]
    return np.stack([transform(torch.from_numpy(r.astype(np.float32))).numpy() for r in rows])


def _pictures(x: np.ndarray, spec: ModelSpec, path: Path) -> np.ndarray:
    """``x`` as ``[N, C, H, W]`` with the model's channels (any H and W: training resizes them)."""
    if x.ndim == 3:
        x = x[:, None]
    c = spec.input_size[0]
    if x.ndim != 4:
        raise M2ptError(f"'x' is {_shape(x.shape)}, a {family_of(spec).title} calibrates on [N, C, H, W] "
                        f"(or [N, H, W]) arrays resized to its {input_layout(spec)}", path)
    if x.shape[1] != c:
        raise M2ptError(f"'x' is {_shape(x.shape)} with {x.shape[1]} channels, the model takes "
                        f"{input_layout(spec)}", path)
    if family_of(spec).input_metadata(spec)["modality"] == "spectrogram" and x.shape[1:] != spec.input_size:
        # NOTE resizing would hide a transposed spectrogram (frequency x time): AudioMAE's input
        # is time x frequency, and the same 512 patches would meet the wrong position table.
        raise M2ptError(f"'x' is {_shape(x.shape)}, an AudioMAE spectrogram model takes {input_layout(spec)}: time x "
                        "frequency at the model's own size, not resized", path)
    return x


def _shape(shape: tuple[int, ...]) -> str:
    return f"[{', '.join(map(str, shape))}]"
