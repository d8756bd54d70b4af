"""m2pt-serve's refusals: one line naming the problem (and the file), exit code 2."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from m2pt_deploy.cli.common import EXIT_BAD_INPUT, run_main
from m2pt_deploy.cli.serve import main


def refuse(argv, capsys) -> str:
    assert run_main(main, argv) == EXIT_BAD_INPUT
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    return lines[0]


def test_missing_model(tmp_path, capsys):
    path = tmp_path / "nope.onnx"
    assert refuse([str(path)], capsys) == f"error: {path}: no such file or directory"


def test_not_an_onnx_file(tmp_path, capsys):
    path = tmp_path / "model.txt"
    path.write_text("hello")
    assert refuse([str(path)], capsys) == (
        f"error: {path}: is a text file, not an .onnx file or a Triton model repository folder")


def test_corrupt_onnx_file(tmp_path, capsys):
    path = tmp_path / "broken.onnx"
    path.write_bytes(b"\x08\x07garbage that is not a model")
    line = refuse([str(path)], capsys)
    assert line.startswith(f"error: {path}: ONNX Runtime cannot load this model")


def test_unavailable_provider(tiny_onnx, capsys):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip(reason="this onnxruntime has CUDA, so the provider is available")
    line = refuse([str(tiny_onnx), "--providers", "cuda", "cpu"], capsys)
    assert "execution provider CUDAExecutionProvider is not available" in line
    assert "CPUExecutionProvider" in line


def test_port_in_use(tiny_onnx, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        line = refuse([str(tiny_onnx), "--port", str(port)], capsys)
    assert line.startswith(f"error: cannot listen on 127.0.0.1:{port}:")


def test_port_out_of_range(tiny_onnx, capsys):
    assert refuse([str(tiny_onnx), "--port", "70000"], capsys) == "error: --port 70000: expected 0 to 65535"


@pytest.mark.parametrize("flag", ["--max-batch", "--max-queue"])
def test_non_positive_limits_are_rejected_by_the_parser(tiny_onnx, capsys, flag):
    with pytest.raises(SystemExit) as info:
        main([str(tiny_onnx), flag, "0"])
    assert info.value.code == EXIT_BAD_INPUT
    assert f"argument {flag}: must be positive, got 0" in capsys.readouterr().err


def test_entrypoint_prints_no_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "m2pt_deploy.cli.serve", str(tmp_path / "x.onnx")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == EXIT_BAD_INPUT
    assert result.stderr == f"error: {tmp_path / 'x.onnx'}: no such file or directory\n"
    assert "Traceback" not in result.stderr


def test_model_control_refusals(tmp_path, tiny_onnx, capsys):
    from m2pt_deploy.export.triton import write_triton_repository

    assert refuse([str(tiny_onnx), "--load-model", "vit"], capsys) == (
        "error: --load-model needs --model-control-mode explicit (without it every model of the "
        "repository is loaded)")
    assert refuse([str(tiny_onnx), "--model-control-mode", "explicit"], capsys) == (
        f"error: {tiny_onnx}: --model-control-mode explicit needs a model repository folder")
    repo = tmp_path / "models"
    write_triton_repository(tiny_onnx, repo, name="vit")
    assert refuse([str(repo), "--model-control-mode", "explicit", "--load-model", "nope"], capsys) == (
        f"error: {repo}: --load-model nope: no such model in the repository (it holds vit)")
