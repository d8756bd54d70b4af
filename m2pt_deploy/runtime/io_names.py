"""The exported graph's input and output names: what the exporter writes and every runtime feeds
and reads (a model of any family takes one tensor and returns its logits)."""

from __future__ import annotations

__all__ = ["INPUT_NAME", "OUTPUT_NAME"]

INPUT_NAME = "pixel_values"
OUTPUT_NAME = "logits"
