"""Which integer instructions a CPU has, and what that means for int8 models.

ONNX Runtime's x86 int8 GEMMs multiply unsigned 8-bit activations by signed 8-bit weights.
Without VNNI (AVX2, and AVX-512 without VNNI) they use ``VPMADDUBSW``, which adds each
pair of u8 × s8 products into a *saturating* int16: 2 × 255 × 127 = 64770 does not fit in
32767, so large activations meeting large weights are clipped and accuracy drops (ONNX
Runtime's and OpenVINO's quantization docs describe this). VNNI (``VPDPBUSD``) and AMX
accumulate in int32 and never saturate. The remedy for the older kernels is 7-bit
weights (|w| ≤ 64: 2 × 255 × 64 = 32640 fits), at a small cost in resolution; it is
applied only where the serving CPU needs it.

Flags come from ``/proc/cpuinfo`` (Linux, where this toolkit serves), read directly:
py-cpuinfo 9.0.0 returned no flags and no CPU name at all on the Firecracker VMs this
project runs on (0.26 s per call), which would silently make every CPU look like AVX2.
"""

from __future__ import annotations

import functools
import platform
from collections.abc import Iterable
from typing import Literal, get_args

__all__ = [
    "INT8_TARGETS",
    "Int8Target",
    "cpu_flags",
    "cpu_model",
    "int8_target",
    "saturates",
    "weaker_than",
]

Int8Target = Literal["avx2", "avx512", "vnni", "amx"]
#: From the weakest to the strongest integer path.
INT8_TARGETS: tuple[Int8Target, ...] = get_args(Int8Target)
# Flags that name each path (Linux /proc/cpuinfo spelling).
_TARGET_FLAGS: dict[Int8Target, tuple[str, ...]] = {
    "amx": ("amx_int8",),
    "vnni": ("avx512_vnni", "avx_vnni"),
    "avx512": ("avx512bw",),
    "avx2": ("avx2",),
}


def _cpuinfo_field(name: str) -> str | None:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(name):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


@functools.cache
def cpu_flags() -> frozenset[str]:
    """This CPU's instruction-set flags (empty where ``/proc/cpuinfo`` is not available)."""
    return frozenset((_cpuinfo_field("flags") or "").split())


@functools.cache
def cpu_model() -> str:
    return _cpuinfo_field("model name") or platform.processor() or platform.machine()


def int8_target(flags: Iterable[str] | None = None) -> Int8Target:
    """The strongest int8 path among ``flags`` (default: this CPU's); AVX2 is the floor."""
    have = cpu_flags() if flags is None else frozenset(flags)
    for target in reversed(INT8_TARGETS):
        if any(f in have for f in _TARGET_FLAGS[target]):
            return target
    return "avx2"


def saturates(target: Int8Target) -> bool:
    """Whether that path's u8 × s8 products can saturate int16 (then weights must be 7-bit)."""
    return INT8_TARGETS.index(target) < INT8_TARGETS.index("vnni")


def weaker_than(serving: Int8Target, quantized_for: Int8Target) -> bool:
    """Serving on a CPU that saturates a model quantized for one that does not loses accuracy."""
    return saturates(serving) and not saturates(quantized_for)
