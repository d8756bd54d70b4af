"""What counts as equivalent, per precision: one table, read by every numeric check."""

from __future__ import annotations

import dataclasses
from typing import Any

from m2pt_deploy.errors import M2ptError
from m2pt_deploy.verify.metrics import ErrorStats

__all__ = ["BITWISE", "ENGINE_TOLERANCES", "INT8_CPU", "PROBE_HEAD", "TOLERANCES", "Tolerance", "engine_tolerance",
           "tolerance_for"]



@dataclasses.dataclass(frozen=True)
class Tolerance:
    """Bounds a candidate must meet; ``None`` leaves a figure unchecked."""

    label: str
    bitwise: bool = False
    max_abs: float | None = None
    min_cosine: float | None = None
    min_top1: float = 1.0

    def failures(self, stats: ErrorStats) -> list[str]:
        """What is out of bounds, both values named; empty when within tolerance."""
        out: list[str] = []
        if not stats.finite:
            out.append("non-finite values")
        if self.bitwise and not stats.bitwise_equal:
            out.append(f"not bit-identical (max abs {stats.max_abs:.1e})")
        # ``not a <= b`` rather than ``a > b`` so that a NaN fails.
        if self.max_abs is not None and not stats.max_abs <= self.max_abs:
            out.append(f"max abs {stats.max_abs:.1e} > {self.max_abs:.0e}")
        if self.min_cosine is not None and not stats.cosine >= self.min_cosine:
            out.append(f"cosine {stats.cosine:.6f} < {self.min_cosine}")
        if not stats.top1_rate >= self.min_top1:
            out.append(f"top-1 {stats.top1_agree}/{stats.top1_total} < {self.min_top1:.0%}")
        return out

    def describe(self) -> str:
        parts = ["bit-identical"] if self.bitwise else []
        if self.max_abs is not None:
            parts.append(f"max abs <= {self.max_abs:.0e}")
        if self.min_cosine is not None:
            parts.append(f"cosine >= {self.min_cosine}")
        parts.append("identical top-1" if self.min_top1 >= 1.0 else f"top-1 >= {self.min_top1:.0%}")
        return ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance("fp32", max_abs=1e-4, min_top1=1.0),
    "fp16": Tolerance("fp16", min_cosine=0.999, min_top1=0.99),
    "int8": Tolerance("int8", min_top1=0.98),
}
# TensorRT engines (and the reduced-precision ONNX they are built from), per builder precision.
ENGINE_TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance("tensorrt fp32", max_abs=1e-3, min_top1=0.0),
    "fp16": TOLERANCES["fp16"],
    "bf16": Tolerance("bf16", min_cosine=0.999, min_top1=0.99),
    "int8": TOLERANCES["int8"],
    "fp8": Tolerance("fp8", min_top1=0.98),
}
# int8 for ONNX Runtime on CPU, judged on held-out real inputs against the fp32 model.
INT8_CPU = Tolerance("int8 cpu", min_top1=0.99)
# The pathway fold is the forward pass's own arithmetic: merged and unmerged agree bit for bit.
BITWISE = Tolerance("bitwise", bitwise=True)
# Folding the linear-probe BatchNorm into the head changes rounding (see merge.fold_probe_head).
PROBE_HEAD = Tolerance("probe-head fold", max_abs=1e-5)


def tolerance_for(precision: str) -> Tolerance:
    try:
        return TOLERANCES[precision]
    except KeyError:
        raise M2ptError(
            f"no tolerance for precision {precision!r}; known: {', '.join(TOLERANCES)}"
        ) from None


def engine_tolerance(precision: str) -> Tolerance:
    try:
        return ENGINE_TOLERANCES[precision]
    except KeyError:
        raise M2ptError(f"no tolerance for precision {precision!r}; known: "
                        f"{', '.join(ENGINE_TOLERANCES)}") from None
