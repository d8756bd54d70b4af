from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from m2pt_deploy.errors import M2ptError
from m2pt_deploy.families import family_of
from m2pt_deploy.families.vit import ModelSpec, ViTFamily, infer_spec
from m2pt_deploy.model.build import build_vanilla
from m2pt_deploy.model.checkpoint import load_checkpoint, save_checkpoint
from tests.tiny import TINY, TINY_AUDIO, TINY_MAE, save_as_users_do, timm_vit


@pytest.mark.parametrize("spec", [TINY, TINY_MAE], ids=["cls-token", "mae-avg-pool"])
def test_infer_spec_recovers_a_loadable_architecture(spec) -> None:
    sd = build_vanilla(spec).state_dict()
    inferred = infer_spec(sd)
    assert inferred.input_size == spec.input_size
    assert inferred.num_classes == 10
    kw = inferred.model_kwargs
    assert (kw["embed_dim"], kw["depth"], kw["patch_size"], kw["num_heads"]) == (64, 2, 8, 1)
    assert kw["global_pool"] == spec.model_kwargs.get("global_pool", "token")
    build_vanilla(inferred).load_state_dict(sd)


def test_vit_base_shapes_give_the_standard_arch() -> None:
    import timm

    sd = timm.create_model("vit_base_patch16_224", pretrained=False).state_dict()
    spec = infer_spec(sd)
    assert spec.arch == "vit_base_patch16_224"
    assert spec.model_kwargs["num_heads"] == 12 and spec.input_size == (3, 224, 224)


def test_non_square_input_needs_input_size() -> None:
    sd = build_vanilla(TINY_AUDIO).state_dict()
    with pytest.raises(M2ptError, match="not a square grid; pass --input-size"):
        infer_spec(sd)
    spec = infer_spec(sd, input_size=(1, 16, 48))
    assert spec.input_size == (1, 16, 48) and spec.mean == (0.5,)
    build_vanilla(spec).load_state_dict(sd)


def test_input_size_that_contradicts_the_weights_is_refused() -> None:
    sd = build_vanilla(TINY).state_dict()
    with pytest.raises(M2ptError, match="--input-size says 1 channels, the checkpoint has 3"):
        infer_spec(sd, input_size=(1, 32, 32))
    with pytest.raises(M2ptError, match="gives 4 patches, pos_embed has 16"):
        infer_spec(sd, input_size=(3, 16, 16))


def test_not_a_vit() -> None:
    with pytest.raises(M2ptError, match="not a ViT checkpoint"):
        infer_spec({"conv1.weight": build_vanilla(TINY).state_dict()["pos_embed"]})


def test_a_spec_with_overrides_is_named_by_its_shape() -> None:
    """The structure line once called a 2-block 1-channel model "vanilla vit_tiny_patch16_224"."""
    from tests.tiny import TINY_AUDIO

    described = family_of(TINY_AUDIO).describe(TINY_AUDIO)
    assert described == "ViT (64 wide, 2 blocks, input 1x16x48; timm vit_tiny_patch16_224 with overrides)"
    spec = ModelSpec("vit_base_patch16_224", {}, (3, 224, 224))
    assert family_of(spec).describe(spec) == "vit_base_patch16_224"


# --- no silent guess: the head count and every other value the weights do not show ---------------


def test_a_128_wide_vit_without_the_flag_says_which_head_count_it_assumed(tmp_path: Path) -> None:
    ckpt = load_checkpoint(save_as_users_do(tmp_path / "vit.pth", timm_vit(128, 4)))
    assert ckpt.spec.model_kwargs["num_heads"] == 2
    assert ckpt.notes == (
        "input 3 x 32 x 32: a square 4 x 4 grid assumed from pos_embed's 16 patches, not in the weights; "
        "pass --input-size C H W if not",
        "2 heads: 64-wide heads assumed at 128 wide, not in the weights; pass --num-heads if not",
        "ImageNet mean/std assumed for the input normalisation, not in the weights",
        "timm ViT conventions assumed: LayerNorm eps 1e-6, exact GELU, cls-token pooling (a final norm and "
        "no fc_norm), not in the weights",
        "crop 0.9 and bicubic resize for served images: timm vit_base_patch16_224's eval config assumed, "
        "not in the weights",
    )


def test_num_heads_exports_the_users_vit_exactly(tmp_path: Path) -> None:
    """The ONNX of the 4-head reading equals the real model; the 2-head reading (the old silent
    guess) loads, exports and is not the user's model."""
    from m2pt_deploy.runtime.sessions import ort_session
    from tests.tiny import export

    real = timm_vit(128, 4)
    path = save_as_users_do(tmp_path / "vit.pth", real)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = real(x).numpy()
    errors = {}
    for heads in (4, None):
        ckpt = load_checkpoint(path, options={"num_heads": heads})
        session = ort_session(str(export(ckpt, tmp_path / f"vit{heads}.onnx")))
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        errors[heads] = float(np.abs(got - expected).max())
    assert errors[4] <= 1e-4, errors
    assert errors[None] > 1e-3, errors  # what a silent guess shipped


