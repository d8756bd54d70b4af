"""What saved training ``args`` contribute to a checkpoint's spec, and when they are refused."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pytest
import torch

from m2pt_deploy.errors import M2ptError
from m2pt_deploy.families import ModelSpec
from m2pt_deploy.model.build import build_vanilla
from m2pt_deploy.model.checkpoint import load_checkpoint
from tests.tiny import TINY

# A real timm width (ViT-S, 384 wide, 6 heads) kept small: one block, a 2 × 2 grid.
SMALL = ModelSpec("vit_small_patch16_224",
                  dict(img_size=32, patch_size=16, embed_dim=384, depth=1, num_heads=6, num_classes=7), (3, 32, 32))


def _save(path: Path, spec: ModelSpec, **args) -> Path:
    torch.manual_seed(0)
    torch.save({"model": build_vanilla(spec).state_dict(), "epoch": 1, "args": argparse.Namespace(**args)}, path)
    return path


def test_args_model_names_the_architecture_and_its_heads(tmp_path: Path) -> None:
    ckpt = load_checkpoint(_save(tmp_path / "s.pth", SMALL, model="vit_small_patch16", nb_classes=7, input_size=32))
    assert ckpt.spec.arch == "vit_small_patch16_224" and "num_heads" not in ckpt.spec.model_kwargs
    assert build_vanilla(ckpt.spec).blocks[0].attn.num_heads == 6
    assert "architecture vit_small_patch16_224 from args.model 'vit_small_patch16'" in ckpt.notes
    assert "7 classes, as args.nb_classes says" in ckpt.notes


@pytest.mark.parametrize(("args", "message"), [
    (dict(model="vit_base_patch16"), "args.model 'vit_base_patch16' is 768 wide, the weights are 384 wide"),
    (dict(nb_classes=1000), "args.nb_classes is 1000, the head has 7 outputs"),
    (dict(global_pool=True), "args.global_pool is True, but the weights have a final norm and no fc_norm"),
    (dict(input_size=224), "input 224x224 with patch 16 gives 196 patches, pos_embed has 4"),
], ids=["model-width", "classes", "pooling", "input-size"])
def test_args_that_contradict_the_weights_are_refused(tmp_path: Path, args: dict, message: str) -> None:
    path = _save(tmp_path / "s.pth", SMALL, **args)
    with pytest.raises(M2ptError, match=f"s.pth: {message}"):
        load_checkpoint(path)


def test_audio_args_give_the_dataset_length_and_normalisation(tmp_path: Path) -> None:
    esc50 = ModelSpec("vit_tiny_patch16_224", dict(img_size=(512, 128), patch_size=16, in_chans=1, embed_dim=64,
                                                   depth=1, num_heads=1, num_classes=50), (1, 512, 128))
    ckpt = load_checkpoint(_save(tmp_path / "a.pth", esc50, audio_exp=True, dataset="esc50", input_size=224))
    assert ckpt.spec.input_size == (1, 512, 128)
    assert ckpt.spec.mean == (-6.6268077,) and ckpt.spec.std == (2 * 5.358466,)


def test_a_config_that_contradicts_the_weights_is_refused_before_building(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    from m2pt_deploy.model.checkpoint import METADATA_KEY, save_checkpoint

    path = save_checkpoint(tmp_path / "ok.safetensors", build_vanilla(TINY).state_dict(), TINY)
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        metadata = dict(f.metadata())
    metadata[METADATA_KEY] = metadata[METADATA_KEY].replace('"input_size": [3, 32, 32]',
                                                            '"input_size": [3, 65536, 65536]')
    metadata[METADATA_KEY] = metadata[METADATA_KEY].replace('"img_size": 32', '"img_size": 65536')
    save_file(load_file(path), tmp_path / "huge.safetensors", metadata=metadata)
    start = time.perf_counter()
    with pytest.raises(M2ptError, match="huge.safetensors: input 65536x65536 with patch 8 gives 67108864 patches"):
        load_checkpoint(tmp_path / "huge.safetensors")
    assert time.perf_counter() - start < 2.0  # refused from shapes: the 65536² model is never built


def test_arch_of_another_width_is_refused(tmp_path: Path) -> None:
    path = _save(tmp_path / "s.pth", SMALL)
    with pytest.raises(M2ptError, match="--arch vit_tiny_patch16_224 is 192 wide, the checkpoint's weights are 384"):
        load_checkpoint(path, arch="vit_tiny_patch16_224")


def test_what_the_user_passes_wins_and_args_are_then_not_reported(tmp_path: Path) -> None:
    path = _save(tmp_path / "s.pth", SMALL, model="vit_base_patch16", input_size=224)  # both contradict
    ckpt = load_checkpoint(path, arch="vit_small_patch16_224", input_size=(3, 32, 32))
    assert ckpt.spec.arch == "vit_small_patch16_224" and ckpt.spec.input_size == (3, 32, 32)
    assert not any("args.model" in n or "args.input_size" in n for n in ckpt.notes)
