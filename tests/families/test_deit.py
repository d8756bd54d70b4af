"""The worked example of a family added in one file (families/deit.py): timm's distilled DeiT goes
through load, m2pt-merge, m2pt-export, m2pt-verify, the server and m2pt-train."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import load_file
from torch import nn

from m2pt_deploy.cli.common import run_main
from m2pt_deploy.cli.merge import main as merge_main
from m2pt_deploy.cli.train import main as train_main
from m2pt_deploy.cli.verify import main as verify_main
from m2pt_deploy.errors import M2ptError
from m2pt_deploy.families import ViTFamily, detect_family, family_of, get_family
from m2pt_deploy.metadata import read_metadata
from m2pt_deploy.model.build import build_unmerged, build_vanilla
from m2pt_deploy.model.checkpoint import PathwayInfo, load_checkpoint, save_checkpoint
from m2pt_deploy.model.pathway import DEFAULT_LAYERS, add_pathways, pathway_state_dict
from tests.cli.commands import assert_user_error, export
from tests.tiny import TINY, TINY_DEIT, random_lambdas, save_as_users_do


def _users_deit() -> nn.Module:
    """A tiny DeiT built as timm users build it, not from a spec."""
    torch.manual_seed(0)
    return timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False, img_size=32, patch_size=8,
                             embed_dim=64, depth=2, num_heads=1, num_classes=10).eval()


@pytest.fixture(scope="module")
def deit_pth(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, nn.Module]:
    model = _users_deit()
    return save_as_users_do(tmp_path_factory.mktemp("deit") / "deit.pth", model), model


@pytest.fixture(scope="module")
def pathway_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A DeiT target with a pathway from an image ViT of the same width and depth."""
    torch.manual_seed(1)
    target, aux = build_vanilla(TINY_DEIT), build_vanilla(TINY)
    add_pathways(target, aux, layers=DEFAULT_LAYERS)
    random_lambdas(target)
    info = PathwayInfo(DEFAULT_LAYERS, "blocks", "scalar", ({"modality": "image", "sha256": None},))
    path = tmp_path_factory.mktemp("deit_pathway") / "deit_m2pt.safetensors"
    return save_checkpoint(path, pathway_state_dict(target), TINY_DEIT, pathway=info)


def test_deit_outranks_the_vit_family_that_would_misread_it(deit_pth: tuple[Path, nn.Module]) -> None:
    sd = deit_pth[1].state_dict()
    assert ViTFamily().recognizes(sd)  # the generic family would claim it ...
    with pytest.raises(M2ptError, match="pos_embed has 17 patches, not a square grid"):
        ViTFamily().infer_spec(sd)  # ... and count the distillation token as a patch
    assert detect_family(sd) is get_family("deit")


def test_load_reads_a_users_deit_and_builds_it_exactly(deit_pth: tuple[Path, nn.Module]) -> None:
    path, model = deit_pth
    ckpt = load_checkpoint(path)
    assert ckpt.spec.family == "deit" and ckpt.spec.arch == "deit_base_distilled_patch16_224"
    assert ckpt.spec.model_kwargs["embed_dim"] == 64 and ckpt.spec.model_kwargs["num_heads"] == 1
    assert family_of(ckpt.spec).describe(ckpt.spec).startswith("DeiT (64 wide, 2 blocks, input 3x32x32")
    built = build_unmerged(ckpt)
    x = torch.randn(3, 3, 32, 32)
    assert torch.equal(built(x), model(x))  # the mean of head and head_dist, as timm computes it


def test_a_deit_pathway_checkpoint_merges_exports_verifies_and_serves(pathway_ckpt: Path, tmp_path: Path,
                                                                    capsys) -> None:
    merged = tmp_path / "merged.safetensors"
    assert run_main(merge_main, [str(pathway_ckpt), "-o", str(merged)]) == 0, capsys.readouterr().err
    assert "DeiT (64 wide" in capsys.readouterr().out
    unmerged = build_unmerged(load_checkpoint(pathway_ckpt))
    vanilla = build_unmerged(load_checkpoint(merged))
    assert set(load_file(merged)) == set(build_vanilla(TINY_DEIT).state_dict())
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(vanilla(x), unmerged(x))

    onnx_file = tmp_path / "deit.onnx"
    code, out, err = export(["--format", "onnx", str(pathway_ckpt), "-o", str(onnx_file)], capsys)
    assert code == 0, err
    assert "PASSED: 3/3 checks passed" in out and "vanilla DeiT" in out
    import onnx

    assert read_metadata(onnx.load(onnx_file))["m2pt_deploy.family"] == "deit"
    code = run_main(verify_main, [str(pathway_ckpt), "--onnx", str(onnx_file)])
    out = capsys.readouterr().out
    assert code == 0 and "PASSED: 3/3 checks passed" in out, out
    _served_equals_onnxruntime(onnx_file)


