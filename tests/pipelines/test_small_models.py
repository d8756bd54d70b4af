"""The small trained model of every non-image family: shipped, intact, and trained."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from m2pt_deploy.errors import M2ptError
from m2pt_deploy.inputs.learnable import learnable_task
from m2pt_deploy.inputs.preprocess import array_inputs
from m2pt_deploy.model.build import build_unmerged
from m2pt_deploy.model.checkpoint import load_checkpoint
from m2pt_deploy.pipelines.small_models import ASSETS, SMALL_MODELS, small_model, train_small_model

MANIFEST = json.loads((ASSETS / "manifest.json").read_text())


@pytest.mark.parametrize("modality", sorted(SMALL_MODELS))
def test_the_shipped_model_is_the_one_its_manifest_describes(modality: str) -> None:
    path = small_model(modality)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == MANIFEST[modality]["sha256"]
    ckpt = load_checkpoint(path)
    as_stored = json.loads(json.dumps(SMALL_MODELS[modality].to_dict()))  # tuples become lists
    assert ckpt.pathway is not None and json.loads(json.dumps(ckpt.spec.to_dict())) == as_stored


@pytest.mark.parametrize("modality", sorted(SMALL_MODELS))
def test_the_shipped_model_learned_its_task(modality: str) -> None:
    ckpt = load_checkpoint(small_model(modality))
    data = learnable_task(ckpt.spec, 64, seed=7)  # neither its training nor its validation inputs
    x = torch.from_numpy(array_inputs(ckpt.spec, data.x))
    with torch.no_grad():
        accuracy = float((build_unmerged(ckpt).eval()(x).argmax(1).numpy() == data.y).mean())
    # Three times chance (4 classes): a model that learned its task, whatever the CPU's rounding.
    assert accuracy >= 0.75, accuracy


def test_the_training_recipe_runs(tmp_path: Path) -> None:
    made = train_small_model("points", tmp_path, epochs=1, count=32, held_out=4)
    assert load_checkpoint(made.checkpoint).pathway is not None
    assert made.held_out.x.shape == (4, *SMALL_MODELS["points"].input_size)


def test_an_unknown_modality_is_one_line() -> None:
    with pytest.raises(M2ptError, match="no small model for 'smell' inputs"):
        small_model("smell")


@pytest.mark.parametrize("target", ["avx2", "vnni"])  # 7-bit and 8-bit weights, whatever this CPU is
def test_int8_accuracy_of_a_small_model(tmp_path: Path, target: str) -> None:
    from m2pt_deploy.pipelines.int8_accuracy import small_model_int8_accuracy
    from m2pt_deploy.verify.tolerance import INT8_CPU

    # The video model: its top-2 logits are far apart (a point or spectrogram input near a tie can flip
    # at 7 bits on one set of 32 and not on another, which would test the draw, not the function).
    scores = small_model_int8_accuracy("video", tmp_path, count=32, calib=16, target=target)
    assert scores["images"] == 32 and scores["fp32_top1"] >= 0.75 and scores["target"] == target
    assert scores["agreement"] >= INT8_CPU.min_top1, scores  # the product's int8 bar
    assert scores["delta"] == scores["int8_top1"] - scores["fp32_top1"]
