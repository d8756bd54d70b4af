from __future__ import annotations

import pytest

from m2pt_deploy.errors import M2ptError
from m2pt_deploy.families.vit import ModelSpec, infer_spec
from m2pt_deploy.model.build import build_vanilla
from tests.tiny import TINY, TINY_AUDIO, TINY_MAE


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

    assert TINY_AUDIO.describe() == "ViT (64 wide, 2 blocks, input 1x16x48; timm vit_tiny_patch16_224 with overrides)"
    assert ModelSpec("vit_base_patch16_224", {}, (3, 224, 224)).describe() == "vit_base_patch16_224"