def _served_equals_onnxruntime(onnx_file: Path) -> None:
    from m2pt_deploy.runtime.sessions import cpu_session
    from m2pt_deploy.serving.runtime import OrtModel
    from tests.serving.conftest import http, start_inproc_server

    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    body = json.dumps({"inputs": [{"name": "pixel_values", "shape": list(x.shape), "datatype": "FP32",
                                   "data": x.ravel().tolist()}]}).encode()
    url, server, thread = start_inproc_server(OrtModel("vit", onnx_file, providers=["CPUExecutionProvider"]))
    try:
        status, _, reply = http("POST", f"{url}/v2/models/vit/infer", body)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    assert status == 200, reply
    got = np.asarray(json.loads(reply)["outputs"][0]["data"], np.float32).reshape(2, 10)
    np.testing.assert_array_equal(got, cpu_session(onnx_file).run(None, {"pixel_values": x})[0])


def test_m2pt_train_gives_a_deit_pathways_and_new_heads(deit_pth: tuple[Path, nn.Module], tmp_path: Path,
                                                       capsys) -> None:
    """Two classes instead of ten: both heads (head and head_dist) are re-initialised."""
    aux = save_checkpoint(tmp_path / "aux.safetensors", build_vanilla(TINY).state_dict(), TINY)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "data.npz", x=rng.standard_normal((16, 3, 32, 32)).astype(np.float32),
             y=np.arange(16) % 2)
    argv = [str(deit_pth[0]), "--aux", f"image={aux}", "--data", str(tmp_path / "data.npz"), "--num-classes", "2",
            "--out", str(tmp_path / "run"), "--epochs", "1", "--batch-size", "8"]
    assert run_main(train_main, argv) == 0, capsys.readouterr().err
    trained = load_checkpoint(tmp_path / "run" / "last.safetensors")
    assert trained.spec.family == "deit" and trained.spec.num_classes == 2
    assert trained.pathway is not None and trained.pathway.block_path == "blocks" and len(trained.pathway.layers) == 4
    assert tuple(trained.state_dict["head_dist.weight"].shape) == (2, 64)
    assert build_unmerged(trained)(torch.randn(1, 3, 32, 32)).shape == (1, 2)
    capsys.readouterr()
    code = run_main(train_main, [*argv[:-4], "--out", str(tmp_path / "probe"), "--epochs", "1", "--batch-size", "8",
                                 "--mode", "probe"])
    assert_user_error(code, capsys.readouterr().err, "linear probing (--mode probe) is MAE's recipe for ViTs, "
                                                     "not for a DeiT")


def test_the_distillation_token_is_trained_as_a_token() -> None:
    """No weight decay and the first layer's learning rate, as timm and MAE treat cls_token."""
    from m2pt_deploy.train.optim import param_groups

    groups = param_groups(build_vanilla(TINY_DEIT), lr=1.0, lambda_lr=1.0, weight_decay=0.05, layer_decay=0.5,
                          depth=2)
    group = next(g for g in groups if "dist_token" in g["param_names"])
    assert group["name"] == "layer0_no_decay" and group["weight_decay"] == 0.0


def test_family_deit_on_other_weights_is_one_line(tmp_path: Path, capsys) -> None:
    path = save_as_users_do(tmp_path / "vit.pth", build_vanilla(TINY))
    code, _, err = export(["--format", "onnx", str(path), "-o", str(tmp_path / "x.onnx"), "--family", "deit"], capsys)
    assert_user_error(code, err, str(path), "not a distilled DeiT checkpoint: no dist_token")
