"""The export pipeline's library surface: the same rules as the command, for Python callers."""

from __future__ import annotations

from pathlib import Path

import pytest

from m2pt_deploy.errors import M2ptError
from m2pt_deploy.model.checkpoint import load_checkpoint
from m2pt_deploy.pipelines.export import export_onnx, held_out_inputs
from tests.families.point_formats import TINY_POINT
from tests.families.video_formats import TINY_VIDEO
from tests.tiny import TINY


@pytest.mark.parametrize("spec", [TINY, TINY_VIDEO, TINY_POINT], ids=["image", "video", "points"])
def test_held_out_inputs_fit_every_family(spec) -> None:
    """Photo tiles for RGB images; the family's own seeded inputs otherwise (a TensorRT engine of a
    video or point model is verified on those, not on tiles it cannot take)."""
    x = held_out_inputs(spec, 5)
    assert x.shape == (5, *spec.input_size) and x.dtype.name == "float32"
    assert (held_out_inputs(spec, 5) == x).all(), "seeded: the same inputs every time"


def test_library_callers_get_the_commands_checks(m2pt_ckpt: Path, tmp_path: Path) -> None:
    with pytest.raises(M2ptError, match="--int8-target 'avx9'"):
        export_onnx(m2pt_ckpt, tmp_path / "a.onnx", precision="int8", int8_target="avx9")
    with pytest.raises(M2ptError, match="loaded already"):
        export_onnx(load_checkpoint(m2pt_ckpt), tmp_path / "b.onnx", model={"arch": "vit_tiny_patch16_224"})
    assert not (tmp_path / "a.onnx").exists() and not (tmp_path / "b.onnx").exists()
