"""``m2pt-export --precision int8`` for every family: the shipped small trained VideoMAE V2, Point-MAE
and AudioMAE (``m2pt_deploy/assets/small``) calibrated on ``--calib-data`` in their own model-ready
layout and verified on a held-out split of it; what is refused (no calibration data, the wrong
layout or shape) is one line, before any export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from m2pt_deploy.metadata import read_metadata
from m2pt_deploy.runtime.sessions import is_optimized
from tests.cli.commands import assert_user_error, export
from tests.families.point_formats import point_mae_builder
from tests.families.trained import family_inputs, trained_model
from tests.families.video_formats import write_videomae_checkpoint
from tests.tiny import POINT_OPTIONS, TINY_AUDIOMAE, write_model

INPUT_NAMES = {"video": "pixel_values", "points": "points", "audio": "input_values"}


@pytest.fixture(scope="module", params=["video", "points", "audio"])
def trained(request, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path, Path]:
    """``(kind, checkpoint, calibration .npz)``: 64 fresh inputs of its task (not the training ones), x only."""
    kind = request.param
    folder = tmp_path_factory.mktemp(kind)
    x, _ = family_inputs(kind, 64)
    np.savez(folder / "calib.npz", x=x)
    return kind, trained_model(kind), folder / "calib.npz"


def test_int8_of_every_family_passes_on_its_own_inputs(trained, tmp_path: Path, capsys) -> None:
    kind, best, calib = trained
    out, report = tmp_path / f"{kind}.onnx", tmp_path / "report.json"
    code, stdout, err = export([str(best), "--precision", "int8", "--optimize", "--calib-data", str(calib),
                                "--calib-images", "32", "--verify-images", "32", "-o", str(out),
                                "--report", str(report)], capsys)
    assert code == 0, stdout + err
    line = next(line for line in stdout.splitlines() if "int8 onnx (cpu)" in line)
    assert line.startswith("PASSED") and f"32 held out of {calib}" in line, line
    assert "(Q/DQ, 32 calibration inputs)" in err and "WARNING" not in err
    result = json.loads(report.read_text())
    assert result["passed"] and result["stats"]["top1_total"] == 32
    proto = onnx.load(out)
    assert is_optimized(proto)
    assert any(n.op_type in ("QLinearMatMul", "MatMulIntegerToFloat", "QGemm", "QLinearConv", "DynamicQuantizeMatMul")
               for n in proto.graph.node)
    # Named for what it holds, in the graph and in the metadata servers read.
    assert [i.name for i in proto.graph.input] == [INPUT_NAMES[kind]]
    assert read_metadata(proto)["m2pt_deploy.input"]["name"] == INPUT_NAMES[kind]
    _served_as_onnxruntime_runs_it(out, INPUT_NAMES[kind], np.load(calib)["x"][:3])


def _served_as_onnxruntime_runs_it(path: Path, name: str, x: np.ndarray) -> None:
    """m2pt-serve's core serves the int8 file over HTTP with the outputs ONNX Runtime gives directly."""
    from m2pt_deploy.runtime.sessions import cpu_session
    from m2pt_deploy.serving.runtime import OrtModel
    from tests.serving.conftest import start_inproc_servers

    httpclient = pytest.importorskip("tritonclient.http", reason="serving the int8 file needs tritonclient[http]")
    x = np.ascontiguousarray(x, dtype=np.float32)
    want = cpu_session(path).run(None, {name: x})[0]
    url, _, server, thread = start_inproc_servers(OrtModel("vit", path, providers=["CPUExecutionProvider"]))
    try:
        with httpclient.InferenceServerClient(url.removeprefix("http://")) as client:
            tensor = httpclient.InferInput(name, list(x.shape), "FP32")
            tensor.set_data_from_numpy(x, binary_data=True)
            got = client.infer("vit", [tensor]).as_numpy("logits")
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    np.testing.assert_array_equal(got, want)


