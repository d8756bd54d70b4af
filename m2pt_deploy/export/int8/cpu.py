"""int8 for CPU serving: the merged fp32 export with Q/DQ, calibrated on real inputs, then
optimized offline by ONNX Runtime, which fuses each Q/DQ-wrapped MatMul into an integer
kernel (VNNI where the CPU has it).

The Q/DQ placement and calibration are the TensorRT path's (``quantize.py``): symmetric,
per-channel weights, per-tensor activations, only weight-carrying MatMuls quantized, so
attention's activation-by-activation MatMuls, LayerNorm, Softmax and GELU stay in fp32.

Every family quantizes: RGB image models calibrate on photo tiles by default, the others on
the user's own inputs in their model-ready layout (``--calib-data``: spectrograms, clips,
point clouds), a held-out part of which verifies the result.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import numpy as np
import onnx

from m2pt_deploy.cpu import Int8Target
from m2pt_deploy.errors import M2ptError
from m2pt_deploy.export.graph import prepare_graph
from m2pt_deploy.export.int8.calibration import calibration_tiles, input_layout, load_calibration_data
from m2pt_deploy.export.int8.quantize import quantize_qdq
from m2pt_deploy.export.optimize import optimize_onnx
from m2pt_deploy.families import ModelSpec, family_of
from m2pt_deploy.metadata import PRECISION_KEY
from m2pt_deploy.vocabulary import CALIBRATION_SEED, VERIFY_IMAGES, VERIFY_SEED

__all__ = ["VERIFY_IMAGES", "Int8Data", "cpu_int8_onnx", "int8_data", "photo_calibrated", "photo_tiles",
           "require_calibration_data"]

_CALIBRATION_BATCH = 8


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
        data = load_calibration_data(calib_data, spec, count=calib_images + verify_images)
        if len(data) <= verify_images:
            raise M2ptError(f"{len(data)} inputs: int8 needs more than the {verify_images} held out for "
                            "verification (lower --verify-images, or add inputs)", calib_data)
        source = (f"held out of {os.fspath(calib_data)} (the first {verify_images} of a seeded shuffle; "
                  f"the other {len(data) - verify_images} calibrate)")
        return Int8Data(data[verify_images:], data[:verify_images], source)
    calibration = photo_tiles(spec.input_size, spec.mean, spec.std, count=calib_images, seed=CALIBRATION_SEED)
    held_out = photo_tiles(spec.input_size, spec.mean, spec.std, count=verify_images, seed=VERIFY_SEED)
    return Int8Data(calibration, held_out, "held-out photo tiles")


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


def photo_tiles(input_size: tuple[int, ...], mean: Sequence[float], std: Sequence[float], *,
                count: int, seed: int = CALIBRATION_SEED) -> np.ndarray:
    return calibration_tiles(input_size, mean, std, count=count, seed=seed)


def cpu_int8_onnx(proto: onnx.ModelProto, calibration: np.ndarray, *, optimize: bool = True,
                  target: Int8Target | None = None) -> onnx.ModelProto:
    """A Q/DQ int8 copy of an fp32 export; ``optimize``: ONNX Runtime's offline fusions applied.

    ``target``: the CPU integer path it will serve on (default: this machine's).
    """
    quantized = quantize_qdq(prepare_graph(proto), "int8", calibration, batch_size=_CALIBRATION_BATCH,
                             target=target)
    PRECISION_KEY.set(quantized, "int8")
    return optimize_onnx(quantized, attention=None) if optimize else quantized
