"""The int8 CPU check's batches: sized per family, so a long-sequence model's check stays in memory."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from m2pt_deploy.families import family_of
from m2pt_deploy.verify import cpu_int8
from tests.tiny import TINY, TINY_VIDEO


@pytest.mark.parametrize(("spec", "batch"), [(TINY, 16), (TINY_VIDEO, 2)], ids=["vit", "videomae"])
def test_held_out_inputs_run_in_the_familys_batches(spec, batch: int, monkeypatch, tmp_path) -> None:
    assert family_of(spec).held_out_batch == batch
    seen: list[int] = []

    def compare(runners: Any, feeds: list[dict[str, np.ndarray]], *args: Any, **kwargs: Any) -> list[Any]:
        seen.extend(len(next(iter(f.values()))) for f in feeds)
        return ["result"]

    monkeypatch.setattr(cpu_int8, "compare_runners", compare)
    monkeypatch.setattr(cpu_int8, "graph_input_name", lambda path: "x")
    monkeypatch.setattr(cpu_int8, "cpu_runner", lambda path: None)
    monkeypatch.setattr(cpu_int8, "_cpu_note", lambda path: "")
    ckpt = SimpleNamespace(spec=spec)  # only its spec is read before the (replaced) comparison
    x = np.zeros((37, *spec.input_size), np.float32)
    assert cpu_int8.verify_int8_cpu(ckpt, tmp_path / "m.onnx", x) == "result"
    assert seen == [batch] * (37 // batch) + ([37 % batch] if 37 % batch else [])
