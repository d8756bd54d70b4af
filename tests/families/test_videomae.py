from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from m2pt_deploy.errors import M2ptError
from m2pt_deploy.families import ModelSpec, detect_family, family_of, get_family
from m2pt_deploy.families.video_transformer import VideoMAEClassifier, sinusoid_table
from m2pt_deploy.families.videomae import VideoMAEFamily
from m2pt_deploy.merge import merge_model, merged_state_dict
from m2pt_deploy.model.build import build_unmerged, build_vanilla
from m2pt_deploy.model.checkpoint import load_checkpoint
from m2pt_deploy.model.pathway import add_pathways, pathway_layers
from tests.families.video_formats import (
    randomise_weights,
    tiny_args,
    video_pathway_model,
    videomae_args,
    write_videomae_checkpoint,
)
from tests.tiny import TINY, TINY_VIDEO

FAMILY = VideoMAEFamily()
LAYERS = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")


def _video(n: int = 2, spec: ModelSpec = TINY_VIDEO, seed: int = 7) -> Tensor:
    return torch.randn(n, *spec.input_size, generator=torch.Generator().manual_seed(seed))


def _vanilla_sd(spec: ModelSpec = TINY_VIDEO) -> dict[str, Tensor]:
    torch.manual_seed(0)
    return build_vanilla(spec).state_dict()


def _small_sd() -> dict[str, Tensor]:
    """VideoMAE V2-S's widths (384, 6 heads) at one block and a tiny input: real-name inference."""
    return VideoMAEClassifier(img_size=32, patch_size=16, embed_dim=384, depth=1, num_heads=6, num_frames=2,
                              num_classes=5).state_dict()


# --- an independent forward, straight from the state dict and the reference's formulas ---------


