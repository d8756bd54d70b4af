"""The bench pipeline: which trained model speaks for a family's int8 accuracy."""

from __future__ import annotations

from m2pt_deploy.pipelines.bench import _trained_accuracy
from tests.tiny import TINY_AUDIO, TINY_POINT


def test_a_point_benchmark_reports_the_shipped_small_models_accuracy() -> None:
    said: list[str] = []
    accuracy = _trained_accuracy(TINY_POINT, 0, 0, said.append)
    assert accuracy is not None and accuracy["images"] == 256 and "points.safetensors" in accuracy["model"]
    assert said == ["the shipped small points model: fp32 vs int8 accuracy on fresh inputs of its task"]


def test_a_one_channel_image_model_has_no_trained_stand_in() -> None:
    assert _trained_accuracy(TINY_AUDIO, 20, 0, print) is None  # neither photo tiles nor a small model fit it
