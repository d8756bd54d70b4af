"""The export options: their words, defaults and pure checks, importable without torch or onnx.

Command-line help is built from these before any heavy import, so ``--help`` is instant;
the modules that implement each option import them from here.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Literal, get_args

from m2pt_deploy.errors import M2ptError

__all__ = ["API_PATHS", "CALIBRATION_SEED", "DEFAULT_OPSET", "DYNAMIC_BATCH", "MIN_OPSET", "MAX_OPT_LEVEL",
           "BatchSpec", "check_build_options", "parse_batch", "DYNAMIC_BATCH_RANGE", "FORMATS", "ONNX_PRECISIONS",
           "PRECISIONS", "VERIFY_IMAGES", "VERIFY_SEED", "ApiPath", "EnginePrecision", "FloatPrecision",
           "LowPrecision", "OnnxPrecision"]

FORMATS = ("onnx", "trt", "triton")
# The precision words, one home: every module that takes a precision types it with one of these.
#: Every precision an engine can be built in (TensorRT).
EnginePrecision = Literal["fp32", "fp16", "bf16", "int8", "fp8"]
#: The precisions an ONNX file for ONNX Runtime is written in (int8: Q/DQ for CPU serving).
OnnxPrecision = Literal["fp32", "fp16", "int8"]
#: What the plain (float) export writes before any quantization.
FloatPrecision = Literal["fp32", "fp16"]
#: The mixed precisions (fp32 LayerNorm, Softmax and residual adds; the rest lower).
LowPrecision = Literal["fp16", "bf16"]
PRECISIONS: tuple[str, ...] = get_args(EnginePrecision)
ONNX_PRECISIONS: tuple[str, ...] = get_args(OnnxPrecision)
#: How TensorRT was told the precision: the ONNX's own types, or builder flags (TensorRT 10).
ApiPath = Literal["strong-typing", "builder-flags"]
API_PATHS: tuple[str, ...] = get_args(ApiPath)
#: Seeds of the calibration tiles and of the tiles that verify a quantized model: different, so that
#: verification is held out (the CPU int8 export and the TensorRT engine ONNX share them).
CALIBRATION_SEED, VERIFY_SEED = 0, 1
DEFAULT_OPSET = 18
#: The oldest opset the exporter writes (LayerNormalization is a standard op from 17).
MIN_OPSET = 17
#: The batch range of a dynamic-batch export: MIN, OPT, MAX (TensorRT's default profile).
DYNAMIC_BATCH_RANGE = (1, 1, 64)
# Enough held-out inputs that an agreement rate means something: one flip is 0.4%.
VERIFY_IMAGES = 256
#: TensorRT builder optimization levels run 0 to this.
MAX_OPT_LEVEL = 5


@dataclasses.dataclass(frozen=True)
class BatchSpec:
    """A fixed batch (``min == opt == max``) or a dynamic range with an optimum (TensorRT profiles)."""

    min: int
    opt: int
    max: int

    @property
    def dynamic(self) -> bool:
        return not (self.min == self.opt == self.max)

    def __str__(self) -> str:
        return str(self.min) if not self.dynamic else f"{self.min}:{self.opt}:{self.max}"


DYNAMIC_BATCH = BatchSpec(*DYNAMIC_BATCH_RANGE)


def parse_batch(text: str) -> BatchSpec:
    """``N`` (static) or ``MIN:OPT:MAX`` (dynamic), all positive, ``MIN <= OPT <= MAX``."""
    parts = text.split(":")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise M2ptError(f"--batch {text!r}: expected N or MIN:OPT:MAX with whole numbers") from None
    if len(values) == 1:
        values *= 3
    if len(values) != 3 or any(v < 1 for v in values):
        raise M2ptError(f"--batch {text!r}: expected N or MIN:OPT:MAX, each at least 1")
    lo, opt, hi = values
    if not lo <= opt <= hi:
        raise M2ptError(f"--batch {text!r}: needs MIN <= OPT <= MAX, got {lo} > {opt} > {hi}"
                        if lo > opt > hi else f"--batch {text!r}: needs MIN <= OPT <= MAX")
    return BatchSpec(lo, opt, hi)


def check_build_options(precision: str, workspace_gb: float | None,
                        timing_cache: str | os.PathLike[str] | None, opt_level: int | None) -> None:
    """Refuse bad build options before any export work starts."""
    if precision not in PRECISIONS:
        raise M2ptError(f"--precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if workspace_gb is not None and not workspace_gb > 0:
        raise M2ptError(f"--workspace {workspace_gb}: must be a positive number of GiB")
    if opt_level is not None and not 0 <= opt_level <= MAX_OPT_LEVEL:
        raise M2ptError(f"--opt-level {opt_level}: TensorRT's builder optimization level is "
                        f"0 to {MAX_OPT_LEVEL}")
    if timing_cache is not None and Path(timing_cache).is_dir():
        raise M2ptError("--timing-cache is a directory; give a file", timing_cache)