def _numpy_table(n: int, d: int) -> Tensor:
    angles = np.array([[pos / np.power(10000, 2 * (j // 2) / d) for j in range(d)] for pos in range(n)])
    angles[:, 0::2] = np.sin(angles[:, 0::2])
    angles[:, 1::2] = np.cos(angles[:, 1::2])
    return torch.tensor(angles, dtype=torch.float32)


def _ln(x: Tensor, sd: dict[str, Tensor], name: str) -> Tensor:
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + 1e-6) * sd[f"{name}.weight"] + sd[f"{name}.bias"]


def _lin(x: Tensor, sd: dict[str, Tensor], name: str) -> Tensor:
    return x @ sd[f"{name}.weight"].T + sd[f"{name}.bias"]


def reference_forward(sd: dict[str, Tensor], x: Tensor, *, heads: int) -> Tensor:
    """VideoMAE V2's forward in float64, tubelets cut by reshape (no Conv3d), one head at a time."""
    sd = {k: v.double() for k, v in sd.items()}
    x = x.double()
    width, _, t, p, _ = sd["patch_embed.proj.weight"].shape
    b, c, frames, h, w = x.shape
    cubes = x.reshape(b, c, frames // t, t, h // p, p, w // p, p).permute(0, 2, 4, 6, 1, 3, 5, 7)
    tokens = cubes.reshape(b, -1, c * t * p * p) @ sd["patch_embed.proj.weight"].reshape(width, -1).T
    tokens = tokens + sd["patch_embed.proj.bias"]
    tokens = tokens + _numpy_table(tokens.shape[1], width).double()
    hd = width // heads
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    for i in range(depth):
        pre = f"blocks.{i}."
        y = _ln(tokens, sd, pre + "norm1")
        wq, wk, wv = sd[pre + "attn.qkv.weight"].split(width)
        q, k, v = y @ wq.T, y @ wk.T, y @ wv.T
        if pre + "attn.q_bias" in sd:
            q, v = q + sd[pre + "attn.q_bias"], v + sd[pre + "attn.v_bias"]
        outs = []
        for j in range(heads):
            sl = slice(j * hd, (j + 1) * hd)
            scores = (q[..., sl] * hd**-0.5) @ k[..., sl].transpose(-1, -2)
            outs.append(scores.softmax(-1) @ v[..., sl])
        attn = _lin(torch.cat(outs, -1), sd, pre + "attn.proj")
        tokens = tokens + sd.get(pre + "gamma_1", torch.tensor(1.0)) * attn
        hidden = _lin(_ln(tokens, sd, pre + "norm2"), sd, pre + "mlp.fc1")
        hidden = 0.5 * hidden * (1 + torch.erf(hidden / math.sqrt(2)))
        tokens = tokens + sd.get(pre + "gamma_2", torch.tensor(1.0)) * _lin(hidden, sd, pre + "mlp.fc2")
    feat = _ln(tokens.mean(1), sd, "fc_norm") if "fc_norm.weight" in sd else _ln(tokens[:, 0], sd, "norm")
    return _lin(feat, sd, "head")


VARIANTS = {
    "mean-pool-2-heads": dict(num_heads=2),
    "layer-scale": dict(num_heads=2, init_values=0.1),
    "first-token-norm": dict(num_heads=4, use_mean_pooling=False),
    "patch-16": dict(patch_size=16, num_heads=2),
}


@pytest.mark.parametrize("variant", list(VARIANTS), ids=list(VARIANTS))
def test_model_matches_an_independent_forward(variant: str) -> None:
    kw = {**TINY_VIDEO.model_kwargs, **VARIANTS[variant]}
    torch.manual_seed(1)
    model = VideoMAEClassifier(**kw).eval()
    randomise_weights(model, 3)
    sd = model.state_dict()
    x = _video()
    with torch.no_grad():
        out = model(x)
    expected = reference_forward(sd, x, heads=kw["num_heads"])
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), expected, atol=2e-5, rtol=1e-5)
    assert ("blocks.0.gamma_1" in sd) == (variant == "layer-scale")
    assert ("fc_norm.weight" in sd) != (variant == "first-token-norm")


def test_state_dict_keys_are_videomae_v2s() -> None:
    sd = build_vanilla(TINY_VIDEO).state_dict()
    assert "pos_embed" not in sd  # a non-persistent buffer, as in the reference
    norms = [m for m in build_vanilla(TINY_VIDEO).modules() if isinstance(m, nn.LayerNorm)]
    assert len(norms) == 5 and all(m.eps == 1e-6 for m in norms)  # too small to show in outputs
    assert sd["patch_embed.proj.weight"].shape == (64, 3, 2, 8, 8)
    block = sorted(k.removeprefix("blocks.0.") for k in sd if k.startswith("blocks.0."))
    assert block == sorted(["norm1.weight", "norm1.bias", "attn.q_bias", "attn.v_bias", "attn.qkv.weight",
                            "attn.proj.weight", "attn.proj.bias", "norm2.weight", "norm2.bias", "mlp.fc1.weight",
                            "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias"])
    assert {k for k in sd if not k.startswith("blocks.")} == {
        "patch_embed.proj.weight", "patch_embed.proj.bias", "fc_norm.weight", "fc_norm.bias", "head.weight",
        "head.bias"}


def test_sinusoid_table_is_the_references_float64_table() -> None:
    table = sinusoid_table(1568, 768)
    assert table.shape == (1, 1568, 768) and table.dtype == torch.float32
    # float64 in numpy, then float32: equal to the last bit (a float32 computation is not).
    assert torch.equal(table[0, :64], _numpy_table(64, 768))
    assert torch.equal(sinusoid_table(40, 64)[0], _numpy_table(40, 64))


def test_a_wrong_input_size_is_refused_by_the_model() -> None:
    model = build_vanilla(TINY_VIDEO)
    with pytest.raises(ValueError, match=r"\(2, 32, 32\) vs the model's \(4, 32, 32\)"):
        model(torch.zeros(1, 3, 2, 32, 32))


# --- recognition and spec inference ----------------------------------------------------------


def test_each_family_recognises_only_its_own_checkpoints() -> None:
    video, image = _vanilla_sd(), build_vanilla(TINY).state_dict()
    assert FAMILY.recognizes(video) and not FAMILY.recognizes(image)
    assert not get_family("vit").recognizes(video) and get_family("vit").recognizes(image)
    assert detect_family(video).name == "videomae" and detect_family(image).name == "vit"


def test_spec_from_shapes_alone_assumes_the_default_input_and_says_so() -> None:
    notes: list[str] = []
    spec = FAMILY.infer_spec(_vanilla_sd(), notes=notes)
    assert spec.family == "videomae" and spec.arch == "videomae_v2_w64"
    assert spec.input_size == (3, 16, 224, 224)
    kw = spec.model_kwargs
    assert (kw["embed_dim"], kw["depth"], kw["num_heads"], kw["mlp_ratio"]) == (64, 2, 1, 4.0)
    assert (kw["patch_size"], kw["tubelet_size"], kw["num_frames"], kw["img_size"]) == (8, 2, 16, (224, 224))
    assert (kw["num_classes"], kw["qkv_bias"], kw["init_values"], kw["use_mean_pooling"]) == (10, True, 0.0, True)
    assert spec.mean == (0.485, 0.456, 0.406) and spec.std == (0.229, 0.224, 0.225)
    assert any("default input 3 x 16 x 224 x 224" in n and "not in the weights" in n for n in notes)
    assert "1 head: 64-wide heads assumed at 64 wide, not in the weights; pass --num-heads if not" in notes


def test_spec_from_training_args() -> None:
    notes: list[str] = []
    spec = FAMILY.infer_spec(_vanilla_sd(), args=vars(tiny_args(num_segments=2)), notes=notes)
    assert spec.input_size == (3, 8, 32, 32)  # num_frames × num_segments, as the reference builds it
    assert "input 8 x 32 x 32 (frames x height x width) from args.num_frames / args.input_size" in notes
    assert "10 classes, as args.nb_classes says" in notes
    assert any("'vit_m2pt_test_tiny' is not a VideoMAE V2 architecture" in n for n in notes)
    build_vanilla(spec).load_state_dict(_vanilla_sd())


def test_the_users_input_size_wins_over_args() -> None:
    notes: list[str] = []
    spec = FAMILY.infer_spec(_vanilla_sd(), input_size=(3, 6, 16, 24), args=vars(tiny_args()), notes=notes)
    assert spec.input_size == (3, 6, 16, 24) and spec.model_kwargs["img_size"] == (16, 24)
    assert not any("from args.num_frames" in n for n in notes)


def test_heads_from_args_model_arch_option_and_width() -> None:
    sd = _small_sd()
    notes: list[str] = []
    spec = FAMILY.infer_spec(sd, input_size=(3, 2, 32, 32), args={"model": "vit_small_patch16_224"}, notes=notes)
    assert spec.model_kwargs["num_heads"] == 6 and spec.arch == "videomae_v2_small"
    assert "6 attention heads from args.model 'vit_small_patch16_224'" in notes
    assert FAMILY.infer_spec(sd, input_size=(3, 2, 32, 32)).model_kwargs["num_heads"] == 6  # width table
    assert FAMILY.infer_spec(sd, input_size=(3, 2, 32, 32), arch="videomae_v2_small").arch == "videomae_v2_small"
    given = FAMILY.infer_spec(sd, input_size=(3, 2, 32, 32), options={"num_heads": 3})
    assert given.model_kwargs["num_heads"] == 3


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(args={"model": "vit_base_patch16_224"}), "'vit_base_patch16_224' is 768 wide, the weights are 384"),
    (dict(arch="vit_large_patch16_224"), "--arch 'vit_large_patch16_224' is 1024 wide, the weights are 384 wide"),
    (dict(arch="vit_small_patch14_224"), "has patch 14, the weights' Conv3d has patch 16"),
    (dict(arch="resnet50"), "'resnet50' is not a VideoMAE V2 architecture"),
    (dict(options={"num_heads": 5}), "--num-heads 5 does not divide the width 384"),
    (dict(options={"npoints": 5}), "--npoints does not apply to a VideoMAE V2"),
])
def test_architecture_names_that_contradict_the_weights(kwargs: dict, message: str) -> None:
    with pytest.raises(M2ptError, match=message):
        FAMILY.infer_spec(_small_sd(), input_size=(3, 2, 32, 32), **kwargs)


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(input_size=(3, 32, 32)), r"--input-size is C T H W \(4 numbers\), got 3: 3 32 32"),
    (dict(input_size=(1, 4, 32, 32)), "--input-size says 1 channels, the checkpoint has 3"),
    (dict(input_size=(3, 5, 32, 32)), "--input-size 3 5 32 32: 5 frames do not divide into tubelets of 2"),
    (dict(input_size=(3, 4, 36, 32)), r"--input-size 3 4 36 32: 36 x 32 does not divide into 8 x 8 patches"),
    (dict(input_size=(3, 0, 32, 32)), "every size must be positive"),
    (dict(args={"tubelet_size": 4}), "args.tubelet_size is 4, the weights' Conv3d has tubelet 2"),
    (dict(args={"num_frames": 5}), "args.num_frames / args.input_size: 5 frames do not divide into tubelets of 2"),
    (dict(args={"input_size": 30}), "args.num_frames / args.input_size: 30 x 30 does not divide into 8 x 8"),
    (dict(args={"nb_classes": 400}), "args.nb_classes is 400, the head has 10 outputs"),
    (dict(args={"use_mean_pooling": False}), "args.use_mean_pooling is False, but the weights have fc_norm"),
])
def test_bad_input_is_one_line_error(kwargs: dict, message: str) -> None:
    with pytest.raises(M2ptError, match=message) as e:
        FAMILY.infer_spec(_vanilla_sd(), **kwargs)
    assert "\n" not in str(e.value)


