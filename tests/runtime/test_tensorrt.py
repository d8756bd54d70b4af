"""The TensorRT runner is made without TensorRT: it is named and stored, and reads its plan only when
activated (running one needs TensorRT and a GPU: tests/export/test_tensorrt.py, marked ``trt``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from m2pt_deploy.runtime.tensorrt import trt_runner


def test_default_name_is_the_plan_file(tmp_path: Path) -> None:
    assert trt_runner(tmp_path / "model.fp16.plan").name == "tensorrt:model.fp16.plan"
    assert trt_runner(str(tmp_path / "model.plan"), name="engine").name == "engine"


def test_the_plan_is_read_only_when_activated(tmp_path: Path) -> None:
    missing = tmp_path / "missing.plan"
    runner = trt_runner(missing)  # made without reading the plan (or needing TensorRT)
    assert not runner.is_active
    with pytest.raises(FileNotFoundError, match="missing.plan"):
        runner.activate()
