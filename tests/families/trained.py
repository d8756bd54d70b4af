"""The shipped small trained model of every non-image family (``m2pt_deploy/assets/small``) and fresh
inputs of its learnable task in the family's own model-ready layout: int8 agreement is only meaningful
on a model with confident logits (a random one's top-2 logits are near ties, and any rounding flips them)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from m2pt_deploy.inputs.learnable import learnable_task
from m2pt_deploy.pipelines.small_models import SMALL_MODELS, small_model

#: The tests' names for the families' inputs, and the small models' modalities.
KINDS = {"video": "video", "points": "points", "audio": "spectrogram"}
# Training used seeds 0 (train/validation) and 1 (fresh): these inputs are new to the model.
FRESH_SEED = 7


def trained_model(kind: str) -> Path:
    return small_model(KINDS[kind])


def family_inputs(kind: str, n: int, *, seed: int = FRESH_SEED) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)``: ``n`` inputs of the family's learnable task, as ``m2pt-train`` and ``--calib-data`` read them."""
    data = learnable_task(SMALL_MODELS[KINDS[kind]], n, seed=seed)
    return data.x, data.y
