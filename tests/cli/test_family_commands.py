"""Each target family through the commands, from checkpoints in the reference layouts: m2pt-export
(verified: merge bit-identical, ONNX Runtime vs torch, structure identical to the vanilla model of
the same family), m2pt-verify, m2pt-merge and m2pt-train."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from m2pt_deploy.cli.common import run_main
from m2pt_deploy.cli.merge import main as merge_main
from m2pt_deploy.cli.train import main as train_main
from m2pt_deploy.cli.verify import main as verify_main
from m2pt_deploy.families import ModelSpec
from m2pt_deploy.metadata import read_metadata
from m2pt_deploy.model.build import build_vanilla
from m2pt_deploy.model.checkpoint import load_checkpoint, save_checkpoint
from tests.cli.commands import assert_user_error, export
from tests.families.point_formats import point_mae_builder
from tests.families.video_formats import write_videomae_checkpoint
from tests.tiny import POINT_OPTIONS, TINY, TINY_POINT, TINY_VIDEO, save_as_users_do, timm_vit


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
    assert_user_error(code, err, "the built-in calibration photos are RGB; a Point-MAE needs --calib-data FILE.npz")
    code, stdout, err = export(["--format", "triton", str(video_ckpt), "-o", str(tmp_path / "repo"),
                                "--name", "clips"], capsys)
    assert code == 0, err
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    config = text_format.Parse((tmp_path / "repo" / "clips" / "config.pbtxt").read_text(),
                               model_config_pb2.ModelConfig())
    assert [list(t.dims) for t in config.input] == [[3, 4, 32, 32]]


# --- no silent guess: a timm ViT 128 wide with 4 heads, as a user saves it ----------------------

HEADS_NOTE = "2 heads: 64-wide heads assumed at 128 wide, not in the weights; pass --num-heads if not"


@pytest.fixture(scope="module")
def vit128(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    model = timm_vit(128, 4)
    return save_as_users_do(tmp_path_factory.mktemp("vit128") / "vit128.pth", model), model


def _max_abs_to(model: Any, onnx_path: Path) -> float:
    import torch

    from m2pt_deploy.runtime.sessions import ort_session

    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = model(x).numpy()
    session = ort_session(str(onnx_path))
    return float(np.abs(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0] - expected).max())


def test_the_assumed_head_count_is_said_on_stderr_and_in_the_report(vit128, tmp_path: Path, capsys) -> None:
    path, _ = vit128
    out, report = tmp_path / "v.onnx", tmp_path / "r.json"
    code, stdout, err = export(["--format", "onnx", str(path), "-o", str(out), "--report", str(report)], capsys)
    _passed_all_three(code, stdout, err)  # it verifies: against its own reading, which the note names
    assert f"note: {HEADS_NOTE}" in err
    assert HEADS_NOTE in json.loads(report.read_text())["notes"]
    verified = tmp_path / "verify.json"
    code, stdout, err = run_main(verify_main, [str(path), "--onnx", str(out), "--report", str(verified)]), \
        *capsys.readouterr()
    _passed_all_three(code, stdout, err)
    assert f"note: {HEADS_NOTE}" in err and HEADS_NOTE in json.loads(verified.read_text())["notes"]
    assert f"note: {HEADS_NOTE}" in stdout  # the verification report's own note lines
    code = run_main(merge_main, [str(path), "-o", str(tmp_path / "m.safetensors")])
    assert code == 0 and f"note: {HEADS_NOTE}" in capsys.readouterr().err
    trt_report = tmp_path / "trt.json"  # verified in ONNX Runtime, then (no TensorRT here) handed off
    code, _, err = export(["--format", "trt", str(path), "-o", str(tmp_path / "v.engine"), "--precision", "fp16",
                           "--report", str(trt_report)], capsys)
    assert f"note: {HEADS_NOTE}" in err and HEADS_NOTE in json.loads(trt_report.read_text())["notes"]


def test_num_heads_exports_the_users_vit(vit128, tmp_path: Path, capsys) -> None:
    path, model = vit128
    out = tmp_path / "v4.onnx"
    code, stdout, err = export(["--format", "onnx", str(path), "-o", str(out), "--num-heads", "4"], capsys)
    _passed_all_three(code, stdout, err)
    assert "heads" not in err, err  # given, not assumed
    assert _max_abs_to(model, out) <= 1e-4


@pytest.mark.parametrize(("width", "heads", "args", "argv", "message"), [
    (128, 4, {}, ["--num-heads", "3"], "--num-heads 3 does not divide the width 128"),
    (96, 3, {}, [], "the head count of a 96-wide ViT is not in the weights and no convention gives one: "
                    "pass --num-heads"),
    (384, 6, {"model": "vit_small_patch16"}, ["--num-heads", "4"],
     "--num-heads 4 contradicts args.model 'vit_small_patch16' (6 heads)"),
], ids=["not-dividing", "no-convention", "contradicts-args"])
def test_head_counts_that_cannot_be_right_exit_2(tmp_path: Path, capsys, width: int, heads: int, args: dict,
                                                 argv: list[str], message: str) -> None:
    path = save_as_users_do(tmp_path / "vit.pth", timm_vit(width, heads), **args)
    out = tmp_path / "v.onnx"
    code, _, err = export(["--format", "onnx", str(path), "-o", str(out), *argv], capsys)
    assert_user_error(code, err)
    assert err.splitlines()[-1] == f"error: {path}: {message}"
    assert not out.exists()


def test_a_merged_file_states_the_heads_and_the_flag_may_not_contradict_it(vit128, tmp_path: Path, capsys) -> None:
    path, model = vit128
    merged = tmp_path / "m.safetensors"
    code = run_main(merge_main, [str(path), "-o", str(merged), "--num-heads", "4"])
    assert code == 0, capsys.readouterr().err
    assert "heads" not in capsys.readouterr().err
    out = tmp_path / "m.onnx"
    code, stdout, err = export(["--format", "onnx", str(merged), "-o", str(out)], capsys)
    _passed_all_three(code, stdout, err)
    assert _max_abs_to(model, out) <= 1e-4
    # Our format states every setting; those the merge read off a foreign file are said as such.
    notes = [line for line in err.splitlines() if line.startswith("note: ")]
    assert notes and all(n.startswith("note: when this file was written: ") for n in notes), notes
    assert not any("heads" in n for n in notes)
    code, _, err = export(["--format", "onnx", str(merged), "-o", str(tmp_path / "x.onnx"), "--num-heads", "2"],
                          capsys)
    assert_user_error(code, err)
    assert err.splitlines()[-1] == f"error: {merged}: --num-heads 2 contradicts the checkpoint's config (4 heads)"


def test_a_file_written_from_an_assumption_keeps_saying_it(vit128, tmp_path: Path, capsys) -> None:
    """m2pt-merge and m2pt-train write our format, which states the head count: the 2 heads they
    assumed would become a silent fact there, so the files record the notes and loads repeat them."""
    path, _ = vit128
    merged = tmp_path / "m.safetensors"
    assert run_main(merge_main, [str(path), "-o", str(merged)]) == 0
    capsys.readouterr()
    assert f"when this file was written: {HEADS_NOTE}" in load_checkpoint(merged).notes
    again = tmp_path / "again.safetensors"
    assert run_main(merge_main, [str(merged), "-o", str(again)]) == 0  # carried on, not nested
    assert f"note: when this file was written: {HEADS_NOTE}" in capsys.readouterr().err
    assert f"when this file was written: {HEADS_NOTE}" in load_checkpoint(again).notes
    assert not any(n.count("when this file was written") > 1 for n in load_checkpoint(again).notes)
    x = np.random.default_rng(0).standard_normal((16, 3, 32, 32)).astype(np.float32)
    np.savez(tmp_path / "data.npz", x=x, y=np.arange(16) % 2)
    code = run_main(train_main, [str(path), "--data", str(tmp_path / "data.npz"), "--num-classes", "2",
                                 "--out", str(tmp_path / "run"), "--epochs", "1", "--batch-size", "8", "--quiet"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert f"note: {HEADS_NOTE}" in err
    assert f"when this file was written: {HEADS_NOTE}" in load_checkpoint(tmp_path / "run" / "last.safetensors").notes


def test_an_aux_needs_no_head_count(tmp_path: Path, capsys) -> None:
    """An aux lends only its weight matrices: a width no convention covers is no reason to refuse it."""
    spec = ModelSpec("vit_base_patch16_224", dict(img_size=32, patch_size=8, embed_dim=96, depth=2, num_heads=3,
                                                  num_classes=2), (3, 32, 32))
    target = save_checkpoint(tmp_path / "target.safetensors", build_vanilla(spec).state_dict(), spec)
    aux = save_as_users_do(tmp_path / "aux.pth", timm_vit(96, 3))
    x = np.random.default_rng(0).standard_normal((16, 3, 32, 32)).astype(np.float32)
    np.savez(tmp_path / "data.npz", x=x, y=np.arange(16) % 2)
    code = run_main(train_main, [str(target), "--aux", f"image={aux}", "--data", str(tmp_path / "data.npz"),
                                 "--out", str(tmp_path / "run"), "--epochs", "1", "--batch-size", "8", "--quiet"])
    assert code == 0, capsys.readouterr().err
    assert load_checkpoint(tmp_path / "run" / "last.safetensors").pathway is not None
