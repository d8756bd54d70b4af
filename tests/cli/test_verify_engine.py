from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from m2pt_deploy.cli.common import run_main
from m2pt_deploy.cli.verify import main
from m2pt_deploy.export.engine_info import read_engine_info
from m2pt_deploy.export.tensorrt import detect_platform
from tests.cli.commands import assert_user_error, export
from tests.export.test_tensorrt import FAKE_TRT_VERSION, _fake_engine, fake_gpu_machine, run_script, tool_calls


def verify(argv: list[str], capsys) -> tuple[int, str, str]:
    code = run_main(main, argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_a_file_that_is_not_an_engine_is_refused(m2pt_ckpt: Path, tmp_path: Path, capsys) -> None:
    fake = tmp_path / "model.engine"
    fake.write_bytes(b"PK\x03\x04 not a plan")
    code, _, err = verify([str(m2pt_ckpt), "--engine", str(fake)], capsys)
    assert_user_error(code, err, str(fake), "is a zip archive (a torch checkpoint?), not a TensorRT engine")


def test_an_engine_without_its_sidecar_is_refused(m2pt_ckpt: Path, tmp_path: Path, capsys) -> None:
    lone = tmp_path / "lone.engine"
    lone.write_bytes(b"\x00plan")
    code, _, err = verify([str(m2pt_ckpt), "--engine", str(lone)], capsys)
    assert_user_error(code, err, "no sidecar lone.engine.json beside the engine")


def test_a_batch_above_the_profile_is_refused(m2pt_ckpt: Path, tmp_path: Path, capsys) -> None:
    engine, _ = _fake_engine(tmp_path)
    code, _, err = verify([str(m2pt_ckpt), "--engine", str(engine), "--batch-size", "33"], capsys)
    assert_user_error(code, err, "batch 33 is above the profile's MAX (engine profile 1:8:32)")


@pytest.mark.skipif(detect_platform().missing() is None, reason="asserts the no-TensorRT refusal")
def test_without_tensorrt_the_engine_is_not_run(m2pt_ckpt: Path, tmp_path: Path, capsys) -> None:
    engine, _ = _fake_engine(tmp_path)
    code, _, err = verify([str(m2pt_ckpt), "--engine", str(engine), "--no-latency"], capsys)
    assert_user_error(code, err, "m.engine: cannot run the engine: TensorRT is not installed")


def test_onnx_and_engine_are_exclusive(m2pt_ckpt: Path, tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run_main(main, [str(m2pt_ckpt), "--onnx", "a.onnx", "--engine", "b.engine"])
    assert exit_info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


@pytest.mark.skipif(detect_platform().missing() is None, reason="asserts the no-TensorRT fallback and refusal")
def test_an_engine_built_by_the_build_script_is_accepted(m2pt_ckpt: Path, tmp_path: Path, capsys) -> None:
    """The hand-off of issue 12: export here, copy the folder, run its script there, verify the engine.

    The "GPU machine" is this one with a fake trtexec, nvidia-smi and tensorrt module, so the
    engine is a stand-in and verification stops where TensorRT itself is needed.
    """
    out = tmp_path / "out"
    out.mkdir()
    code, _, err = export(["--format", "trt", str(m2pt_ckpt), "-o", str(out / "vit.engine"), "--precision",
                           "fp16", "--batch", "1:2:4", "--no-verify"], capsys)
    assert_user_error(code, err, "copy the folder there and run bash vit.engine.build.sh")
    gpu_box = tmp_path / "gpu box"
    shutil.copytree(out, gpu_box)
    env = fake_gpu_machine(tmp_path / "tools")
    ran = run_script(gpu_box / "vit.engine.build.sh", env=env, cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    engine = gpu_box / "vit.engine"
    assert len(tool_calls(env)) == 1 and "--stronglyTyped" in tool_calls(env)[0]
    info = read_engine_info(engine)
    assert (info.precision, info.profile.opt[0], info.tensorrt_version) == ("fp16", 2, FAKE_TRT_VERSION)
    code, _, err = verify([str(m2pt_ckpt), "--engine", str(engine), "--no-latency"], capsys)
    assert code == 2
    assert [line for line in err.splitlines() if line.startswith("error: ")] == [
        f"error: {engine}: cannot run the engine: TensorRT is not installed (the Python module 'tensorrt' "
        "cannot be imported)"]
