from __future__ import annotations

import json
from pathlib import Path

import pytest

from m2pt_deploy.export.tensorrt import detect_platform
from tests.cli.commands import assert_user_error, export

pytestmark = pytest.mark.skipif(detect_platform().missing() is None,
                                reason="these cases assert the no-TensorRT fallback; TensorRT is installed")


def test_cpu_only_export_leaves_verified_onnx_and_build_script(m2pt_ckpt: Path, tmp_path: Path, capsys) -> None:
    engine = tmp_path / "vit.engine"
    code, out, err = export(["--format", "trt", str(m2pt_ckpt), "-o", str(engine), "--precision", "fp16",
                             "--batch", "1:2:4", "--workspace", "1", "--opt-level", "2",
                             "--report", str(tmp_path / "check.json")], capsys)
    assert_user_error(code, err, "TensorRT is not installed", "vit.fp16.onnx", "vit.engine.build.sh",
                      "builds this engine and its sidecar where TensorRT and a GPU are: copy the folder "
                      "there and run bash vit.engine.build.sh")
    assert "PASSED | fp16 onnx | onnxrt:vit.fp16.onnx vs torch-unmerged | logits" in out
    assert (tmp_path / "vit.fp16.onnx").is_file() and not engine.exists()
    report = json.loads((tmp_path / "check.json").read_text())
    assert report["passed"] is True and report["stats"]["top1_total"] == 256
    script = (tmp_path / "vit.engine.build.sh").read_text()
    assert "--builderOptimizationLevel=2" in script and "--maxShapes=pixel_values:4x3x32x32" in script
    assert 'ONNX="$HERE"/vit.fp16.onnx' in script.splitlines()
    assert "--batch 1:2:4 --precision fp16" in script


@pytest.mark.parametrize("argv, needles", [
    (["--batch", "8:4:1"], ["--batch '8:4:1': needs MIN <= OPT <= MAX, got 8 > 4 > 1"]),
    (["--opt-level", "9"], ["--opt-level 9: TensorRT's builder optimization level is 0 to 5"]),
    (["--workspace", "-1"], ["--workspace -1.0: must be a positive number of GiB"]),
    (["--calib-images", "0"], ["--calib-images 0: need at least 1"]),
])
def test_bad_trt_options_fail_before_any_file_is_written(m2pt_ckpt, tmp_path, capsys, argv, needles) -> None:
    out = tmp_path / "out"
    out.mkdir()
    code, _, err = export(["--format", "trt", str(m2pt_ckpt), "-o", str(out / "m.engine"), *argv], capsys)
    assert_user_error(code, err, *needles)
    assert list(out.iterdir()) == []


def test_quantized_precision_is_refused_for_plain_onnx(m2pt_ckpt, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    out.mkdir()
    code, _, err = export(["--format", "onnx", str(m2pt_ckpt), "-o", str(out / "m.onnx"),
                           "--precision", "fp8"], capsys)
    assert_user_error(code, err, "--precision fp8 is only for --format trt")
    assert list(out.iterdir()) == []
