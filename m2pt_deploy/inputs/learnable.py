"""A small labelled task per family, made from data that ships in installed packages.

int8 agreement, accuracy deltas and fast paths mean little on random weights (a random model's
top-2 logits are near ties, so any rounding flips them). Each family gets a task a small model
learns in minutes on a CPU, built from scikit-learn's bundled digits or from geometry and
signals synthesized here, with no download:

- ``image``: the 8 × 8 handwritten digits (10 classes), as ``m2pt-train`` reads images: pixels
  in [0, 1], resized and normalised by training.
- ``video``: a digit fading in, fading out, blinking or holding still (4 classes; fading in and
  out differ only in the order of the frames), normalised, ``[N, C, T, H, W]``.
- ``points``: clouds on the surface of a sphere, cube, cylinder or cone (4 classes), randomly
  rotated and scaled to the unit sphere as Point-MAE's loaders scale them, ``[N, P, 3]``.
- ``spectrogram``: one-second sounds — a low tone, a high tone, a rising chirp, a noise burst
  (4 classes), at a random place in the clip and over quiet noise — as raw log-mel filterbanks
  ``[N, 1, frames, mel bins]`` (time × frequency, AudioMAE's layout; training normalises them).

Every generator is seeded and returns ``(x, y, classes)`` in the layout an ``.npz`` for
``m2pt-train --data`` and ``--calib-data`` holds.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from m2pt_deploy.errors import M2ptError
from m2pt_deploy.families import ModelSpec, family_of

__all__ = ["LabelledInputs", "learnable_task"]

_CHANGES = ("fading in", "fading out", "blinking", "holding still")
_SOLIDS = ("sphere", "cube", "cylinder", "cone")
_SOUNDS = ("low tone", "high tone", "rising chirp", "noise burst")
# Kaldi's fbank as AudioMAE computes it: 16 kHz, 25 ms frames every 10 ms, a 512-point FFT.
_RATE, _FRAME, _SHIFT, _FFT = 16000, 400, 160, 512


@dataclasses.dataclass(frozen=True)
class LabelledInputs:
    """``x`` in the layout ``m2pt-train`` reads, ``y`` its labels, ``classes`` their names."""

    x: np.ndarray
    y: np.ndarray
    classes: tuple[str, ...]
    task: str


def learnable_task(spec: ModelSpec, count: int, *, seed: int = 0) -> LabelledInputs:
    """``count`` labelled inputs of the family's small task, at ``spec``'s input size."""
    if count < 1:
        raise M2ptError(f"need at least one input, got {count}")
    modality = family_of(spec).input_metadata(spec)["modality"]  # AudioMAE: a ViT of spectrograms
    rng = np.random.default_rng(seed)
    if modality == "image":
        return _digits(spec, count, rng)
    if modality == "video":
        return _changing_digits(spec, count, rng)
    if modality == "points":
        return _solids(spec, count, rng)
    if modality == "spectrogram":
        return _sounds(spec, count, rng)
    raise M2ptError(f"no learnable task for {modality} inputs (a {family_of(spec).title})")


def _glyphs() -> np.ndarray:
    """scikit-learn's 1,797 handwritten digits, 8 × 8 in [0, 1]."""
    from sklearn.datasets import load_digits

    return (load_digits().images / 16.0).astype(np.float32)


def _labels(count: int, classes: int, rng: np.random.Generator) -> np.ndarray:
    """Balanced labels in a seeded order."""
    return rng.permutation(np.arange(count) % classes).astype(np.int64)


def _digits(spec: ModelSpec, count: int, rng: np.random.Generator) -> LabelledInputs:
    from sklearn.datasets import load_digits

    digits = load_digits()
    pick = rng.permutation(len(digits.target))[:count] if count <= len(digits.target) else \
        rng.integers(0, len(digits.target), count)
    x = np.repeat((digits.images[pick] / 16.0).astype(np.float32)[:, None], spec.input_size[0], axis=1)
    return LabelledInputs(x, digits.target[pick].astype(np.int64), tuple(map(str, range(10))),
                          "scikit-learn's handwritten digits (8×8, 10 classes)")


def _changing_digits(spec: ModelSpec, count: int, rng: np.random.Generator) -> LabelledInputs:
    channels, frames, height, width = spec.input_size
    glyphs = _glyphs()
    side = max(4, min(height, width) // 2)
    y = _labels(count, len(_CHANGES), rng)
    clips = np.zeros((count, frames, height, width), np.float32)
    for i, change in enumerate(y):
        glyph = _resize(glyphs[rng.integers(len(glyphs))], side)
        top, left = int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1))
        clips[i, :, top:top + side, left:left + side] = _brightness(int(change), frames)[:, None, None] * glyph
    clips += rng.normal(0, 0.05, clips.shape).astype(np.float32)
    x = np.repeat(clips[:, None], channels, axis=1)
    mean = np.asarray(spec.mean, np.float32).reshape(1, channels, 1, 1, 1)
    std = np.asarray(spec.std, np.float32).reshape(1, channels, 1, 1, 1)
    return LabelledInputs(((x - mean) / std).astype(np.float32), y, _CHANGES,
                          "a handwritten digit fading in, fading out, blinking or holding still (4 classes)")


