"""``m2pt-export --format onnx --optimize`` and ``--precision int8``: the CPU fast path from the CLI."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from m2pt_deploy.cli.common import run_main
from m2pt_deploy.cli.export import main
from m2pt_deploy.cpu import int8_target
from m2pt_deploy.runtime.sessions import is_optimized


def _export(argv: list[str], capsys) -> tuple[int, str, str]:
    code = run_main(main, argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_optimize_writes_a_verified_optimized_model(pathway_ckpt_path: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "fast.onnx"
    code, stdout, err = _export([str(pathway_ckpt_path), "--optimize", "-o", str(out)], capsys)
    assert code == 0, err
    assert is_optimized(onnx.load(out))
    assert "fusing attention, LayerNorm and GELU" in err
    structure = next(line for line in stdout.splitlines() if "structure" in line)
    assert "PASSED" in structure and "ONNX Runtime-optimized" in structure


def test_int8_of_the_trained_demo_model_passes_on_its_own_data(trained_digits, tmp_path: Path, capsys) -> None:
    best, digits = trained_digits
    out, report = tmp_path / "int8.onnx", tmp_path / "int8.json"
    code, stdout, err = _export([str(best), "--precision", "int8", "--optimize", "--calib-data", str(digits),
                                 "-o", str(out), "--report", str(report)], capsys)
    assert code == 0, stdout + err
    result = json.loads(report.read_text())
    assert result["passed"] and result["tolerance"]["min_top1"] == 0.99
    assert result["stats"]["top1_total"] == 256  # held out from calibration
    proto = onnx.load(out)
    assert is_optimized(proto)
    assert any(n.op_type in ("QLinearMatMul", "MatMulIntegerToFloat", "QGemm") for n in proto.graph.node)
    assert "int8 onnx (cpu)" in stdout and f"quantizing to int8 for {int8_target()} CPUs" in err


def test_int8_that_fails_verification_exits_1_and_keeps_the_file(pathway_ckpt_path: Path, tmp_path: Path,
                                                                  capsys, monkeypatch) -> None:
    from m2pt_deploy.verify import cpu_int8

    # No model reaches 101% agreement: the failing branch, deterministically.
    monkeypatch.setattr(cpu_int8, "INT8_CPU", dataclasses.replace(cpu_int8.INT8_CPU, min_top1=1.01))
    out, report = tmp_path / "int8.onnx", tmp_path / "int8.json"
    code, stdout, err = _export([str(pathway_ckpt_path), "--precision", "int8", "--calib-images", "16",
                                 "--verify-images", "32", "-o", str(out), "--report", str(report)], capsys)
    assert code == 1, err
    # Verified or nothing: the final name stays free, the file is kept under a name that says so.
    kept = tmp_path / "int8.unverified.onnx"
    assert f"verification FAILED; the export is kept at {kept}" in err
    assert kept.is_file() and not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    result = json.loads(report.read_text())
    assert not result["passed"] and result["stats"]["top1_total"] == 32


def test_int8_target_can_be_chosen(pathway_ckpt_path: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "avx2.onnx"
    code, _, err = _export([str(pathway_ckpt_path), "--precision", "int8", "--int8-target", "avx2", "--no-verify",
                            "--calib-images", "8", "-o", str(out)], capsys)
    assert code == 0, err
    meta = {p.key: p.value for p in onnx.load(out).metadata_props}
    assert meta["m2pt_deploy.int8_target"] == '{"target": "avx2", "weight_bits": 7}'


def _nan_npz(path: Path) -> None:
    np.savez(path, x=np.full((300, 3, 32, 32), np.nan, np.float32))


@pytest.mark.parametrize(("name", "make", "fragment"), [
    ("calib", lambda p: None, "no such calibration data"),
    ("calib", lambda p: p.mkdir(), "no images (.jpg, .png, ...) in the calibration folder"),
    ("calib.txt", lambda p: p.write_text("x"), "calibration data must be an image folder or an .npz file"),
    ("calib.npz", _nan_npz, "'x' contains NaN or Inf"),
    ("calib.npz", lambda p: np.savez(p, y=np.zeros(3)), "a calibration .npz needs an array 'x', it has ['y']"),
    ("calib.npz", lambda p: np.savez(p, x=np.zeros((300, 1, 32, 32))),
     "'x' is [300, 1, 32, 32] with 1 channels, the model takes [N, 3, 32, 32]"),
], ids=["missing", "empty-folder", "text-file", "nan", "no-x", "channels"])
def test_bad_calibration_data_is_one_line_and_writes_nothing(pathway_ckpt_path, tmp_path, capsys, name, make,
                                                              fragment) -> None:
    data = tmp_path / name
    make(data)
    out = tmp_path / "x.onnx"
    code, _, err = _export([str(pathway_ckpt_path), "--precision", "int8", "--calib-data", str(data),
                            "-o", str(out)], capsys)
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 2 and len(lines) == 1 and fragment in lines[0] and str(data) in lines[0], err
    assert not out.exists() and "Traceback" not in err


def test_calibration_from_an_image_folder(pathway_ckpt_path: Path, tmp_path: Path, capsys) -> None:
    from PIL import Image

    folder = tmp_path / "photos" / "class_a"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(40):
        Image.fromarray(rng.integers(0, 255, (48, 40, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    code, _, err = _export([str(pathway_ckpt_path), "--precision", "int8", "--calib-data", str(tmp_path / "photos"),
                            "--verify-images", "24", "--no-verify", "-o", str(tmp_path / "m.onnx")], capsys)
    assert code == 0, err
    assert "(Q/DQ, 16 calibration inputs)" in err  # 40 images: 24 held out for verification, 16 calibrate


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["--optimize", "--precision", "fp16"], "--optimize takes fp32 or int8"),
        (["--optimize", "--format", "trt"], "--optimize is for --format onnx"),
        (["--optimize", "--format", "triton"], "--optimize is for --format onnx"),
        (["--precision", "int8", "--calib-images", "0"], "--calib-images 0: need at least 1"),
    ],
)
def test_bad_fast_path_options_are_one_line_errors(pathway_ckpt_path, tmp_path, capsys, argv, fragment) -> None:
    out = tmp_path / "x.onnx"
    code, _, err = _export([str(pathway_ckpt_path), *argv, "-o", str(out)], capsys)
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 2 and len(lines) == 1 and fragment in lines[0], err
    assert "Traceback" not in err
    assert not out.exists()
