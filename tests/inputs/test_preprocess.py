"""Arrays and pictures become model inputs the same way for training, calibration and verification."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from m2pt_deploy.families import ModelSpec
from m2pt_deploy.inputs.preprocess import array_transform, image_transform, input_layout, resizable
from tests.tiny import TINY, TINY_AUDIO, TINY_AUDIOMAE, TINY_POINT, TINY_VIDEO

IMAGES = [TINY, TINY_AUDIO, TINY_AUDIOMAE]
MODEL_READY = [TINY_VIDEO, TINY_POINT]


def _normalised(x: torch.Tensor, spec: ModelSpec) -> torch.Tensor:
    mean = torch.tensor(spec.mean).view(-1, 1, 1)
    std = torch.tensor(spec.std).view(-1, 1, 1)
    return (x - mean) / std


@pytest.mark.parametrize("spec", IMAGES, ids=["rgb", "grey", "spectrogram"])
def test_an_array_at_the_models_size_is_only_normalised(spec: ModelSpec) -> None:
    x = torch.rand(spec.input_size, generator=torch.Generator().manual_seed(0))
    assert torch.equal(array_transform(spec)(x), _normalised(x, spec))


@pytest.mark.parametrize(("spec", "given"), [(TINY, (3, 20, 50)), (TINY_AUDIO, (1, 8, 24)), (TINY_AUDIO, (1, 40, 40))],
                         ids=["rgb-upscaled", "grey-downscaled", "grey-other-aspect"])
def test_an_array_of_another_size_is_resized_then_normalised(spec: ModelSpec, given: tuple[int, ...]) -> None:
    # A flat picture stays flat when resized: each channel keeps its value, then is normalised.
    values = torch.linspace(0.2, 0.8, given[0]).view(-1, 1, 1)
    out = array_transform(spec)(values.expand(given).clone())
    assert tuple(out.shape) == spec.input_size
    want = _normalised(values.expand(spec.input_size), spec)
    torch.testing.assert_close(out, want, rtol=0, atol=1e-6)


def test_resizing_keeps_a_pictures_layout() -> None:
    # Left half dark, right half bright: still so after resizing (never flipped or transposed).
    x = torch.zeros(1, 8, 24)
    x[..., 12:] = 1.0
    out = array_transform(TINY_AUDIO)(x) * TINY_AUDIO.std[0] + TINY_AUDIO.mean[0]
    assert out[..., :20].max() < 0.05 and out[..., 28:].min() > 0.95


@pytest.mark.parametrize("spec", MODEL_READY, ids=["video", "points"])
def test_model_ready_inputs_pass_untouched(spec: ModelSpec) -> None:
    x = torch.randn(spec.input_size)
    assert array_transform(spec)(x) is x
    assert not resizable(spec)


@pytest.mark.parametrize("spec", IMAGES, ids=["rgb", "grey", "spectrogram"])
def test_pictures_and_spectrograms_are_resizable(spec: ModelSpec) -> None:
    assert resizable(spec)


@pytest.mark.parametrize(("spec", "layout"), [
    (TINY, "[N, 3, 32, 32] (batch, channels, height, width)"),
    (TINY_AUDIOMAE, "[N, 1, 1024, 128] (batch, channels, height, width)"),
    (TINY_VIDEO, "[N, 3, 4, 32, 32] (batch, channels, frames, height, width)"),
    (TINY_POINT, "[N, 128, 3] (batch, points, xyz)"),
], ids=["image", "spectrogram", "video", "points"])
def test_input_layout_names_shape_and_axes(spec: ModelSpec, layout: str) -> None:
    assert input_layout(spec) == layout


def test_train_and_eval_image_transforms_give_the_models_input() -> None:
    from PIL import Image

    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 70), dtype=np.uint8))
    torch.manual_seed(0)
    for train in (True, False):
        x = image_transform(TINY_AUDIO, train=train)(image.convert("L"))
        assert tuple(x.shape) == TINY_AUDIO.input_size and x.dtype == torch.float32
        assert torch.isfinite(x).all()
