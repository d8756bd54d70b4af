"""Accuracy on labelled images, fp32 against int8: what quantization costs, not just how often
the two agree."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from m2pt_deploy.errors import M2ptError
from m2pt_deploy.runtime.sessions import cpu_session

__all__ = ["accuracy_delta", "predict"]


def predict(onnx_path: str | os.PathLike[str], images: np.ndarray, *, batch: int = 64) -> np.ndarray:
    """Top-1 class per image, the model run the way a CPU server runs it."""
    session = cpu_session(onnx_path)
    name = session.get_inputs()[0].name
    x = np.ascontiguousarray(images, dtype=np.float32)
    logits = [session.run(None, {name: x[i:i + batch]})[0] for i in range(0, len(x), batch)]
    return np.concatenate(logits).argmax(axis=1)


def accuracy_delta(fp32_onnx: str | os.PathLike[str], int8_onnx: str | os.PathLike[str], images: np.ndarray,
                   labels: np.ndarray) -> dict[str, Any]:
    """Top-1 accuracy of both models on ``images``, their difference, and their agreement."""
    if len(images) != len(labels) or len(images) == 0:
        raise M2ptError(f"need as many labels as images, at least one: {len(images)} images, {len(labels)} labels")
    ref, cand = predict(fp32_onnx, images), predict(int8_onnx, images)
    y = np.asarray(labels)
    fp32, int8 = float((ref == y).mean()), float((cand == y).mean())
    return {"images": len(y), "fp32_top1": fp32, "int8_top1": int8, "delta": int8 - fp32,
            "agreement": float((ref == cand).mean())}
