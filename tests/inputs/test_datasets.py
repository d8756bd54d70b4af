"""Data sets: image folders and .npz arrays, preprocessing from the model spec, named errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from m2pt_deploy.errors import M2ptError
from m2pt_deploy.inputs.datasets import check_classes, load_data
from tests.tiny import tiny_spec, write_npz


def _image_folder(root: Path, classes=("cat", "dog"), per_class: int = 5, size=(20, 24)) -> Path:
    rng = np.random.default_rng(0)
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def test_image_folder_split_uses_model_input_and_normalisation(tmp_path: Path) -> None:
    spec = tiny_spec(channels=3, size=16)
    split = load_data(_image_folder(tmp_path / "imgs"), spec, val_split=0.2, seed=0)
    assert split.classes == ("cat", "dog")
    assert (len(split.train), len(split.val)) == (8, 2)
    assert "bicubic" in repr(split.val.transform)  # timm's data config for its ViTs
    x, label = split.val[0]
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32 and label in (0, 1)
    # Normalised with the spec's mean / std 0.5: pixel values in [0, 1] map into [-1, 1].
    assert x.min() >= -1.0 - 1e-6 and x.max() <= 1.0 + 1e-6 and x.min() < 0 < x.max()
    # Evaluation is deterministic; training augments.
    assert torch.equal(split.val[0][0], split.val[0][0])
    torch.manual_seed(0)
    a = split.train[0][0]
    b = split.train[0][0]
    assert not torch.equal(a, b)


def test_train_and_val_subfolders_are_the_split(tmp_path: Path) -> None:
    _image_folder(tmp_path / "d" / "train", per_class=3)
    _image_folder(tmp_path / "d" / "val", per_class=2)
    split = load_data(tmp_path / "d", tiny_spec(channels=1, size=16))
    assert (len(split.train), len(split.val)) == (6, 4)
    assert split.train[0][0].shape == (1, 16, 16)


def test_npz_arrays_are_resized_and_split(tmp_path: Path) -> None:
    split = load_data(write_npz(tmp_path / "d.npz", n=40, size=12), tiny_spec(), val_split=0.25, seed=3)
    assert (len(split.train), len(split.val)) == (30, 10)
    assert split.classes == ("0", "1", "2", "3")
    assert split.train[0][0].shape == (1, 16, 16)
    again = load_data(tmp_path / "d.npz", tiny_spec(), val_split=0.25, seed=3)
    assert torch.equal(split.val[0][0], again.val[0][0])


def test_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    with pytest.raises(M2ptError, match="empty image folder") as e:
        load_data(tmp_path / "empty", tiny_spec())
    assert e.value.path == str(tmp_path / "empty")


def test_unreadable_image_is_named(tmp_path: Path) -> None:
    root = _image_folder(tmp_path / "imgs")
    bad = root / "dog" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(M2ptError, match="cannot read image") as e:
        load_data(root, tiny_spec(channels=3))
    assert e.value.path == str(bad)


@pytest.mark.parametrize(("arrays", "message"), [
    ({"x": np.zeros((4, 1, 8, 8), np.float32)}, "needs arrays 'x' and 'y'"),
    ({"x": np.zeros((4, 1, 8, 8), np.float32), "y": np.zeros(3, np.int64)}, "expected x"),
    ({"x": np.zeros((4, 3, 8, 8), np.float32), "y": np.zeros(4, np.int64)}, "3 channels, the model takes 1"),
    ({"x": np.zeros((4, 1, 8, 8), np.float32), "y": np.zeros(4, np.float32)}, "'y' integer"),
    ({"x": np.zeros((4, 1, 8, 8), np.float32), "y": np.array([0, 1, 5, 1]),
      "classes": np.array(["a", "b"])}, "label 5 but only 2 classes"),
])
def test_bad_npz(tmp_path: Path, arrays: dict, message: str) -> None:
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(M2ptError, match=message):
        load_data(tmp_path / "bad.npz", tiny_spec())


def test_object_arrays_are_never_unpickled(tmp_path: Path) -> None:
    np.savez(tmp_path / "obj.npz", x=np.array([{"a": 1}], dtype=object), y=np.zeros(1, np.int64))
    with pytest.raises(M2ptError, match="not a readable .npz"):
        load_data(tmp_path / "obj.npz", tiny_spec())


def test_class_count_must_match_the_head() -> None:
    check_classes(("a", "b"), 2, "d")
    with pytest.raises(M2ptError, match="the data set has 3 classes, the model head has 4"):
        check_classes(("a", "b", "c"), 4, "d")


def test_image_that_breaks_in_a_worker_process_is_one_line(tmp_path: Path) -> None:
    from torch.utils.data import DataLoader

    from m2pt_deploy.inputs.datasets import batches

    root = _image_folder(tmp_path / "imgs", per_class=2)
    split = load_data(root, tiny_spec(channels=3), val_data=root)
    bad = split.val.samples[0][0]
    bad.write_bytes(b"corrupted after the start-up check")
    loader = DataLoader(split.val, batch_size=2, num_workers=1)
    with pytest.raises(M2ptError) as e:
        list(batches(loader))
    assert "\n" not in str(e.value)
    assert str(e.value).startswith(f"{bad}: cannot read image")


def test_a_truncated_npz_is_one_line(tmp_path: Path) -> None:
    whole = tmp_path / "whole.npz"
    np.savez(whole, x=np.zeros((8, 1, 8, 8), np.float32), y=np.zeros(8, np.int64))
    cut = tmp_path / "cut.npz"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(M2ptError, match=r"cut.npz: not a readable .npz file$"):
        load_data(cut, tiny_spec())