def test_tensorrt_int8_of_every_family_is_calibrated_and_verified_on_its_own_inputs(trained, tmp_path: Path,
                                                                                    capsys) -> None:
    """The Q/DQ ONNX a TensorRT engine is built from, calibrated on ``--calib-data`` and verified in ONNX
    Runtime on a held-out part of it; TensorRT itself is not installable here, so the build is handed off."""
    from m2pt_deploy.export.tensorrt import detect_platform

    if detect_platform().missing() is None:
        pytest.skip(reason="asserts the no-TensorRT hand-off; this machine has TensorRT")
    kind, best, calib = trained
    engine = tmp_path / f"{kind}.engine"
    code, stdout, err = export(["--format", "trt", str(best), "--precision", "int8", "--calib-data", str(calib),
                                "--calib-images", "32", "--verify-images", "32", "-o", str(engine)], capsys)
    assert_user_error(code, err, "TensorRT is not installed", f"{kind}.engine.build.sh")
    line = next(line for line in stdout.splitlines() if "int8 onnx" in line)
    assert line.startswith("PASSED") and "/32 |" in line, line  # TensorRT int8's bar: 98% top-1 agreement
    proto = onnx.load(tmp_path / f"{kind}.int8.onnx")
    assert sum(n.op_type == "QuantizeLinear" for n in proto.graph.node) > 0
    assert [i.name for i in proto.graph.input] == [INPUT_NAMES[kind]]


@pytest.fixture(scope="module")
def untrained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    """The checkpoint argument (and flags) of an untrained video and point model, for the refusals."""
    folder = tmp_path_factory.mktemp("untrained")
    video = write_videomae_checkpoint(folder / "checkpoint-34.pth", prefix="module.").path
    point = point_mae_builder(folder).path
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in POINT_OPTIONS.items()]
    audio = write_model(folder / "audiomae.safetensors", TINY_AUDIOMAE, seed=0)
    return {"video": [str(video)], "points": [str(point), *flags], "audio": [str(audio)]}


def _refused(argv: list[str], out: Path, capsys, *needles: str) -> str:
    code, _, err = export([*argv, "--precision", "int8", "-o", str(out)], capsys)
    assert_user_error(code, err, *needles)
    assert "merging and exporting" not in err, "refused before the export's work"
    assert not out.exists() and not [p for p in out.parent.iterdir() if p.name.startswith(".")]
    return err


@pytest.mark.parametrize(("kind", "needles"), [
    ("video", ("a VideoMAE V2 needs --calib-data FILE.npz",
               "[N, 3, 4, 32, 32] (batch, channels, frames, height, width)")),
    ("points", ("a Point-MAE needs --calib-data FILE.npz", "[N, 128, 3] (batch, points, xyz)")),
    ("audio", ("an AudioMAE ViT needs --calib-data FILE.npz whose x holds its own spectrogram inputs",
               "[N, 1, 1024, 128] (batch, channels, height, width)")),
])
def test_no_calibration_data_is_refused_right_after_loading(untrained, kind: str, needles: tuple[str, ...],
                                                            tmp_path: Path, capsys) -> None:
    _refused(untrained[kind], tmp_path / "m.onnx", capsys, *needles)


@pytest.mark.parametrize(("kind", "x", "needles"), [
    ("video", np.zeros((12, 3, 8, 64, 64), np.float32),  # another clip size
     ("'x' is [12, 3, 8, 64, 64], a VideoMAE V2 takes model-ready [N, 3, 4, 32, 32]",)),
    ("video", np.zeros((12, 3, 32, 32), np.float32),  # images, not clips
     ("'x' is [12, 3, 32, 32], a VideoMAE V2 takes model-ready [N, 3, 4, 32, 32]",)),
    ("points", np.zeros((12, 3, 128), np.float32),  # channels first
     ("'x' is [12, 3, 128], a Point-MAE takes model-ready [N, 128, 3] (batch, points, xyz)",)),
    ("points", np.zeros((12, 128, 3, 1), np.float32),
     ("'x' is [12, 128, 3, 1], a Point-MAE takes model-ready [N, 128, 3]",)),
    ("audio", np.zeros((12, 1, 128, 1024), np.float32),  # frequency x time: resizing would hide it
     ("'x' is [12, 1, 128, 1024], an AudioMAE spectrogram model takes [N, 1, 1024, 128]",)),
], ids=["video-shape", "video-layout", "points-transposed", "points-layout", "audio-transposed"])
def test_calibration_data_in_another_layout_or_shape_is_refused(untrained, kind: str, x: np.ndarray,
                                                                needles: tuple[str, ...], tmp_path: Path,
                                                                capsys) -> None:
    calib = tmp_path / "data" / "calib.npz"
    calib.parent.mkdir()
    np.savez(calib, x=x)
    _refused([*untrained[kind], "--calib-data", str(calib)], tmp_path / "m.onnx", capsys, str(calib), *needles)


def test_a_folder_of_images_is_refused_for_a_point_model(untrained, tmp_path: Path, capsys) -> None:
    (tmp_path / "photos").mkdir()
    _refused([*untrained["points"], "--calib-data", str(tmp_path / "photos")], tmp_path / "m.onnx", capsys,
             "a Point-MAE calibrates on an .npz of model-ready inputs, x [N, 128, 3]")
