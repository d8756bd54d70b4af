"""The exported graph's input and output names: what the exporter writes and every runtime feeds
and reads (a model of any family takes one tensor and returns its logits).

The input is named for what it holds (each family's ``input_name``: ``pixel_values`` for images
and video, ``input_values`` for AudioMAE spectrograms, ``points`` for Point-MAE clouds); runtimes
read it off the graph, and ``INPUT_NAME`` is the image models' default.
"""

from __future__ import annotations

from m2pt_deploy.families import ModelSpec, family_of
from m2pt_deploy.families.base import PIXEL_VALUES

__all__ = ["INPUT_NAME", "OUTPUT_NAME", "input_name"]

INPUT_NAME = PIXEL_VALUES
OUTPUT_NAME = "logits"


def input_name(spec: ModelSpec) -> str:
    """The input name an export of ``spec``'s model declares."""
    return family_of(spec).input_name(spec)
