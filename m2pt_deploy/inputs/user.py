"""The user's own inputs (``--calib-data``): an image folder or an ``.npz`` in the family's layout,
preprocessed exactly as ``m2pt-train`` preprocesses its data."""

from __future__ import annotations

import os
import tokenize
import zipfile
import zlib
from pathlib import Path

import numpy as np

from m2pt_deploy.errors import M2ptError
from m2pt_deploy.families import ModelSpec, family_of
from m2pt_deploy.inputs.preprocess import IMAGE_EXTENSIONS, array_inputs, image_transform, input_layout, resizable

__all__ = ["UNREADABLE_NPZ", "load_user_inputs"]

#: What reading a truncated or damaged .npz raises: zipfile, zlib or numpy's header parser (tokenize, ast).
UNREADABLE_NPZ = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, tokenize.TokenError, SyntaxError)

def load_user_inputs(path: str | os.PathLike[str], spec: ModelSpec, *, count: int, seed: int = 0) -> np.ndarray:
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
        if not resizable(spec):
            raise M2ptError(f"a {family_of(spec).title} calibrates on an .npz of model-ready inputs, "
                            f"x {input_layout(spec)}, not a folder", p)
        return _images(p, spec, count, rng)
    if p.suffix != ".npz":
        raise M2ptError("calibration data must be an image folder or an .npz file" if resizable(spec) else
                        f"calibration data must be an .npz with x {input_layout(spec)}", p)
    return _arrays(p, spec, count, rng)


def _images(folder: Path, spec: ModelSpec, count: int, rng: np.random.Generator) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    files = sorted(f for f in folder.rglob("*") if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file())
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

    try:
        # allow_pickle=False: an .npz with object arrays is refused, never unpickled.
        with np.load(path, allow_pickle=False) as f:
            if "x" not in f.files:
                raise M2ptError(f"a calibration .npz needs an array 'x', it has {sorted(f.files)}", path)
            x = f["x"]
    except UNREADABLE_NPZ as e:
        raise M2ptError("not a readable .npz file", path) from e
    if len(x) == 0 or not np.issubdtype(x.dtype, np.number):
        raise M2ptError(f"'x' must be a non-empty numeric array, got {x.dtype} {_shape(x.shape)}", path)
    if resizable(spec):
        x = _pictures(x, spec, path)
    elif tuple(x.shape[1:]) != tuple(spec.input_size):
        raise M2ptError(f"'x' is {_shape(x.shape)}, a {family_of(spec).title} takes model-ready "
                        f"{input_layout(spec)}", path)
    if not np.isfinite(x).all():
        raise M2ptError("'x' contains NaN or Inf", path)
    return array_inputs(spec, x[np.sort(rng.permutation(len(x))[:count])])


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
