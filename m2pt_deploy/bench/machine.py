"""Name the machine a measurement was taken on: a figure without it means little."""

from __future__ import annotations

import os
import platform
from importlib import metadata
from typing import Any

from m2pt_deploy.cpu import cpu_flags, cpu_model, int8_target

__all__ = ["machine_info", "machine_line", "usable_cpus"]

# The instruction-set flags that change numerics or speed of what this toolkit runs.
_ISA_FLAGS = frozenset({"avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni",
                        "avx512_bf16", "amx_int8", "amx_bf16", "amx_tile"})
_PACKAGES = ("torch", "timm", "onnx", "onnxruntime", "onnxruntime-gpu", "polygraphy", "numpy")


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _versions() -> dict[str, str]:
    out = {}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def machine_info() -> dict[str, Any]:
    import torch

    return {
        "cpu": cpu_model(),
        "cpu_flags": sorted(f for f in cpu_flags() if f in _ISA_FLAGS),
        "int8_target": int8_target(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable_cpus(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": _versions(),
    }


def machine_line(info: dict[str, Any]) -> str:
    v = info["versions"]
    ort = v.get("onnxruntime") or v.get("onnxruntime-gpu", "?")
    flags = " ".join(info.get("cpu_flags", [])) or "no AVX2"
    return (
        f"{info['cpu']} ({flags}), {info['usable_cpus']} usable of {info['logical_cpus']} logical CPUs, "
        f"{info['platform']}; Python {info['python']}, torch {v.get('torch', '?')}, "
        f"onnxruntime {ort}, timm {v.get('timm', '?')}"
    )