@pytest.mark.parametrize(("width", "heads", "note"), [
    (768, 12, "12 heads: timm's ViT-B at 768 wide"),
    (192, 3, "3 heads: timm's ViT-Ti at 192 wide"),
    (64, 1, "1 head: 64-wide heads assumed at 64 wide"),
    (256, 4, "4 heads: 64-wide heads assumed at 256 wide"),
])
def test_the_head_count_is_noted_at_every_width_the_standard_ones_too(width: int, heads: int, note: str) -> None:
    notes: list[str] = []
    spec = ViTFamily().infer_spec(timm_vit(width, heads).state_dict(), notes=notes)
    assert spec.model_kwargs["num_heads"] == heads
    assert f"{note}, not in the weights; pass --num-heads if not" in notes


def test_a_head_count_the_file_states_is_used_without_a_note(tmp_path: Path) -> None:
    ckpt = load_checkpoint(save_as_users_do(tmp_path / "s.pth", timm_vit(384, 6), model="vit_small_patch16",
                                  global_pool=False, input_size=32))
    assert build_vanilla(ckpt.spec).blocks[0].attn.num_heads == 6
    assert not any("heads" in n or "grid" in n or "pooling (" in n for n in ckpt.notes), ckpt.notes
    assert load_checkpoint(ckpt.path, options={"num_heads": 6}).spec == ckpt.spec  # agreeing is fine


@pytest.mark.parametrize(("width", "heads", "args", "options", "message"), [
    (128, 4, {}, {"num_heads": 3}, "--num-heads 3 does not divide the width 128"),
    (96, 3, {}, {}, "the head count of a 96-wide ViT is not in the weights and no convention gives one: "
                    "pass --num-heads"),
    (384, 6, {"model": "vit_small_patch16"}, {"num_heads": 4},
     "--num-heads 4 contradicts args.model 'vit_small_patch16' (6 heads)"),
], ids=["not-dividing", "no-convention", "contradicts-args"])
def test_head_counts_that_cannot_be_right_are_refused(tmp_path: Path, width: int, heads: int, args: dict,
                                                      options: dict, message: str) -> None:
    path = save_as_users_do(tmp_path / "vit.pth", timm_vit(width, heads), **args)
    with pytest.raises(M2ptError) as e:
        load_checkpoint(path, options=options)
    assert str(e.value) == f"{path}: {message}"


def test_a_width_without_a_convention_loads_with_the_flag(tmp_path: Path) -> None:
    ckpt = load_checkpoint(save_as_users_do(tmp_path / "vit.pth", timm_vit(96, 3)), options={"num_heads": 3})
    assert build_vanilla(ckpt.spec).blocks[0].attn.num_heads == 3


def test_our_config_states_the_head_count_and_the_flag_may_not_contradict_it(tmp_path: Path) -> None:
    spec = dataclasses.replace(TINY, model_kwargs={**TINY.model_kwargs, "embed_dim": 128, "num_heads": 4})
    path = save_checkpoint(tmp_path / "ours.safetensors", build_vanilla(spec).state_dict(), spec)
    ckpt = load_checkpoint(path)
    assert ckpt.spec.model_kwargs["num_heads"] == 4 and ckpt.notes == ()  # nothing assumed
    assert load_checkpoint(path, options={"num_heads": 4}).spec == ckpt.spec
    with pytest.raises(M2ptError) as e:
        load_checkpoint(path, options={"num_heads": 2})
    assert str(e.value) == f"{path}: --num-heads 2 contradicts the checkpoint's config (4 heads)"


def test_audiomae_and_mae_notes_name_their_normalisation_and_pooling() -> None:
    notes: list[str] = []
    ViTFamily().infer_spec(build_vanilla(TINY_MAE).state_dict(), notes=notes)
    assert notes[-2] == ("timm ViT conventions assumed: LayerNorm eps 1e-6, exact GELU, mean pooling (fc_norm and no "
                         "final norm: MAE's global pool), not in the weights")
    notes = []
    audio = ViTFamily().infer_spec(build_vanilla(TINY_AUDIO).state_dict(), input_size=(1, 16, 48), notes=notes)
    assert audio.mean == (0.5,)
    assert "mean 0.5, std 0.5 assumed for the 1-channel input normalisation, not in the weights" in notes


def test_audiomae_takes_num_heads_too(tmp_path: Path) -> None:
    audio = timm_vit(128, 4, img_size=(1024, 128), patch_size=16, in_chans=1)
    path = save_as_users_do(tmp_path / "audio.pth", audio)
    assumed = load_checkpoint(path)
    assert assumed.spec.input_size == (1, 1024, 128) and assumed.spec.model_kwargs["num_heads"] == 2
    assert "2 heads: 64-wide heads assumed at 128 wide, not in the weights; pass --num-heads if not" in assumed.notes
    given = load_checkpoint(path, options={"num_heads": 4})
    model = build_vanilla(given.spec)
    model.load_state_dict(audio.state_dict())
    x = torch.randn(2, 1, 1024, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(x), audio(x))