def test_not_a_videomae_checkpoint() -> None:
    with pytest.raises(M2ptError, match="no 5-D patch_embed.proj.weight"):
        FAMILY.infer_spec(build_vanilla(TINY).state_dict())
    sd = {**_vanilla_sd(), "pos_embed": torch.zeros(1, 32, 64)}
    with pytest.raises(M2ptError, match="learned pos_embed"):
        FAMILY.infer_spec(sd)


def test_check_spec_refuses_a_config_the_weights_contradict() -> None:
    sd = _vanilla_sd()
    FAMILY.check_spec(TINY_VIDEO, sd)
    deeper = dataclasses.replace(TINY_VIDEO, model_kwargs={**TINY_VIDEO.model_kwargs, "depth": 3})
    with pytest.raises(M2ptError, match="the config says depth 3, the weights have 2"):
        FAMILY.check_spec(deeper, sd)
    scaled = dataclasses.replace(TINY_VIDEO, model_kwargs={**TINY_VIDEO.model_kwargs, "init_values": 0.1})
    with pytest.raises(M2ptError, match="init_values True, the weights have False"):
        FAMILY.check_spec(scaled, sd)
    skewed = dataclasses.replace(TINY_VIDEO, input_size=(3, 8, 32, 32))
    with pytest.raises(M2ptError, match=r"model input \(3, 4, 32, 32\) disagrees with its input size \(3, 8, 32, 32\)"):
        FAMILY.check_spec(skewed, sd)
    # A JSON round trip turns img_size into a list; still the same spec.
    FAMILY.check_spec(ModelSpec.from_dict(TINY_VIDEO.to_dict()), sd)


