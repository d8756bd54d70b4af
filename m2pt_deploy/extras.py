"""Optional backends: whether they are installed, asked without importing them (instant)."""

from __future__ import annotations

import importlib.util

from m2pt_deploy.errors import M2ptError

__all__ = ["require_onnxruntime", "tensorrt_importable"]


def require_onnxruntime(why: str) -> None:
    """Refuse before any work when ONNX Runtime (an extra) is missing, naming the extra to install."""
    if importlib.util.find_spec("onnxruntime") is None:
        raise M2ptError(f"{why} needs ONNX Runtime, which is not installed: pip install 'm2pt-deploy[cpu]' "
                        "(or 'm2pt-deploy[gpu]' on a CUDA machine)")


def tensorrt_importable() -> bool:
    return importlib.util.find_spec("tensorrt") is not None
