"""scripts/paper_int8.py: the head it fits is the head the exported model computes with."""

from __future__ import annotations

import dataclasses
from types import ModuleType

import numpy as np
import pytest
import torch

from m2pt_deploy.bench.latency import pathway_pair
from m2pt_deploy.inputs.learnable import learnable_task
from m2pt_deploy.inputs.preprocess import array_inputs
from m2pt_deploy.pipelines.small_models import SMALL_MODELS
from tests.scripts import load_script


@pytest.fixture(scope="module")
def script() -> ModuleType:
    return load_script("paper_int8")


def test_the_paper_specs_keep_the_paper_size_with_a_four_class_head(script: ModuleType) -> None:
    from m2pt_deploy.bench.paper import PAPER_MODELS

    for family in ("videomae", "audiomae", "pointmae"):
        spec = script.paper_spec(family)
        assert spec.model_kwargs["num_classes"] == script.CLASSES == 4
        assert dataclasses.replace(spec, model_kwargs={**spec.model_kwargs, "num_classes": 0}) == dataclasses.replace(
            PAPER_MODELS[family], model_kwargs={**PAPER_MODELS[family].model_kwargs, "num_classes": 0})


@pytest.mark.parametrize("modality", ["points", "spectrogram"])
def test_fitted_head_is_written_into_the_models_last_linear(script: ModuleType, modality: str) -> None:
    # Point-MAE's head is an MLP (its last Linear is fitted); the ViT's is one Linear.
    spec = SMALL_MODELS[modality]
    spec = dataclasses.replace(spec, model_kwargs={**spec.model_kwargs, "num_classes": 4})
    model = pathway_pair(spec, seed=0)
    task = learnable_task(spec, 48, seed=3)
    score = script.fit_head(model, spec, task.x, task.y)
    with torch.no_grad():
        logits = model(torch.from_numpy(array_inputs(spec, task.x))).numpy()
    assert float(np.mean(logits.argmax(1) == task.y)) == pytest.approx(score)
    assert score >= 0.75  # 3x chance on the inputs it was fitted to
