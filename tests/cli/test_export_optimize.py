"""``m2pt-export --format onnx --optimize`` and ``--precision int8``: the CPU fast path from the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest

from m2pt_deploy.cli.common import run_main
from m2pt_deploy.cli.export import main
from m2pt_deploy.export.optimize import is_optimized
from tests.verify import fixtures

verify_dir = fixtures.verify_dir
pathway_ckpt_path = fixtures.pathway_ckpt_path


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


def test_int8_exit_status_follows_its_verification(pathway_ckpt_path: Path, tmp_path: Path, capsys) -> None:
    out, report = tmp_path / "int8.onnx", tmp_path / "int8.json"
    code, stdout, err = _export([str(pathway_ckpt_path), "--precision", "int8", "--optimize",
                                 "--calib-images", "32", "-o", str(out), "--report", str(report)], capsys)
    result = json.loads(report.read_text())
    assert code == (0 if result["passed"] else 1), err
    assert result["tolerance"]["min_top1"] == 0.99
    assert result["stats"]["top1_total"] == 64  # held-out tiles, not the calibration ones
    proto = onnx.load(out)
    assert is_optimized(proto)
    assert any(n.op_type in ("QLinearMatMul", "MatMulIntegerToFloat", "QGemm") for n in proto.graph.node)
    assert "int8 onnx (cpu)" in stdout


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
