"""What int8 costs in accuracy, on trained models: the demo's digits ViT, trained here, and the shipped
small model of every other family on fresh inputs of its learnable task.

A randomly initialised ViT has no accuracy to lose, and no ImageNet-trained M2PT model is
available offline; the demo's pathway ViT on scikit-learn's handwritten digits is a trained
model on real labelled data. It is merged and exported like any checkpoint, quantized with
calibration on its own training split, and both models are scored on the held-out split.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from m2pt_deploy.cpu import Int8Target, int8_target
from m2pt_deploy.errors import M2ptError
from m2pt_deploy.export.int8.cpu import cpu_int8_onnx
from m2pt_deploy.export.onnx import OnnxFromCheckpoint, save_onnx
from m2pt_deploy.export.optimize import save_optimized
from m2pt_deploy.inputs.datasets import load_data
from m2pt_deploy.inputs.learnable import learnable_task
from m2pt_deploy.inputs.preprocess import array_inputs
from m2pt_deploy.model.build import build_vanilla
from m2pt_deploy.model.checkpoint import load_checkpoint, save_checkpoint
from m2pt_deploy.pipelines.demo import AUX_ASSET, DEMO_SPEC, demo_config, write_digits
from m2pt_deploy.pipelines.small_models import small_model
from m2pt_deploy.train import train
from m2pt_deploy.verify.accuracy import accuracy_delta

__all__ = ["CALIBRATION_IMAGES", "digits_int8_accuracy", "small_model_int8_accuracy"]

CALIBRATION_IMAGES = 256


def _arrays(dataset: Any) -> tuple[np.ndarray, np.ndarray]:
    items = [dataset[i] for i in range(len(dataset))]
    return np.stack([x.numpy() for x, _ in items]), np.array([y for _, y in items])


def digits_int8_accuracy(out: Path, *, epochs: int, seed: int = 0) -> dict[str, Any]:
    """Train the digits pathway ViT for ``epochs``, then fp32 vs int8 top-1 on its validation split."""
    if epochs < 1:
        raise M2ptError(f"accuracy needs at least one training epoch, got {epochs}")
    if not AUX_ASSET.is_file():
        raise M2ptError("the demo's audio ViT is missing; rebuild it with scripts/make_aux_audio.py", AUX_ASSET)
    out.mkdir(parents=True, exist_ok=True)
    write_digits(out / "digits.npz")
    torch.manual_seed(seed)
    save_checkpoint(out / "target_init.safetensors", build_vanilla(DEMO_SPEC).state_dict(), DEMO_SPEC, force=True)
    config = demo_config(out, epochs=epochs, seed=seed, aux=True)
    result = train(config, force=True, progress=False)
    ckpt = load_checkpoint(result.best)
    split = load_data(config.data, ckpt.spec, val_split=config.val_split, seed=config.seed)
    x_train, _ = _arrays(split.train)
    x_val, y_val = _arrays(split.val)
    proto = OnnxFromCheckpoint(ckpt)()
    fp32 = save_onnx(proto, out / "digits.onnx", force=True)
    int8 = save_optimized(cpu_int8_onnx(proto, x_train[:CALIBRATION_IMAGES]), out / "digits.int8.onnx", force=True)
    scores = accuracy_delta(fp32, int8, x_val, y_val)
    return {**scores, "dataset": "scikit-learn digits (8×8 handwritten, 10 classes)",
            "model": f"demo pathway ViT, {epochs} epochs, calibrated on {min(len(x_train), CALIBRATION_IMAGES)} "
                     "of its training images",
            "best_val_acc_torch": result.best_val_acc}


def small_model_int8_accuracy(modality: str, out: Path, *, count: int = 256, calib: int = 128, seed: int = 7,
                              target: Int8Target | None = None) -> dict[str, Any]:
    """fp32 vs int8 top-1 of the shipped small model of ``modality`` ("video", "points", "spectrogram")
    on ``count`` fresh inputs of its learnable task, calibrated on ``calib`` others; ``target``: the
    CPU integer path quantized for (default: this machine's)."""
    if count < 1 or calib < 1:
        raise M2ptError(f"accuracy needs at least one scored and one calibration input, got {count} and {calib}")
    path = small_model(modality)
    ckpt = load_checkpoint(path)
    scored = learnable_task(ckpt.spec, count, seed=seed)
    calibration = learnable_task(ckpt.spec, calib, seed=seed + 1)

    out.mkdir(parents=True, exist_ok=True)
    proto = OnnxFromCheckpoint(ckpt)()
    fp32 = save_onnx(proto, out / f"{modality}.onnx", force=True)
    quantized = cpu_int8_onnx(proto, array_inputs(ckpt.spec, calibration.x), target=target)
    int8 = save_optimized(quantized, out / f"{modality}.int8.onnx", force=True)
    scores = accuracy_delta(fp32, int8, array_inputs(ckpt.spec, scored.x), scored.y)
    return {**scores, "target": target or int8_target(), "dataset": f"{scored.task}, seeded, never seen in training",
            "model": f"the shipped small {modality} model ({path.name}), calibrated on {calib} other inputs "
                     "of its task"}
