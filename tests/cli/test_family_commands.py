"""Each target family through the commands, from checkpoints in the reference layouts: m2pt-export
(verified: merge bit-identical, ONNX Runtime vs torch, structure identical to the vanilla model of
the same family), m2pt-verify, m2pt-merge and m2pt-train."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from m2pt_deploy.cli.common import run_main
from m2pt_deploy.cli.merge import main as merge_main
from m2pt_deploy.cli.train import main as train_main
from m2pt_deploy.cli.verify import main as verify_main
from m2pt_deploy.export.metadata import read_metadata
from m2pt_deploy.families import ModelSpec
from m2pt_deploy.model.build import build_vanilla
from m2pt_deploy.model.checkpoint import load_checkpoint, save_checkpoint
from tests.cli.commands import assert_user_error, export
from tests.families.point_formats import OPTIONS as POINT_OPTIONS
from tests.families.point_formats import TINY_POINT, point_mae_builder
from tests.families.video_formats import TINY_VIDEO, write_videomae_checkpoint
from tests.tiny import TINY


def _passed_all_three(code: int, out: str, err: str) -> None:
    assert code == 0, err
    assert "PASSED: 3/3 checks passed" in out, out
    for check in ("merge", "runtime", "structure"):
        assert f"PASSED | {check}" in out, out


def _train_one_epoch(tmp_path: Path, spec: ModelSpec, aux_spec: ModelSpec, x: np.ndarray, capsys) -> Any:
    """m2pt-train for one epoch: a vanilla target of ``spec``, one aux, inputs ``x`` of two classes."""
    target = save_checkpoint(tmp_path / "target.safetensors", build_vanilla(spec).state_dict(), spec)
    aux = save_checkpoint(tmp_path / "aux.safetensors", build_vanilla(aux_spec).state_dict(), aux_spec)
    np.savez(tmp_path / "data.npz", x=x, y=np.arange(len(x)) % 2)
    code = run_main(train_main, [str(target), "--aux", f"aux={aux}", "--data", str(tmp_path / "data.npz"),
                                 "--num-classes", "2", "--out", str(tmp_path / "run"), "--epochs", "1",
                                 "--batch-size", "8"])
    assert code == 0, capsys.readouterr().err
    return load_checkpoint(tmp_path / "run" / "last.safetensors")


@pytest.fixture(scope="module")
def video_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("video") / "checkpoint-34.pth"
    return write_videomae_checkpoint(path, prefix="module.").path


def test_a_videomae_reference_checkpoint_exports_verified(video_ckpt: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "video.onnx"
    code, stdout, err = export(["--format", "onnx", str(video_ckpt), "-o", str(out)], capsys)
    _passed_all_three(code, stdout, err)
    assert "vanilla VideoMAE V2" in stdout
    meta = read_metadata(onnx.load(out))
    assert meta["m2pt_deploy.family"] == "videomae"
    assert meta["m2pt_deploy.input"]["layout"] == ["batch", "channels", "frames", "height", "width"]
    assert meta["m2pt_deploy.input"]["shape"] == [3, 4, 32, 32]
    # Hugging Face's name for VideoMAE's clips, in the graph and the metadata.
    assert meta["m2pt_deploy.input"]["name"] == "pixel_values"
    assert [i.name for i in onnx.load(out).graph.input] == ["pixel_values"]
    # The same weights at another clip length: the position table is rebuilt from T, H, W.
    other = tmp_path / "video8.onnx"
    code, stdout, err = export(["--format", "onnx", str(video_ckpt), "-o", str(other), "--input-size", "3", "8",
                                "32", "32", "--precision", "fp16"], capsys)
    _passed_all_three(code, stdout, err)
    assert read_metadata(onnx.load(other))["m2pt_deploy.input"]["shape"] == [3, 8, 32, 32]
    code, stdout, err = run_main(verify_main, [str(video_ckpt), "--onnx", str(out)]), *capsys.readouterr()
    _passed_all_three(code, stdout, err)


@pytest.mark.parametrize(("argv", "needles"), [
    (["--input-size", "3", "5", "32", "32"], ["5 frames do not divide into tubelets of 2"]),
    (["--input-size", "3", "4", "30", "32"], ["30"]),
    (["--input-size", "3", "32", "32"], ["C T H W"]),
    (["--npoints", "512"], ["--npoints does not apply to a VideoMAE V2"]),
], ids=["tubelet", "patch", "three-numbers", "point-flag"])
def test_bad_video_settings_are_one_line_errors(video_ckpt: Path, tmp_path: Path, capsys, argv, needles) -> None:
    out = tmp_path / "v.onnx"
    code, _, err = export(["--format", "onnx", str(video_ckpt), "-o", str(out), *argv], capsys)
    assert_user_error(code, err, *needles)
    assert not out.exists() and not list(tmp_path.iterdir())


def test_a_video_checkpoint_merges_to_a_vanilla_videomae(video_ckpt: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "merged.safetensors"
    assert run_main(merge_main, [str(video_ckpt), "-o", str(out)]) == 0, capsys.readouterr().err
    assert "8 pathway layers folded" in capsys.readouterr().out
    merged = load_checkpoint(out)
    assert merged.spec.family == "videomae" and merged.pathway is None
    assert set(merged.state_dict) == set(build_vanilla(merged.spec).state_dict())


def test_a_video_target_trains_with_an_image_aux(tmp_path: Path, capsys) -> None:
    """M2PT's aux models are timm ViTs of the target's width and depth, whatever the target."""
    x = np.random.default_rng(0).standard_normal((16, *TINY_VIDEO.input_size)).astype(np.float32)
    trained = _train_one_epoch(tmp_path, TINY_VIDEO, TINY, x, capsys)
    assert trained.spec.family == "videomae" and trained.pathway is not None
    assert trained.pathway.block_path == "blocks" and len(trained.pathway.layers) == 4
    code, stdout, err = export(["--format", "onnx", str(tmp_path / "run" / "last.safetensors"),
                                "-o", str(tmp_path / "trained.onnx")], capsys)
    _passed_all_three(code, stdout, err)


def test_image_training_data_is_refused_for_video(tmp_path: Path, capsys) -> None:
    spec: ModelSpec = TINY_VIDEO
    target = save_checkpoint(tmp_path / "target.safetensors", build_vanilla(spec).state_dict(), spec)
    np.savez(tmp_path / "images.npz", x=np.zeros((8, 3, 32, 32), np.float32), y=np.zeros(8, np.int64))
    code = run_main(train_main, [str(target), "--data", str(tmp_path / "images.npz"), "--num-classes", "2",
                                 "--out", str(tmp_path / "run"), "--epochs", "1"])
    assert_user_error(code, capsys.readouterr().err, "trains on model-ready x [N, 3, 4, 32, 32]")


@pytest.fixture(scope="module")
def point_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return point_mae_builder(tmp_path_factory.mktemp("point")).path


def _point_flags() -> list[str]:
    return [f"--{k.replace('_', '-')}={v}" for k, v in POINT_OPTIONS.items()]


def test_a_point_mae_builder_checkpoint_exports_verified(point_ckpt: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "points.onnx"
    code, stdout, err = export(["--format", "onnx", str(point_ckpt), "-o", str(out), *_point_flags()], capsys)
    _passed_all_three(code, stdout, err)
    proto = onnx.load(out)
    ops = {n.op_type for n in proto.graph.node}
    assert {"TopK", "ArgMax"} <= ops, "the exported model groups raw points itself"
    meta = read_metadata(proto)
    assert meta["m2pt_deploy.family"] == "pointmae"
    assert meta["m2pt_deploy.input"]["shape"] == [128, 3]
    assert [i.name for i in proto.graph.input] == ["points"] and meta["m2pt_deploy.input"]["name"] == "points"
    code, stdout, err = run_main(verify_main, [str(point_ckpt), "--onnx", str(out), *_point_flags()]), \
        *capsys.readouterr()
    _passed_all_three(code, stdout, err)


@pytest.mark.parametrize(("argv", "needles"), [
    (["--npoints=8", "--num-group=16", "--group-size=4"], ["--npoints 8 is fewer than --num-group 16"]),
    (["--npoints=128", "--num-group=16", "--group-size=200"], ["200"]),
    (["--input-size", "3", "32", "32"], ["--input-size"]),
], ids=["fewer-points-than-groups", "group-larger-than-cloud", "image-size"])
def test_bad_point_settings_are_one_line_errors(point_ckpt: Path, tmp_path: Path, capsys, argv, needles) -> None:
    out = tmp_path / "p.onnx"
    code, _, err = export(["--format", "onnx", str(point_ckpt), "-o", str(out), "--num-heads=3", *argv], capsys)
    assert_user_error(code, err, *needles)
    assert not list(tmp_path.iterdir())


def test_a_point_target_trains_and_merges(tmp_path: Path, capsys) -> None:
    x = np.random.default_rng(0).uniform(-1, 1, (16, *TINY_POINT.input_size)).astype(np.float32)
    trained = _train_one_epoch(tmp_path, TINY_POINT, TINY_POINT, x, capsys)
    assert trained.spec.family == "pointmae" and trained.pathway is not None
    assert trained.pathway.block_path == "blocks.blocks"
    merged = tmp_path / "merged.safetensors"
    assert run_main(merge_main, [str(tmp_path / "run" / "last.safetensors"), "-o", str(merged)]) == 0
    assert load_checkpoint(merged).pathway is None


def test_point_and_video_models_get_trt_hand_off_and_triton_repositories(point_ckpt: Path, video_ckpt: Path,
                                                                          tmp_path: Path, capsys) -> None:
    """--format trt verifies the fp16 ONNX on the family's own inputs, then hands the build to a GPU
    machine (no TensorRT here); --format triton writes the family's input dims into config.pbtxt."""
    from m2pt_deploy.export.tensorrt import detect_platform

    if detect_platform().missing() is None:
        pytest.skip(reason="asserts the no-TensorRT hand-off; this machine has TensorRT")
    engine = tmp_path / "points.engine"
    code, stdout, err = export(["--format", "trt", str(point_ckpt), "-o", str(engine), "--precision", "fp16",
                                *_point_flags()], capsys)
    assert_user_error(code, err, "TensorRT is not installed", "points.engine.build.sh")
    assert "PASSED | fp16 onnx | onnxrt:points.fp16.onnx vs torch-unmerged" in stdout
    code, _, err = export(["--format", "trt", str(point_ckpt), "-o", str(tmp_path / "p8.engine"), "--precision",
                           "int8", *_point_flags()], capsys)
    assert_user_error(code, err, "calibrates on RGB photo tiles")
    code, stdout, err = export(["--format", "triton", str(video_ckpt), "-o", str(tmp_path / "repo"),
                                "--name", "clips"], capsys)
    assert code == 0, err
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    config = text_format.Parse((tmp_path / "repo" / "clips" / "config.pbtxt").read_text(),
                               model_config_pb2.ModelConfig())
    assert [list(t.dims) for t in config.input] == [[3, 4, 32, 32]]