def test_with_input_size_and_override() -> None:
    spec = family_of(TINY_VIDEO).with_input_size(TINY_VIDEO, (3, 8, 16, 48))
    assert spec.input_size == (3, 8, 16, 48) and spec.model_kwargs["num_frames"] == 8
    assert build_vanilla(spec)(_video(1, spec)).shape == (1, 10)
    with pytest.raises(M2ptError, match="7 frames do not divide into tubelets of 2"):
        family_of(TINY_VIDEO).with_input_size(TINY_VIDEO, (3, 7, 32, 32))
    sd = _vanilla_sd()
    assert FAMILY.override(TINY_VIDEO, sd) is TINY_VIDEO
    moved = FAMILY.override(TINY_VIDEO, sd, input_size=(3, 2, 32, 32), options={"num_heads": 1})
    assert moved.input_size == (3, 2, 32, 32) and moved.model_kwargs["num_heads"] == 1
    assert moved.arch == TINY_VIDEO.arch
    # The config states 1 head: a --num-heads that differs is a contradiction, not an override.
    with pytest.raises(M2ptError, match=r"^--num-heads 2 contradicts the checkpoint's config \(1 head\)$"):
        FAMILY.override(TINY_VIDEO, sd, options={"num_heads": 2})


def test_describe_and_input_metadata() -> None:
    described = family_of(TINY_VIDEO).describe(TINY_VIDEO)
    assert described == ("VideoMAE V2 (videomae_v2_w64: 64 wide, 2 blocks, 1 heads, tubelet 2, "
                         "patch 8; input 3x4x32x32)")
    meta = FAMILY.input_metadata(TINY_VIDEO)
    assert meta["modality"] == "video" and meta["layout"] == ["batch", "channels", "frames", "height", "width"]
    assert (meta["channels"], meta["frames"], meta["height"], meta["width"]) == (3, 4, 32, 32)
    assert meta["shape"] == [3, 4, 32, 32] and meta["mean"] == [0.485, 0.456, 0.406]


# --- pathways and merging ---------------------------------------------------------------------


