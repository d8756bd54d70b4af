"""What every command shares: --version, fast --help, defaults in help, the missing-extra message."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from m2pt_deploy import __version__
from m2pt_deploy.cli.common import run_main

COMMANDS = ["export", "merge", "verify", "train", "serve", "serve_bench", "demo", "bench"]
# Commands whose --help is built without importing torch or onnx.
LIGHT = ["export", "merge", "verify", "train", "serve", "serve_bench", "demo"]


@pytest.mark.parametrize("name", COMMANDS)
def test_version(name: str, capsys) -> None:
    module = importlib.import_module(f"m2pt_deploy.cli.{name}")
    with pytest.raises(SystemExit) as info:
        module.build_parser().parse_args(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip().endswith(f" {__version__}")


@pytest.mark.parametrize("name", LIGHT)
def test_help_does_not_import_torch(name: str) -> None:
    code = (f"import sys, contextlib, io\nimport m2pt_deploy.cli.{name} as m\n"
            "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
            "    m.build_parser().parse_args(['--help'])\n"
            "print('torch' in sys.modules, 'onnx' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_help_shows_defaults() -> None:
    from m2pt_deploy.cli.export import build_parser

    text = " ".join(build_parser().format_help().split())  # argparse wraps lines
    assert "--workspace GB" in text and "--opset N" in text and "(default: 18)" in text
    assert "(default: KIND_CPU)" in text and "(default: 256)" in text and "(default: 1:1:64)" in text
    assert "(default: TensorRT's, 3)" in text


def test_onnx_export_refuses_a_tensorrt_profile(tmp_path: Path, capsys) -> None:
    from m2pt_deploy.cli.export import main

    code = run_main(main, [str(tmp_path / "missing.pth"), "--batch", "1:8:32", "-o", str(tmp_path / "m.onnx")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "--batch 1:8:32 is a TensorRT profile (MIN:OPT:MAX, for --format trt)" in err


def test_missing_onnxruntime_names_the_extra(tmp_path: Path, capsys, monkeypatch) -> None:
    import importlib.util

    from m2pt_deploy.cli.export import main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "onnxruntime" else real(n, *a))
    out = tmp_path / "m.onnx"
    code = run_main(main, [str(tmp_path / "missing.pth"), "-o", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and not out.exists()
    assert "verifying the export needs ONNX Runtime, which is not installed: pip install 'm2pt-deploy[cpu]'" in err
