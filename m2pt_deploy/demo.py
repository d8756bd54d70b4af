"""The ``make demo`` pipeline on real data that ships with scikit-learn: train → merge → export → verify.

Target: a small ViT on the 8 × 8 handwritten digits (1,797 images, 10 classes), trained
from a seeded initialisation. Auxiliary: the committed audio ViT
(``assets/aux_audio_vit.safetensors``, built by ``scripts/make_aux_audio.py`` on synthetic
spectrograms), the "different modality". The same run without the pathway, same seed and
budget, is the baseline the report compares against.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch

from m2pt_deploy.build import build_vanilla, load_strict
from m2pt_deploy.checkpoint import load_checkpoint, save_checkpoint
from m2pt_deploy.errors import M2ptError
from m2pt_deploy.export.onnx import OnnxFromCheckpoint, save_onnx
from m2pt_deploy.merge import merge_state_dict
from m2pt_deploy.train import TrainConfig, TrainResult, train
from m2pt_deploy.vit import ModelSpec

__all__ = ["AUX_ASSET", "DEMO_SPEC", "DemoResult", "demo_config", "run_demo", "write_digits"]

AUX_ASSET = Path(__file__).parent / "assets" / "aux_audio_vit.safetensors"
# Patch 2 on the native 8 × 8 digits: 16 tokens, the blocks of the audio aux (width 64, depth 4).
DEMO_SPEC = ModelSpec(
    "vit_tiny_patch16_224",
    {"img_size": 8, "patch_size": 2, "in_chans": 1, "embed_dim": 64, "depth": 4, "num_heads": 1,
     "mlp_ratio": 4.0, "num_classes": 10},
    (1, 8, 8), (0.5,), (0.5,),
)


@dataclasses.dataclass
class DemoResult:
    pathway: TrainResult
    baseline: TrainResult
    merged: Path
    onnx: Path
    report: Any


def write_digits(path: Path) -> Path:
    """scikit-learn's bundled digits as ``x`` [N, 1, 8, 8] in [0, 1] and ``y`` [N]."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None]
    np.savez(path, x=x, y=digits.target.astype(np.int64), classes=np.array([str(c) for c in range(10)]))
    return path


def demo_config(out: Path, *, epochs: int, seed: int, aux: bool) -> TrainConfig:
    return TrainConfig(
        target=str(out / "target_init.safetensors"), data=str(out / "digits.npz"),
        out_dir=str(out / ("pathway" if aux else "baseline")),
        aux=((str(AUX_ASSET), "audio"),) if aux else (), epochs=epochs, batch_size=64, lr=1e-3,
        lambda_lr=1e-2, warmup_epochs=2, weight_decay=0.05, clip_grad=1.0, val_split=0.2, seed=seed,
        device="cpu",
    )


def _merge(checkpoint: Path, out: Path) -> Path:
    ckpt = load_checkpoint(checkpoint)
    merged = merge_state_dict(ckpt.state_dict)
    load_strict(build_vanilla(ckpt.spec), merged, what="merged state dict")
    return save_checkpoint(out, merged, ckpt.spec, extra={**ckpt.extra, "merged_from": {"sha256": ckpt.sha256}},
                           force=True)


def run_demo(out: Path, *, epochs: int = 30, seed: int = 0, progress: bool = True) -> DemoResult:
    from m2pt_deploy.verify import verify_onnx

    if not AUX_ASSET.is_file():
        raise M2ptError("the demo's audio ViT is missing; rebuild it with scripts/make_aux_audio.py", AUX_ASSET)
    out.mkdir(parents=True, exist_ok=True)
    write_digits(out / "digits.npz")
    torch.manual_seed(seed)
    save_checkpoint(out / "target_init.safetensors", build_vanilla(DEMO_SPEC).state_dict(), DEMO_SPEC,
                    force=True)
    pathway = train(demo_config(out, epochs=epochs, seed=seed, aux=True), force=True, progress=progress)
    baseline = train(demo_config(out, epochs=epochs, seed=seed, aux=False), force=True, progress=progress)
    merged = _merge(pathway.best, out / "merged.safetensors")
    ckpt = load_checkpoint(pathway.best)
    onnx_path = save_onnx(OnnxFromCheckpoint(ckpt)(), out / "model.onnx", force=True)
    report = verify_onnx(ckpt, onnx_path)
    return DemoResult(pathway, baseline, merged, onnx_path, report)
