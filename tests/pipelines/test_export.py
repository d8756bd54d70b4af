"""The export pipeline's library surface: the same rules as the command, for Python callers."""

from __future__ import annotations

from pathlib import Path

import pytest

from m2pt_deploy.errors import M2ptError
from m2pt_deploy.model.checkpoint import load_checkpoint
from m2pt_deploy.pipelines.export import export_onnx


def test_library_callers_get_the_commands_checks(m2pt_ckpt: Path, tmp_path: Path) -> None:
    with pytest.raises(M2ptError, match="--int8-target 'avx9'"):
        export_onnx(m2pt_ckpt, tmp_path / "a.onnx", precision="int8", int8_target="avx9")
    with pytest.raises(M2ptError, match="loaded already"):
        export_onnx(load_checkpoint(m2pt_ckpt), tmp_path / "b.onnx", model={"arch": "vit_tiny_patch16_224"})
    assert not (tmp_path / "a.onnx").exists() and not (tmp_path / "b.onnx").exists()