def test_pathway_on_the_bias_free_qkv_changes_the_forward() -> None:
    torch.manual_seed(0)
    model = build_vanilla(TINY_VIDEO)
    randomise_weights(model, 0)
    x = _video()
    with torch.no_grad():
        before = model(x)
        add_pathways(model, _vanilla_sd(), layers=("attn.qkv",), block_path="blocks")
        assert torch.equal(model(x), before)  # λ starts at 0
        pathway_layers(model)["blocks.0.attn.qkv"].scales[0].fill_(0.5)
        assert not torch.allclose(model(x), before)  # the attention reads the parametrized .weight


def _assert_merge_is_exact(model: nn.Module, spec: ModelSpec) -> nn.Module:
    merged = merge_model(model, spec)
    x = _video(3, spec)
    with torch.no_grad():
        assert torch.equal(merged(x), model(x))
    assert type(merged.blocks[0].attn.qkv) is nn.Linear and merged.blocks[0].attn.qkv.bias is None
    assert list(merged.state_dict()) == list(build_vanilla(spec).state_dict())
    return merged


def test_merged_model_is_bit_identical_and_vanilla() -> None:
    model = video_pathway_model()
    assert len(pathway_layers(model)) == 2 * len(LAYERS)
    _assert_merge_is_exact(model, TINY_VIDEO)


def test_merge_is_exact_for_random_lambdas() -> None:
    hypothesis = pytest.importorskip("hypothesis", reason="hypothesis is a dev dependency")
    st = hypothesis.strategies

    @hypothesis.settings(max_examples=6, deadline=None, derandomize=True)
    @hypothesis.given(seed=st.integers(0, 2**16), scale=st.floats(1e-3, 3.0), layer_scale=st.booleans())
    def check(seed: int, scale: float, layer_scale: bool) -> None:
        spec = dataclasses.replace(
            TINY_VIDEO, model_kwargs={**TINY_VIDEO.model_kwargs, "init_values": 0.1 if layer_scale else 0.0})
        _assert_merge_is_exact(video_pathway_model(spec, seed=seed, lam_scale=scale), spec)

    check()


# --- ONNX -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def exported() -> tuple[nn.Module, object, object, dict[str, Tensor]]:
    from m2pt_deploy.export.onnx import export_model

    model = video_pathway_model(seed=4)
    merged = merge_model(model, TINY_VIDEO, exportable=True)
    torch.manual_seed(1)
    vanilla = build_vanilla(TINY_VIDEO, exportable=True)
    randomise_weights(vanilla, 9)
    return merged, export_model(merged, TINY_VIDEO), export_model(vanilla, TINY_VIDEO), merged_state_dict(model)


def test_onnx_runtime_matches_torch_at_any_batch(exported) -> None:
    import onnxruntime as ort

    merged, proto, _, _ = exported
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    for batch in (1, 3):
        x = _video(batch, seed=batch)
        (got,) = session.run(None, {name: x.numpy()})
        with torch.no_grad():
            want = merged(x).numpy()
        assert got.shape == (batch, 10)
        assert np.abs(got - want).max() <= 1e-4


def test_merged_export_has_the_vanilla_structure(exported) -> None:
    from m2pt_deploy.verify.structure import check_structure, graph_signature, structure_differences

    _, proto, vanilla_proto, merged_sd = exported
    assert structure_differences(graph_signature(proto), graph_signature(vanilla_proto)) == []
    result = check_structure(proto, TINY_VIDEO, like=merged_sd)
    assert result, str(result)
    assert "Conv" in graph_signature(proto).ops


# --- reference-format checkpoints ----------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["", "module."], ids=["plain", "ddp-prefix"])
def test_reference_checkpoint_loads_with_pathways(tmp_path: Path, prefix: str) -> None:
    written = write_videomae_checkpoint(tmp_path / "checkpoint-34.pth", prefix=prefix, seed=2)
    ckpt = load_checkpoint(written.path)
    assert ckpt.kind == "reference" and ckpt.spec.family == "videomae"
    assert ckpt.spec == TINY_VIDEO
    assert "input 4 x 32 x 32 (frames x height x width) from args.num_frames / args.input_size" in ckpt.notes
    assert ckpt.pathway is not None and set(ckpt.pathway.layers) == set(LAYERS)
    assert ckpt.pathway.block_path == "blocks" and ckpt.pathway.lambda_kind == "scalar"
    assert "blocks.1.attn.qkv.aux_weight.0" in ckpt.state_dict
    model = build_unmerged(ckpt)
    x = _video(2)
    with torch.no_grad():
        assert torch.equal(model(x), written.model(x))
        assert torch.equal(merge_model(model, ckpt.spec)(x), model(x))