def _resize(glyph: np.ndarray, side: int) -> np.ndarray:
    index = (np.arange(side) * glyph.shape[0] // side)
    return glyph[index][:, index]


def _brightness(change: int, frames: int) -> np.ndarray:
    """The glyph's brightness per frame. Fading in and fading out show the same frames in opposite
    orders: only the order of the frames tells them apart."""
    ramp = np.linspace(0.1, 1.0, frames)
    if change == 0:
        return ramp
    if change == 1:
        return ramp[::-1].copy()
    if change == 2:
        return np.where(np.arange(frames) % 2 == 0, 1.0, 0.1)
    return np.full(frames, 0.55)


def _solids(spec: ModelSpec, count: int, rng: np.random.Generator) -> LabelledInputs:
    points = spec.input_size[0]
    y = _labels(count, len(_SOLIDS), rng)
    x = np.stack([_unit_sphere(_surface(int(k), points, rng) @ _rotation(rng)) for k in y])
    return LabelledInputs(x.astype(np.float32), y, _SOLIDS,
                          "points on a sphere, cube, cylinder or cone, randomly rotated (4 classes)")


def _surface(solid: int, n: int, rng: np.random.Generator) -> np.ndarray:
    if solid == 0:  # sphere
        p = rng.normal(size=(n, 3))
        return p / np.linalg.norm(p, axis=1, keepdims=True)
    if solid == 1:  # cube: a point on a random face
        p = rng.uniform(-1, 1, (n, 3))
        axis = rng.integers(0, 3, n)
        p[np.arange(n), axis] = rng.choice((-1.0, 1.0), n)
        return p
    angle = rng.uniform(0, 2 * math.pi, n)
    h = rng.uniform(-1, 1, n)
    radius = np.ones(n) if solid == 2 else (1 - h) / 2  # cylinder, or cone narrowing to its apex
    return np.stack([radius * np.cos(angle), radius * np.sin(angle), h], axis=1)


def _rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    return q * np.sign(np.diag(r))


def _unit_sphere(p: np.ndarray) -> np.ndarray:
    """Centred and scaled into the unit sphere, as Point-MAE's data loaders normalise clouds."""
    p = p - p.mean(axis=0)
    return p / np.linalg.norm(p, axis=1).max()


def _sounds(spec: ModelSpec, count: int, rng: np.random.Generator) -> LabelledInputs:
    _, frames, bins = spec.input_size
    y = _labels(count, len(_SOUNDS), rng)
    samples = _SHIFT * (frames - 1) + _FRAME
    x = np.stack([_fbank(_sound(int(k), samples, rng), bins)[None, :frames] for k in y])
    return LabelledInputs(x.astype(np.float32), y, _SOUNDS,
                          "synthesized sounds: low tone, high tone, rising chirp, noise burst (4 classes)")


def _sound(kind: int, samples: int, rng: np.random.Generator) -> np.ndarray:
    """One second of the sound at a random start, over quiet noise."""
    wave = rng.normal(0, 0.01, samples)
    length = min(_RATE, samples)
    start = int(rng.integers(0, samples - length + 1))
    t = np.arange(length) / _RATE
    if kind == 0:
        sound = np.sin(2 * math.pi * rng.uniform(200, 400) * t)
    elif kind == 1:
        sound = np.sin(2 * math.pi * rng.uniform(2000, 4000) * t)
    elif kind == 2:
        f0, f1 = rng.uniform(300, 600), rng.uniform(3000, 6000)
        sound = np.sin(2 * math.pi * (f0 * t + (f1 - f0) * t ** 2 / (2 * t[-1])))
    else:
        sound = rng.normal(0, 0.5, length)
    wave[start:start + length] += 0.5 * sound
    return wave


def _fbank(wave: np.ndarray, bins: int) -> np.ndarray:
    """Kaldi-style log-mel filterbank, frames × bins: Hann-windowed 25 ms frames every 10 ms.

    NOTE torchaudio.compliance.kaldi.fbank is what AudioMAE calls, but torchaudio has no build for
    the torch this project pins; this is the same recipe (power spectrum, triangular mel filters,
    log) without Kaldi's dither and pre-emphasis, which a synthetic task does not need.
    """
    count = 1 + (len(wave) - _FRAME) // _SHIFT
    index = np.arange(_FRAME)[None] + _SHIFT * np.arange(count)[:, None]
    frames = wave[index] * np.hanning(_FRAME)
    power = np.abs(np.fft.rfft(frames, _FFT)) ** 2
    return np.log(np.maximum(power @ _mel_filters(bins).T, 1.1920929e-07))


def _mel_filters(bins: int) -> np.ndarray:
    """Triangular filters evenly spaced on the mel scale from 20 Hz to Nyquist, ``[bins, FFT/2 + 1]``."""
    mel = np.linspace(_hz_to_mel(20.0), _hz_to_mel(_RATE / 2), bins + 2)
    edges = 700.0 * (np.exp(mel / 1127.0) - 1)
    freqs = np.linspace(0, _RATE / 2, _FFT // 2 + 1)
    rising = (freqs[None] - edges[:-2, None]) / (edges[1:-1, None] - edges[:-2, None])
    falling = (edges[2:, None] - freqs[None]) / (edges[2:, None] - edges[1:-1, None])
    return np.maximum(0.0, np.minimum(rising, falling))


def _hz_to_mel(hz: float) -> float:
    return 1127.0 * math.log(1 + hz / 700.0)
