"""Training data: an image folder (one sub-folder per class) or ``.npz`` arrays (``x``, ``y``).

Preprocessing comes from the model's :class:`~m2pt_deploy.families.ModelSpec` (input size,
mean, std): images get timm's standard train-time augmentation and its resize +
centre-crop for evaluation; arrays (spectrograms, small images) are resized to the input
size and normalised, never flipped or cropped, since that would change their meaning.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from m2pt_deploy.errors import M2ptError
from m2pt_deploy.families import ModelSpec, family_of
from m2pt_deploy.inputs.preprocess import IMAGE_EXTENSIONS, Transform, array_transform, image_transform, resizable
from m2pt_deploy.inputs.user import UNREADABLE_NPZ

__all__ = [
    "ArrayDataset",
    "DataSplit",
    "ImageFolderDataset",
    "batches",
    "check_classes",
    "load_data",
]

T = TypeVar("T")


@dataclasses.dataclass
class DataSplit:
    train: SizedDataset
    val: SizedDataset
    classes: tuple[str, ...]


class ImageFolderDataset(Dataset):
    """``(path, label)`` samples read with PIL; an unreadable file is named in the error."""

    def __init__(self, samples: Sequence[tuple[Path, int]], *, channels: int, transform: Callable) -> None:
        self.samples = list(samples)
        self.mode = "L" if channels == 1 else "RGB"
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        from PIL import Image, UnidentifiedImageError

        path, label = self.samples[index]
        try:
            with Image.open(path) as img:
                image = img.convert(self.mode)
        except (OSError, UnidentifiedImageError, ValueError) as e:
            raise M2ptError(f"cannot read image ({e.__class__.__name__}: {e})", path) from e
        return self.transform(image), label


class ArrayDataset(Dataset):
    def __init__(self, x: Tensor, y: Tensor, *, transform: Transform) -> None:
        self.x, self.y, self.transform = x, y, transform

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.transform(self.x[index]), int(self.y[index])


def _folder_samples(root: Path) -> tuple[list[tuple[Path, int]], tuple[str, ...]]:
    classes = tuple(sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")))
    samples = [
        (p, label)
        for label, name in enumerate(classes)
        for p in sorted((root / name).rglob("*"))
        if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
    ]
    if not samples:
        raise M2ptError(
            "empty image folder: expected one sub-folder per class holding images "
            f"({', '.join(IMAGE_EXTENSIONS[:4])}, ...)", root,
        )
    _check_readable(samples)
    return samples, classes


def _check_readable(samples: Sequence[tuple[Path, int]]) -> None:
    """Read every header before training starts, so a bad file fails in seconds, not mid-epoch."""
    from PIL import Image, UnidentifiedImageError

    for path, _ in samples:
        try:
            with Image.open(path) as img:
                img.verify()
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
            raise M2ptError(f"cannot read image ({e.__class__.__name__}: {e})", path) from e


def _load_npz(path: Path, spec: ModelSpec) -> tuple[Tensor, Tensor, tuple[str, ...]]:
    try:
        # allow_pickle=False: an .npz with object arrays is refused, never unpickled.
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except UNREADABLE_NPZ as e:
        raise M2ptError("not a readable .npz file", path) from e
    if "x" not in arrays or "y" not in arrays:
        raise M2ptError(f"an .npz data set needs arrays 'x' and 'y', it has {sorted(arrays)}", path)
    x, y = arrays["x"], arrays["y"]
    if not np.issubdtype(x.dtype, np.number) or not np.issubdtype(y.dtype, np.integer):
        raise M2ptError(f"'x' must be numeric and 'y' integer, got {x.dtype} and {y.dtype}", path)
    if not resizable(spec):
        shape = ", ".join(["N", *map(str, spec.input_size)])
        if tuple(x.shape[1:]) != tuple(spec.input_size) or y.ndim != 1 or len(x) != len(y):
            raise M2ptError(f"a {family_of(spec).title} trains on model-ready x [{shape}] and y [N], "
                            f"got {x.shape} and {y.shape}", path)
    else:
        channels = spec.input_size[0]
        if x.ndim == 3:
            x = x[:, None]
        if x.ndim != 4 or y.ndim != 1 or len(x) != len(y):
            raise M2ptError(f"expected x [N, C, H, W] (or [N, H, W]) and y [N], got {x.shape} and {y.shape}", path)
        if x.shape[1] != channels:
            raise M2ptError(f"x has {x.shape[1]} channels, the model takes {channels}", path)
    if len(y) == 0:
        raise M2ptError("empty data set: 'y' has no samples", path)
    if y.min() < 0:
        raise M2ptError(f"labels must be 0 or more, found {int(y.min())}", path)
    if "classes" in arrays:
        classes = tuple(str(c) for c in arrays["classes"])
    else:
        classes = tuple(str(i) for i in range(int(y.max()) + 1))
    if y.max() >= len(classes):
        raise M2ptError(f"label {int(y.max())} but only {len(classes)} classes", path)
    return torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y.astype(np.int64)), classes


def _split_indices(n: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    n_val = round(n * val_fraction)
    if not 0 < n_val < n:
        raise M2ptError(f"--val-split {val_fraction} leaves no train or no validation samples out of {n}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return order[n_val:], order[:n_val]


def _source(path: str | os.PathLike[str], spec: ModelSpec) -> Path:
    p = Path(path)
    if not p.exists():
        raise M2ptError("no such data file or folder", p)
    if p.is_file() and p.suffix != ".npz":
        raise M2ptError("data must be an image folder or an .npz file", p)
    if p.is_dir() and not resizable(spec) and not ((p / "train.npz").is_file() and (p / "val.npz").is_file()):
        raise M2ptError(f"a folder of images is for image models; a {family_of(spec).title} trains on an .npz "
                        "of model-ready inputs ('x', 'y')", p)
    return p


def _load_one(p: Path, spec: ModelSpec, *, train: bool) -> tuple[SizedDataset, tuple[str, ...]]:
    if p.is_dir():
        samples, classes = _folder_samples(p)
        return ImageFolderDataset(samples, channels=spec.input_size[0],
                                  transform=image_transform(spec, train=train)), classes
    x, y, classes = _load_npz(p, spec)
    return ArrayDataset(x, y, transform=array_transform(spec)), classes


SizedDataset = ImageFolderDataset | ArrayDataset


def load_data(
    data: str | os.PathLike[str],
    spec: ModelSpec,
    *,
    val_data: str | os.PathLike[str] | None = None,
    val_split: float = 0.1,
    seed: int = 0,
) -> DataSplit:
    """Train and validation sets: ``val_data``, else ``data/train`` + ``data/val``, else a seeded split."""
    root = _source(data, spec)
    if val_data is None and root.is_dir() and (root / "train").is_dir() and (root / "val").is_dir():
        root, val_data = root / "train", root / "val"
    elif val_data is None and root.is_dir() and (root / "train.npz").is_file() and (root / "val.npz").is_file():
        root, val_data = root / "train.npz", root / "val.npz"
    if val_data is not None:
        train_set, classes = _load_one(root, spec, train=True)
        val_set, val_classes = _load_one(_source(val_data, spec), spec, train=False)
        if val_classes != classes:
            raise M2ptError(f"validation classes {list(val_classes)[:5]} differ from training classes "
                            f"{list(classes)[:5]}", val_data)
        return DataSplit(train_set, val_set, classes)
    if root.is_dir():
        samples, classes = _folder_samples(root)
        tr, va = _split_indices(len(samples), val_split, seed)
        c = spec.input_size[0]
        return DataSplit(
            ImageFolderDataset([samples[i] for i in tr], channels=c, transform=image_transform(spec, train=True)),
            ImageFolderDataset([samples[i] for i in va], channels=c, transform=image_transform(spec, train=False)),
            classes,
        )
    x, y, classes = _load_npz(root, spec)
    tr, va = _split_indices(len(y), val_split, seed)
    transform = array_transform(spec)
    return DataSplit(ArrayDataset(x[tr], y[tr], transform=transform),
                     ArrayDataset(x[va], y[va], transform=transform), classes)


def batches(loader: Iterable[T]) -> Iterator[T]:
    """``loader``'s batches; a user error raised in a worker process comes back as one line.

    DataLoader re-raises a worker's exception with the worker's traceback as its message; the
    last line of that traceback is the original error.
    """
    it = iter(loader)
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except M2ptError as e:
            lines = [line for line in str(e).splitlines() if line.strip()]
            if len(lines) <= 1:
                raise
            raise M2ptError(lines[-1].split("M2ptError: ", 1)[-1]) from None
        yield batch


def check_classes(classes: Sequence[str], num_classes: int, data: str | os.PathLike[str]) -> None:
    if len(classes) != num_classes:
        raise M2ptError(
            f"the data set has {len(classes)} classes, the model head has {num_classes} "
            "(set --num-classes to re-initialise the head)", data,
        )