def test_reference_checkpoint_ema_and_input_override(tmp_path: Path) -> None:
    written = write_videomae_checkpoint(tmp_path / "ema.pth", ema=True, args=videomae_args(
        model="vit_m2pt_test_tiny", nb_classes=10))
    ckpt = load_checkpoint(written.path, ema=True)
    assert ckpt.spec.input_size == (3, 16, 224, 224)  # args say VideoMAE V2's 16 x 224 x 224
    small = load_checkpoint(written.path, input_size=(3, 4, 32, 32))
    assert small.spec == TINY_VIDEO
    with pytest.raises(M2ptError, match="ema.pth: --input-size 3 3 32 32: 3 frames do not divide"):
        load_checkpoint(written.path, input_size=(3, 3, 32, 32))


@pytest.mark.slow
def test_full_size_videomae_v2_base_from_its_training_args() -> None:
    """ViT-B at VideoMAE V2's real input, 16 x 224 x 224 = 1568 tokens, named by the saved args."""
    with torch.device("meta"):
        shapes = VideoMAEClassifier(num_classes=400).state_dict()  # shapes only, no memory
    notes: list[str] = []
    spec = FAMILY.infer_spec(shapes, args=vars(videomae_args()), notes=notes)
    assert spec.arch == "videomae_v2_base" and spec.input_size == (3, 16, 224, 224)
    assert spec.model_kwargs["num_heads"] == 12 and spec.model_kwargs["mlp_ratio"] == 4.0
    assert "12 attention heads from args.model 'vit_base_patch16_224'" in notes
    model = build_vanilla(spec)
    assert model.pos_embed.shape == (1, 1568, 768)
    assert torch.equal(model.pos_embed, sinusoid_table(1568, 768))
    with torch.no_grad():
        out = model(torch.randn(1, *spec.input_size, generator=torch.Generator().manual_seed(0)))
    assert out.shape == (1, 400) and torch.isfinite(out).all()


# --- no silent guess ----------------------------------------------------------------------------


def test_without_args_every_assumed_value_is_noted() -> None:
    notes: list[str] = []
    FAMILY.infer_spec(_vanilla_sd(), notes=notes)
    assert notes == [
        "1 head: 64-wide heads assumed at 64 wide, not in the weights; pass --num-heads if not",
        "assumed VideoMAE V2's default input 3 x 16 x 224 x 224 (C x T x H x W): the position table is not in the "
        "weights; pass --input-size C T H W to override",
        "ImageNet mean/std (VideoMAE V2's datasets) assumed for the input normalisation, not in the weights",
        "VideoMAE V2 conventions assumed: LayerNorm eps 1e-6, exact GELU, a fixed sinusoidal position table, "
        "not in the weights",
    ]
    notes = []
    FAMILY.infer_spec(_small_sd(), input_size=(3, 2, 32, 32), notes=notes)
    assert "6 heads: VideoMAE V2-small at 384 wide, not in the weights; pass --num-heads if not" in notes


def test_a_stated_head_count_is_not_noted_and_the_flag_may_not_contradict_it() -> None:
    notes: list[str] = []
    FAMILY.infer_spec(_small_sd(), input_size=(3, 2, 32, 32), args={"model": "vit_small_patch16_224"},
                      options={"num_heads": 6}, notes=notes)
    assert not any(n.startswith("6 heads:") for n in notes)
    with pytest.raises(M2ptError) as e:
        FAMILY.infer_spec(_small_sd(), input_size=(3, 2, 32, 32), args={"model": "vit_small_patch16_224"},
                          options={"num_heads": 3})
    assert str(e.value) == "--num-heads 3 contradicts args.model 'vit_small_patch16_224' (6 heads)"


def test_a_width_without_a_convention_needs_the_flag() -> None:
    sd = VideoMAEClassifier(img_size=32, patch_size=16, embed_dim=96, depth=1, num_heads=3, num_frames=2,
                            num_classes=5).state_dict()
    with pytest.raises(M2ptError) as e:
        FAMILY.infer_spec(sd, input_size=(3, 2, 32, 32))
    assert str(e.value) == ("the head count of a 96-wide VideoMAE V2 is not in the weights and no convention gives "
                            "one: pass --num-heads")
    spec = FAMILY.infer_spec(sd, input_size=(3, 2, 32, 32), options={"num_heads": 3})
    build_vanilla(spec).load_state_dict(sd)
