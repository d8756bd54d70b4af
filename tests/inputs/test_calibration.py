"""Which inputs calibrate a reduced-precision model and which verify it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from m2pt_deploy.errors import M2ptError
from m2pt_deploy.inputs.calibration import held_out_inputs, int8_data
from m2pt_deploy.model.checkpoint import load_checkpoint
from tests.tiny import TINY, TINY_AUDIO, TINY_POINT, TINY_VIDEO


@pytest.mark.parametrize("spec", [TINY, TINY_VIDEO, TINY_POINT], ids=["image", "video", "points"])
def test_held_out_inputs_fit_every_family(spec) -> None:
    """Photo tiles for RGB images; the family's own seeded inputs otherwise (a TensorRT engine of a
    video or point model is verified on those, not on tiles it cannot take)."""
    x = held_out_inputs(spec, 5)
    assert x.shape == (5, *spec.input_size) and x.dtype.name == "float32"
    assert (held_out_inputs(spec, 5) == x).all(), "seeded: the same inputs every time"


def test_user_data_is_split_into_held_out_and_calibration(trained_digits: tuple[Path, Path]) -> None:
    ckpt = load_checkpoint(trained_digits[0])
    data = int8_data(ckpt.spec, calib_data=trained_digits[1], calib_images=100, verify_images=300)
    assert data.held_out.shape == (300, 1, 8, 8) and data.calibration.shape == (100, 1, 8, 8)
    rows = {r.tobytes() for r in data.held_out}
    assert not any(r.tobytes() in rows for r in data.calibration)
    # normalised as training normalises: (x - 0.5) / 0.5 of pixels in [0, 1]
    assert data.held_out.min() >= -1.0 and data.held_out.max() <= 1.0 and data.held_out.min() < -0.9


def test_non_rgb_models_need_their_own_calibration_data() -> None:
    with pytest.raises(M2ptError, match="a 1-channel model needs --calib-data"):
        int8_data(TINY_AUDIO)


def test_too_few_inputs_for_the_held_out_set(tmp_path: Path) -> None:
    npz = tmp_path / "few.npz"
    np.savez(npz, x=np.random.default_rng(0).random((20, 1, 16, 48), dtype=np.float32))
    with pytest.raises(M2ptError, match=r"few.npz: 20 inputs: int8 needs more than the 256 held out"):
        int8_data(TINY_AUDIO, calib_data=npz)


