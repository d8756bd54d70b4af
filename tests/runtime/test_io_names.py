"""The exported graph's input is named for what it holds, per family; its output is the logits."""

from __future__ import annotations

import dataclasses

import onnx
import pytest

from m2pt_deploy.families import ModelSpec
from m2pt_deploy.runtime.io_names import INPUT_NAME, OUTPUT_NAME, input_name
from tests.tiny import TINY, TINY_AUDIO, TINY_AUDIOMAE, TINY_DEIT, TINY_POINT, TINY_VIDEO


@pytest.mark.parametrize(("spec", "name"), [
    (TINY, "pixel_values"),
    (TINY_DEIT, "pixel_values"),
    (TINY_VIDEO, "pixel_values"),
    (TINY_AUDIOMAE, "input_values"),
    (TINY_POINT, "points"),
], ids=["image-vit", "deit", "videomae", "audiomae", "point-mae"])
def test_input_name_per_family(spec: ModelSpec, name: str) -> None:
    assert input_name(spec) == name


def test_only_audiomaes_own_input_is_a_spectrogram() -> None:
    # A one-channel ViT of another size is a grey image, named as images are.
    assert TINY_AUDIO.input_size != TINY_AUDIOMAE.input_size
    assert input_name(TINY_AUDIO) == "pixel_values"
    # The input size decides, not the width: AudioMAE's 1 x 1024 x 128 at any width is audio.
    wider = dataclasses.replace(TINY_AUDIOMAE, model_kwargs={**TINY_AUDIOMAE.model_kwargs, "embed_dim": 128})
    assert input_name(wider) == "input_values"


def test_the_image_export_declares_the_default_names(good_proto: onnx.ModelProto) -> None:
    assert (INPUT_NAME, OUTPUT_NAME) == ("pixel_values", "logits")
    assert [i.name for i in good_proto.graph.input] == [input_name(TINY)] == [INPUT_NAME]
    assert [o.name for o in good_proto.graph.output] == [OUTPUT_NAME]
