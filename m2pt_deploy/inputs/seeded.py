"""Seeded random inputs: what the exact checks (merged == unmerged, ONNX == torch) run on, where
any input will do because the two sides compute the same function."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["seeded_inputs"]


def seeded_inputs(input_size: Sequence[int], batch_size: int, *, seed: int = 0) -> np.ndarray:
    """Deterministic normalised-image-like inputs: standard normal, float32, ``[B, *input_size]``."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((batch_size, *input_size), dtype=np.float32)
