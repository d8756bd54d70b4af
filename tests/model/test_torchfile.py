"""Reading .pth files: inert training metadata loads, anything that would run code does not."""

from __future__ import annotations

import argparse
import os
import pathlib
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from m2pt_deploy.errors import M2ptError
from m2pt_deploy.model.torchfile import load_torch_file


def test_training_metadata_loads(tmp_path: Path) -> None:
    obj = {"model": OrderedDict(w=torch.ones(2)), "epoch": 3,
           "args": argparse.Namespace(model="vit_base_patch16", nb_classes=10, output_dir=pathlib.PosixPath("/o")),
           "train_acc": np.float64(0.5), "num_part": np.int64(50), "iou": np.float32(0.25),
           "hist": np.arange(4, dtype=np.int16), "dtype": np.dtype("float16")}
    torch.save(obj, tmp_path / "real.pth")
    got = load_torch_file(tmp_path / "real.pth")
    assert torch.equal(got["model"]["w"], torch.ones(2)) and got["args"].nb_classes == 10
    assert got["train_acc"] == 0.5 and got["num_part"] == 50 and got["hist"].tolist() == [0, 1, 2, 3]


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_runs_code_is_refused_and_nothing_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    torch.save({"model": {"w": torch.zeros(1)}, "args": _Exploit(marker)}, tmp_path / "evil.pth")
    with pytest.raises(M2ptError, match=r"evil.pth: refusing to load: the pickle needs code to run \(posix.system\)"):
        load_torch_file(tmp_path / "evil.pth")
    assert not marker.exists()


class _Model(torch.nn.Module):
    pass


def test_a_pickled_module_is_refused_by_name(tmp_path: Path) -> None:
    torch.save({"model": _Model()}, tmp_path / "whole_model.pth")
    with pytest.raises(M2ptError, match=r"needs code to run \(tests.model.test_torchfile._Model\)"):
        load_torch_file(tmp_path / "whole_model.pth")


def test_an_image_is_not_a_checkpoint(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "photo.png")
    with pytest.raises(M2ptError) as info:
        load_torch_file(tmp_path / "photo.png")
    assert str(info.value) == (f"{tmp_path / 'photo.png'}: not a readable PyTorch checkpoint "
                               "(neither a torch.save zip archive nor a pickle)")


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy-pickle"])
@pytest.mark.parametrize("fraction", [0.05, 0.5, 0.99])
def test_truncated_files_say_so_without_library_text(tmp_path: Path, legacy: bool, fraction: float) -> None:
    full = tmp_path / "full.pth"
    torch.save({"model": {"w": torch.zeros(1000)}}, full, _use_new_zipfile_serialization=not legacy)
    data = full.read_bytes()
    cut = tmp_path / "cut.pth"
    cut.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(M2ptError) as info:
        load_torch_file(cut)
    assert str(info.value).startswith(f"{cut}: truncated or corrupt checkpoint")
    assert not any(word in str(info.value) for word in ("Errno", "miniz", "weights_only", "PytorchStreamReader"))
