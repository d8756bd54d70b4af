"""The user's own inputs (``--calib-data``) read in each family's layout, and refused as one line naming
the file. (Refusals the CLI tests already show end to end — a missing file, a text file, no 'x', NaN,
wrong channels, another clip or cloud layout, a transposed spectrogram — are not repeated here.)"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from m2pt_deploy.errors import M2ptError
from m2pt_deploy.families import ModelSpec
from m2pt_deploy.inputs.preprocess import array_transform
from m2pt_deploy.inputs.user import load_user_inputs
from tests.tiny import TINY, TINY_AUDIO, TINY_AUDIOMAE, TINY_POINT, TINY_VIDEO, write_image_folder


def _npz(path: Path, **arrays: object) -> Path:
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return path


def _rows(n: int, shape: tuple[int, ...]) -> np.ndarray:
    """Row i is filled with i: which rows were picked can be read off the result."""
    return np.broadcast_to(np.arange(n, dtype=np.float32).reshape(n, *[1] * len(shape)), (n, *shape)).copy()


def _refused(path: Path, spec: ModelSpec, fragment: str) -> M2ptError:
    with pytest.raises(M2ptError) as e:
        load_user_inputs(path, spec, count=4)
    text = str(e.value)
    assert text.startswith(f"{path}: ") and fragment in text and "\n" not in text, text
    return e.value


# --- what is read ---------------------------------------------------------------------------------

@pytest.mark.parametrize("spec", [TINY_VIDEO, TINY_POINT], ids=["video", "points"])
def test_model_ready_inputs_come_back_as_they_are(tmp_path: Path, spec: ModelSpec) -> None:
    x = np.random.default_rng(0).standard_normal((5, *spec.input_size)).astype(np.float64)
    got = load_user_inputs(_npz(tmp_path / "x.npz", x=x), spec, count=10)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, x.astype(np.float32))


def test_an_audiomae_spectrogram_is_normalised_at_its_own_size(tmp_path: Path) -> None:
    x = np.random.default_rng(0).standard_normal((2, *TINY_AUDIOMAE.input_size)).astype(np.float32)
    got = load_user_inputs(_npz(tmp_path / "spec.npz", x=x), TINY_AUDIOMAE, count=2)
    (mean,), (std,) = TINY_AUDIOMAE.mean, TINY_AUDIOMAE.std
    np.testing.assert_array_equal(got, (x - np.float32(mean)) / np.float32(std))


@pytest.mark.parametrize(("spec", "x"), [
    (TINY, np.random.default_rng(1).random((6, 3, 20, 24))),
    (TINY_AUDIO, np.random.default_rng(2).integers(0, 256, (6, 10, 30), dtype=np.uint8)),  # [N, H, W], integers
], ids=["rgb-nchw", "grey-nhw-uint8"])
def test_picture_arrays_are_resized_and_normalised_as_training_reads_them(tmp_path, spec, x) -> None:
    got = load_user_inputs(_npz(tmp_path / "x.npz", x=x), spec, count=6)
    assert got.shape == (6, *spec.input_size) and got.dtype == np.float32
    transform = array_transform(spec)
    rows = x if x.ndim == 4 else x[:, None]
    want = np.stack([transform(torch.from_numpy(r.astype(np.float32))).numpy() for r in rows])
    np.testing.assert_array_equal(got, want)


def test_a_seeded_choice_of_count_rows_in_file_order(tmp_path: Path) -> None:
    path = _npz(tmp_path / "x.npz", x=_rows(20, TINY_VIDEO.input_size))
    picks = {}
    for seed in (0, 1):
        got = load_user_inputs(path, TINY_VIDEO, count=5, seed=seed)
        picks[seed] = [int(r.flat[0]) for r in got]
        assert len(set(picks[seed])) == 5 and picks[seed] == sorted(picks[seed])
        assert [int(r.flat[0]) for r in load_user_inputs(path, TINY_VIDEO, count=5, seed=seed)] == picks[seed]
    assert picks[0] != picks[1]
    assert len(load_user_inputs(path, TINY_VIDEO, count=50)) == 20  # fewer than asked: all of them


@pytest.mark.parametrize("spec", [TINY, TINY_AUDIO], ids=["rgb", "grey"])
def test_an_image_folder_is_searched_recursively(tmp_path: Path, spec: ModelSpec) -> None:
    from PIL import Image

    root = write_image_folder(tmp_path / "photos", classes=("a", "b"), per_class=3)
    (root / "b" / "deeper").mkdir()
    Image.new("RGB", (40, 30), (10, 200, 30)).save(root / "b" / "deeper" / "UPPER.PNG")
    (root / "notes.txt").write_text("not an image")
    got = load_user_inputs(root, spec, count=100)
    assert got.shape == (7, *spec.input_size) and got.dtype == np.float32 and np.isfinite(got).all()
    assert len(load_user_inputs(root, spec, count=2)) == 2


# --- what is refused ------------------------------------------------------------------------------

class _Touch:
    """Unpickling this creates ``marker``: proof that an object array was unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[Path]]:
        return (Path.touch, (self.marker,))


