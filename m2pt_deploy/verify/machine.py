"""Name the machine a measurement was taken on: a figure without it means little."""

from __future__ import annotations

import os
import platform
from importlib import metadata
from typing import Any

__all__ = ["machine_info", "machine_line", "usable_cpus"]

_PACKAGES = ("torch", "timm", "onnx", "onnxruntime", "onnxruntime-gpu", "polygraphy", "numpy")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


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
        "cpu": _cpu_model(),
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
    return (
        f"{info['cpu']}, {info['usable_cpus']} usable of {info['logical_cpus']} logical CPUs, "
        f"{info['platform']}; Python {info['python']}, torch {v.get('torch', '?')}, "
        f"onnxruntime {ort}, timm {v.get('timm', '?')}"
    )
