"""The small learnable tasks: in each family's layout, seeded, balanced, and learnable (a linear
classifier on simple summaries separates the classes, so the classes are not noise)."""

from __future__ import annotations

import numpy as np
import pytest

from m2pt_deploy.errors import M2ptError
from m2pt_deploy.inputs.learnable import learnable_task
from m2pt_deploy.pipelines.small_models import SMALL_MODELS
from tests.tiny import TINY

SPECS = {"image": TINY, **SMALL_MODELS}


@pytest.mark.parametrize("modality", sorted(SPECS))
def test_tasks_are_in_the_layout_training_reads_and_seeded(modality: str) -> None:
    spec = SPECS[modality]
    data = learnable_task(spec, 40, seed=3)
    shape = (40, spec.input_size[0], 8, 8) if modality == "image" else (40, *spec.input_size)  # digits: resized later
    assert data.x.shape == shape and data.x.dtype == np.float32 and np.isfinite(data.x).all()
    assert data.y.dtype == np.int64 and data.y.min() >= 0 and data.y.max() < len(data.classes)
    assert (learnable_task(spec, 40, seed=3).x == data.x).all()
    assert not np.array_equal(learnable_task(spec, 40, seed=4).x, data.x)
    if modality != "image":  # the synthesized tasks are balanced
        assert np.bincount(data.y).tolist() == [10] * 4


def _summary(modality: str, x: np.ndarray) -> np.ndarray:
    """A few hand-made features a linear model can use: enough to show the classes differ."""
    if modality == "video":  # brightness per frame: the glyph's brightness curve
        return x.mean(axis=(1, 3, 4))
    if modality == "points":  # sorted distances from the centre: the solid's radial profile
        return np.sort(np.linalg.norm(x, axis=2), axis=1)[:, ::8]
    if modality == "spectrogram":  # energy per mel bin and its spread over time
        return np.concatenate([x.mean(axis=(1, 2)), x.std(axis=(1, 2))], axis=1)
    return x.reshape(len(x), -1)


@pytest.mark.parametrize("modality", sorted(SPECS))
def test_every_task_can_be_learned(modality: str) -> None:
    from sklearn.linear_model import LogisticRegression

    spec = SPECS[modality]
    train, test = learnable_task(spec, 160, seed=0), learnable_task(spec, 80, seed=1)
    classifier = LogisticRegression(max_iter=3000).fit(_summary(modality, train.x), train.y)
    chance = 1 / len(train.classes)
    # NOTE not a tuned figure: twice chance is far from what noise scores, and a task no summary
    # separates would sit at chance.
    assert classifier.score(_summary(modality, test.x), test.y) >= 2 * chance


def test_a_family_with_no_task_is_one_line() -> None:
    with pytest.raises(M2ptError, match="need at least one input"):
        learnable_task(TINY, 0)