def test_object_arrays_are_refused_never_unpickled(tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"
    path = _npz(tmp_path / "x.npz", x=np.array([_Touch(marker), 1.0], dtype=object))
    _refused(path, TINY, "not a readable .npz file")
    assert not marker.exists()


def test_a_truncated_or_damaged_npz_is_refused(tmp_path: Path) -> None:
    whole = _npz(tmp_path / "whole.npz", x=np.random.default_rng(0).random((50, 3, 32, 32)))
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    _refused(truncated, TINY, "not a readable .npz file")
    for seed in range(4):  # damaged deflate data fails in zipfile, zlib or numpy's header parser
        np.savez_compressed(tmp_path / "c.npz", x=np.random.default_rng(seed).random((50, 3, 32, 32)))
        data = (tmp_path / "c.npz").read_bytes()
        damaged = tmp_path / f"damaged{seed}.npz"
        damaged.write_bytes(data[:200] + bytes(100) + data[300:])
        _refused(damaged, TINY, "not a readable .npz file")


@pytest.mark.parametrize(("x", "fragment"), [
    (np.zeros((0, 3, 32, 32), np.float32), "'x' must be a non-empty numeric array, got float32 [0, 3, 32, 32]"),
    (np.array(["a", "b"]), "'x' must be a non-empty numeric array, got <U1 [2]"),
    (np.full((4, 3, 32, 32), np.inf, np.float32), "'x' contains NaN or Inf"),
    (np.zeros((4, 3, 2, 32, 32), np.float32),
     "'x' is [4, 3, 2, 32, 32], a ViT calibrates on [N, C, H, W] (or [N, H, W])"),
    (np.zeros((4, 32), np.float32), "'x' is [4, 32], a ViT calibrates on [N, C, H, W]"),
], ids=["empty", "strings", "inf", "five-axes", "flat"])
def test_arrays_an_image_model_cannot_take(tmp_path: Path, x: np.ndarray, fragment: str) -> None:
    _refused(_npz(tmp_path / "x.npz", x=x), TINY, fragment)


def test_a_grey_model_refuses_rgb_arrays_and_a_spectrogram_model_refuses_other_sizes(tmp_path: Path) -> None:
    _refused(_npz(tmp_path / "rgb.npz", x=np.zeros((4, 3, 16, 48), np.float32)), TINY_AUDIO,
             "'x' is [4, 3, 16, 48] with 3 channels, the model takes [N, 1, 16, 48]")
    # A grey picture of another size is resized for a ViT, never for AudioMAE's spectrograms.
    short = _npz(tmp_path / "short.npz", x=np.zeros((4, 1, 512, 128), np.float32))
    assert load_user_inputs(short, TINY_AUDIO, count=4).shape == (4, *TINY_AUDIO.input_size)
    _refused(short, TINY_AUDIOMAE, "'x' is [4, 1, 512, 128], an AudioMAE spectrogram model takes [N, 1, 1024, 128]")


def test_model_ready_families_need_an_npz(tmp_path: Path) -> None:
    (tmp_path / "clips").mkdir()
    _refused(tmp_path / "clips", TINY_VIDEO, "a VideoMAE V2 calibrates on an .npz of model-ready inputs, "
             "x [N, 3, 4, 32, 32] (batch, channels, frames, height, width), not a folder")
    np.save(tmp_path / "points.npy", np.zeros((4, 128, 3), np.float32))
    _refused(tmp_path / "points.npy", TINY_POINT, "calibration data must be an .npz with x [N, 128, 3]")


def test_an_unreadable_image_in_the_folder_is_named(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "photos", classes=("a",), per_class=2)
    broken = root / "a" / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(M2ptError) as e:
        load_user_inputs(root, TINY, count=10)
    assert str(e.value) == f"{broken}: cannot read calibration image (UnidentifiedImageError)"
