from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from m2pt_deploy.errors import M2ptError
from m2pt_deploy.merge import merge_model
from m2pt_deploy.model.build import build_unmerged, build_vanilla
from m2pt_deploy.model.checkpoint import METADATA_KEY, load_checkpoint, read_state_dict, save_checkpoint
from tests.tiny import TINY, TINY_MAE, make_pathway_model, pathway_info, reference_state_dict


def test_our_format_round_trips_the_model(m2pt_ckpt: Path, input_batch) -> None:
    ckpt = load_checkpoint(m2pt_ckpt)
    assert ckpt.kind == "m2pt"
    assert ckpt.spec == TINY
    assert ckpt.pathway == pathway_info(2)
    original = make_pathway_model(n_aux=2)
    x = input_batch(TINY, 2)
    assert torch.equal(build_unmerged(ckpt)(x), original(x))


@pytest.mark.parametrize("naming", ["aux", "pretrained"])
@pytest.mark.parametrize("wrapper", ["model", "module", "state_dict", "base_model", None])
def test_reference_checkpoints_in_every_nesting(tmp_path: Path, naming: str, wrapper: str | None, input_batch) -> None:
    model = make_pathway_model()
    sd = reference_state_dict(model, naming=naming)
    path = tmp_path / "ref.pth"
    torch.save({wrapper: sd, "args": {"lr": 1e-3}} if wrapper else sd, path)
    ckpt = load_checkpoint(path)
    assert ckpt.kind == "reference"
    assert ckpt.pathway is not None and ckpt.pathway.layers == ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")
    x = input_batch(TINY, 2)
    assert torch.equal(build_unmerged(ckpt)(x), model(x))


def test_module_prefix_is_stripped(reference_ckpt: Path) -> None:
    ckpt = load_checkpoint(reference_ckpt)
    assert not any(k.startswith("module.") for k in ckpt.state_dict)


def test_reference_linear_probe_head(tmp_path: Path, input_batch) -> None:
    model = make_pathway_model(TINY_MAE)
    sd = reference_state_dict(model)
    head_w, head_b = sd.pop("head.weight"), sd.pop("head.bias")
    sd |= {"head.0.running_mean": torch.randn(64) * 0.1, "head.0.running_var": torch.rand(64) + 0.5,
           "head.0.num_batches_tracked": torch.tensor(7), "head.1.weight": head_w, "head.1.bias": head_b}
    path = tmp_path / "probe.pth"
    torch.save({"model": sd}, path)
    ckpt = load_checkpoint(path)
    assert ckpt.has_probe_head and ckpt.spec.num_classes == 10
    unmerged = build_unmerged(ckpt)
    merged = merge_model(unmerged, ckpt.spec)
    x = input_batch(TINY_MAE, 4)
    torch.testing.assert_close(merged(x), unmerged(x), atol=1e-5, rtol=1e-5)


def test_plain_timm_checkpoint_has_no_pathway(tmp_path: Path) -> None:
    path = tmp_path / "vit.pth"
    torch.save(build_vanilla(TINY).state_dict(), path)
    ckpt = load_checkpoint(path)
    assert ckpt.kind == "timm" and ckpt.pathway is None


def test_saved_file_is_plain_safetensors_with_json_config(m2pt_ckpt: Path) -> None:
    tensors, metadata = read_state_dict(m2pt_ckpt)
    config = json.loads(metadata[METADATA_KEY])
    assert config["spec"]["arch"] == "vit_tiny_patch16_224"
    assert [a["modality"] for a in config["pathway"]["aux"]] == ["audio", "point_cloud"]
    assert load_file(m2pt_ckpt).keys() == tensors.keys()


def test_save_refuses_to_overwrite_without_force(m2pt_ckpt: Path) -> None:
    sd = load_file(m2pt_ckpt)
    with pytest.raises(M2ptError, match="output exists; pass --force"):
        save_checkpoint(m2pt_ckpt, sd, TINY)
    save_checkpoint(m2pt_ckpt, sd, TINY, force=True)


def test_failed_save_leaves_nothing_behind(tmp_path: Path, monkeypatch) -> None:
    import safetensors.torch

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", disk_full)
    with pytest.raises(M2ptError, match="could not write output: No space left on device"):
        save_checkpoint(tmp_path / "out.safetensors", {"x": torch.zeros(1)}, TINY)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: None, "no such file"),
        (lambda p: p.mkdir(), "is a directory"),
        (lambda p: p.write_bytes(b"PK\x03"), "truncated or empty file"),
        (lambda p: p.write_bytes(b"this is not a checkpoint at all"), "not a readable PyTorch checkpoint"),
        (lambda p: torch.save([1, 2, 3], p), "not a checkpoint: no state dict inside"),
        (lambda p: torch.save({"model": {"lr": 0.1}}, p), "not a checkpoint: no tensors"),
    ],
    ids=["missing", "directory", "empty", "garbage", "list", "no-tensors"],
)
def test_unreadable_inputs_name_the_file(tmp_path: Path, make, message: str) -> None:
    path = tmp_path / "bad.pth"
    make(path)
    with pytest.raises(M2ptError, match=message) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)


def test_truncated_checkpoint(tmp_path: Path, reference_ckpt: Path) -> None:
    data = reference_ckpt.read_bytes()
    path = tmp_path / "cut.pth"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(M2ptError, match="truncated or corrupt|not a readable"):
        load_checkpoint(path)
    st = tmp_path / "cut.safetensors"
    save_file({"a": torch.zeros(1000)}, st)
    st.write_bytes(st.read_bytes()[:500])
    with pytest.raises(M2ptError, match="truncated or corrupt safetensors"):
        load_checkpoint(st)


class NeedsCode:
    def __init__(self) -> None:
        self.weight = torch.zeros(2)


def test_pickle_that_needs_code_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "code.pth"
    torch.save({"model": NeedsCode()}, path)
    with pytest.raises(M2ptError, match="needs code to run"):
        load_checkpoint(path)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_non_finite_weights_are_named(tmp_path: Path, bad: float) -> None:
    sd = build_vanilla(TINY).state_dict()
    sd["blocks.1.mlp.fc1.weight"][0, 0] = bad
    path = tmp_path / "nan.pth"
    torch.save(sd, path)
    what = "NaN" if bad != bad else "Inf"
    with pytest.raises(M2ptError, match=f"blocks.1.mlp.fc1.weight contains {what}"):
        load_checkpoint(path)


def test_aux_shape_mismatch_names_layer_and_shapes(tmp_path: Path) -> None:
    sd = reference_state_dict(make_pathway_model())
    sd["blocks.1.mlp.fc1.aux_weight"] = torch.zeros(128, 64)
    path = tmp_path / "mismatch.pth"
    torch.save(sd, path)
    with pytest.raises(M2ptError, match=r"blocks\.1\.mlp\.fc1: target weight \(256, 64\) vs aux #0 weight \(128, 64\)"):
        build_unmerged(load_checkpoint(path))
