"""Which inputs calibrate a reduced-precision model and which verify it.

RGB image models use the bundled photo tiles unless the user gives data; every other model
(1-channel images, spectrograms, clips, point clouds) needs the user's own inputs in its
layout (``--calib-data``), split into a held-out part that verifies and the rest that
calibrates. Checks that only need a fixed, distinct set of inputs (a reduced-precision
model's agreement when the user gave none) take :func:`held_out_inputs`.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from m2pt_deploy.errors import M2ptError
from m2pt_deploy.families import ModelSpec, family_of
from m2pt_deploy.inputs.photos import photo_tiles
from m2pt_deploy.inputs.preprocess import input_layout
from m2pt_deploy.inputs.user import load_user_inputs
from m2pt_deploy.vocabulary import CALIBRATION_SEED, VERIFY_IMAGES, VERIFY_SEED

__all__ = ["Int8Data", "held_out_inputs", "int8_data", "photo_calibrated", "require_calibration_data"]


@dataclasses.dataclass(frozen=True)
class Int8Data:
    """Inputs to calibrate on, and held-out inputs to verify on, with where they came from."""

    calibration: np.ndarray
    held_out: np.ndarray
    source: str


def int8_data(spec: ModelSpec, *, calib_data: str | os.PathLike[str] | None = None, calib_images: int = 256,
              verify_images: int = VERIFY_IMAGES) -> Int8Data:
    """The user's own inputs (split: held-out first, calibration after), or photo tiles for RGB models."""
    if calib_images < 1 or verify_images < 1:
        raise M2ptError(f"need at least 1 calibration and 1 verification input, got {calib_images} and "
                        f"{verify_images}")
    require_calibration_data(spec, calib_data)
    if calib_data is not None:
        data = load_user_inputs(calib_data, spec, count=calib_images + verify_images)
        if len(data) <= verify_images:
            raise M2ptError(f"{len(data)} inputs: int8 needs more than the {verify_images} held out for "
                            "verification (lower --verify-images, or add inputs)", calib_data)
        source = (f"held out of {os.fspath(calib_data)} (the first {verify_images} of a seeded shuffle; "
                  f"the other {len(data) - verify_images} calibrate)")
        return Int8Data(data[verify_images:], data[:verify_images], source)
    calibration = photo_tiles(spec.input_size, spec.mean, spec.std, count=calib_images, seed=CALIBRATION_SEED)
    return Int8Data(calibration, held_out_inputs(spec, verify_images), "held-out photo tiles")


def held_out_inputs(spec: ModelSpec, count: int = VERIFY_IMAGES) -> np.ndarray:
    """Inputs a reduced-precision model is verified on when the user gave none: held-out photo
    tiles for RGB image models, the family's seeded example inputs for any other."""
    if photo_calibrated(spec):
        return photo_tiles(spec.input_size, spec.mean, spec.std, count=count, seed=VERIFY_SEED)
    return family_of(spec).example_input(spec, count, seed=VERIFY_SEED).numpy()


def photo_calibrated(spec: ModelSpec) -> bool:
    """Whether the built-in photo tiles fit the model: RGB image models only."""
    return family_of(spec).modality == "image" and spec.input_size[0] == 3


def require_calibration_data(spec: ModelSpec, calib_data: str | os.PathLike[str] | None) -> None:
    """Refuse int8 for a model the built-in photos do not fit when no ``--calib-data`` is given.

    The family is known only once the checkpoint is read: callers check right after loading it,
    before the minutes of export.
    """
    if calib_data is not None or photo_calibrated(spec):
        return
    family = family_of(spec)
    modality = family.input_metadata(spec)["modality"]
    if modality == "image":
        what = f"a {spec.input_size[0]}-channel model needs --calib-data DIR|FILE.npz with its own inputs"
    else:
        model = "an AudioMAE ViT" if modality == "spectrogram" else f"a {family.title}"
        what = f"{model} needs --calib-data FILE.npz whose x holds its own {modality} inputs, {input_layout(spec)}"
    raise M2ptError(f"int8 calibrates on real inputs and the built-in calibration photos are RGB; {what}")
