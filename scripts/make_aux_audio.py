"""Train the demo's auxiliary ViT on another modality: synthetic audio, as log spectrograms.

Seeded and single-threaded, so the committed ``m2pt_deploy/assets/aux_audio_vit.safetensors``
is rebuilt with bit-identical weights on the same platform and library versions (checked; only
the order of the two metadata keys in the file header may differ):

    python scripts/make_aux_audio.py --out m2pt_deploy/assets/aux_audio_vit.safetensors

Eight sound classes (low / high tone, rising / falling chirp, tremolo, two-tone chord, noise
burst, click train) with random pitch, timing, loudness and background noise, 0.5 s at
2 kHz, as 16 × 16 log-magnitude spectrograms. The model has the demo target's blocks
(width 64, depth 4, MLP 256) and its own 16 × 16 / patch-4 input, which pathways never touch.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
from pathlib import Path

import numpy as np
import torch

from m2pt_deploy.families import ModelSpec
from m2pt_deploy.model.build import build_vanilla
from m2pt_deploy.model.checkpoint import load_checkpoint, save_checkpoint
from m2pt_deploy.train import TrainConfig, train

SAMPLE_RATE = 2000
SAMPLES = 1000
N_FFT = 30
HOP = 62
CLASSES = ("low tone", "high tone", "rising chirp", "falling chirp", "tremolo", "chord", "noise burst",
           "click train")
AUX_SPEC = ModelSpec(
    "vit_tiny_patch16_224",
    {"img_size": 16, "patch_size": 4, "in_chans": 1, "embed_dim": 64, "depth": 4, "num_heads": 1,
     "mlp_ratio": 4.0, "num_classes": len(CLASSES)},
    (1, 16, 16), (0.5,), (0.5,),
)


def _sound(label: int, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(SAMPLES) / SAMPLE_RATE
    start, length = rng.uniform(0.0, 0.2), rng.uniform(0.2, 0.3)
    envelope = ((t >= start) & (t < start + length)).astype(np.float64)
    f = rng.uniform(0.8, 1.2)
    if label == 0:
        wave = np.sin(2 * np.pi * 150 * f * t)
    elif label == 1:
        wave = np.sin(2 * np.pi * 700 * f * t)
    elif label in (2, 3):
        lo, hi = 100 * f, 900 * f
        sweep = lo + (hi - lo) * np.clip((t - start) / length, 0, 1)
        sweep = sweep if label == 2 else lo + hi - sweep
        wave = np.sin(2 * np.pi * np.cumsum(sweep) / SAMPLE_RATE)
    elif label == 4:
        wave = np.sin(2 * np.pi * 400 * f * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 12 * t))
    elif label == 5:
        wave = np.sin(2 * np.pi * 250 * f * t) + np.sin(2 * np.pi * 600 * f * t)
    elif label == 6:
        wave = rng.normal(size=SAMPLES)
    else:
        wave = (np.arange(SAMPLES) % int(SAMPLE_RATE / (20 * f)) == 0).astype(np.float64) * 4
    return wave * envelope * rng.uniform(0.5, 1.5) + rng.normal(scale=0.05, size=SAMPLES)


def spectrogram(wave: np.ndarray) -> np.ndarray:
    spec = torch.stft(torch.from_numpy(wave), N_FFT, hop_length=HOP, window=torch.hann_window(N_FFT,
                      dtype=torch.float64), return_complex=True).abs()[:16, :16]
    spec = torch.log1p(spec)
    return (spec / spec.max().clamp_min(1e-6)).numpy().astype(np.float32)


def make_dataset(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % len(CLASSES)
    x = np.stack([spectrogram(_sound(int(label), rng)) for label in y])[:, None]
    return x, y


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("m2pt_deploy/assets/aux_audio_vit.safetensors"))
    parser.add_argument("--samples", type=int, default=4000)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    # One thread: the result does not depend on the core count, and a 64-wide model gains
    # nothing from more (and loses a lot when the cores are shared).
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        x, y = make_dataset(args.samples, args.seed)
        np.savez(work / "audio.npz", x=x, y=y, classes=np.array(CLASSES))
        save_checkpoint(work / "init.safetensors", build_vanilla(AUX_SPEC).state_dict(), AUX_SPEC)
        config = TrainConfig(target=str(work / "init.safetensors"), data=str(work / "audio.npz"),
                             out_dir=str(work / "run"), epochs=args.epochs, batch_size=64, lr=1e-3,
                             warmup_epochs=2, val_split=0.2, seed=args.seed, device="cpu")
        result = train(config)
        best = load_checkpoint(result.best)
        extra = {"modality": "audio", "labels": list(CLASSES),
                 "made_by": f"scripts/make_aux_audio.py --samples {args.samples} --epochs {args.epochs} "
                            f"--seed {args.seed}",
                 "val_acc": best.extra["metrics"]["val_acc"],
                 "training": dataclasses.asdict(config) | {"target": None, "data": None, "out_dir": None}}
        save_checkpoint(args.out, best.state_dict, best.spec, extra=extra, force=True)
    print(f"wrote {args.out}: audio ViT, validation accuracy {extra['val_acc']:.3f}")


if __name__ == "__main__":
    main()
