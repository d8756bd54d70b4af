"""The ``pointmae`` family: recognition, spec inference, grouping, forward, merge, ONNX, reference files."""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

from m2pt_deploy.errors import M2ptError
from m2pt_deploy.families import ModelSpec, detect_family, get_family
from m2pt_deploy.families.point_transformer import farthest_point_sample, knn_indices
from m2pt_deploy.families.pointmae import PointMAEFamily
from m2pt_deploy.families.vit import ViTFamily
from m2pt_deploy.merge import merge_model, merged_state_dict
from m2pt_deploy.model.build import build_unmerged, build_vanilla
from m2pt_deploy.model.checkpoint import load_checkpoint
from m2pt_deploy.model.pathway import pathway_layers
from tests.families.point_formats import BLOCK_PATH, make_point_model, make_point_pathway_model, point_mae_builder
from tests.tiny import POINT_OPTIONS as OPTIONS
from tests.tiny import TINY, TINY_POINT, random_lambdas

FAMILY = PointMAEFamily()
CONVENTIONS = ("Point-MAE conventions assumed: LayerNorm and BatchNorm eps 1e-5, exact GELU, farthest point "
               "sampling from point 0, kNN by squared distance, not in the weights")


def cloud(batch: int, n: int = 128, *, seed: int = 0) -> Tensor:
    """Uniform points in [-1, 1]³: no ties in FPS or KNN distances."""
    return FAMILY.example_input(dataclasses.replace(TINY_POINT, input_size=(n, 3)), batch, seed=seed)


# ------------------------------------------------------------------ recognition and spec


def test_each_family_claims_only_its_own_weights() -> None:
    point_sd = make_point_model().state_dict()
    vit_sd = build_vanilla(TINY).state_dict()
    assert FAMILY.recognizes(point_sd) and not ViTFamily().recognizes(point_sd)
    assert not FAMILY.recognizes(vit_sd)
    assert detect_family(point_sd).name == "pointmae"
    assert detect_family(vit_sd).name == "vit"
    assert get_family("pointmae").block_path == BLOCK_PATH


def test_infer_spec_reads_shapes_and_takes_options() -> None:
    notes: list[str] = []
    spec = FAMILY.infer_spec(make_point_model().state_dict(), options=OPTIONS, notes=notes)
    assert spec == TINY_POINT
    assert notes == [CONVENTIONS]  # every setting given: only the model's own conventions are assumed
    assert FAMILY.describe(spec) == "Point-MAE (48 wide, 2 blocks, 3 heads; 128 points in 16 groups of 8)"
    meta = FAMILY.input_metadata(spec)
    assert meta["layout"] == ["batch", "points", "xyz"] and meta["shape"] == [128, 3]
    assert (meta["modality"], meta["num_group"], meta["group_size"], meta["mean"]) == ("points", 16, 8, [])
    build_vanilla(spec).load_state_dict(make_point_model().state_dict())


def test_defaults_are_point_mae_s_and_each_is_noted() -> None:
    notes: list[str] = []
    spec = FAMILY.infer_spec(make_point_model().state_dict(), notes=notes)
    kw = spec.model_kwargs
    assert (kw["npoints"], kw["num_group"], kw["group_size"], kw["num_heads"]) == (1024, 64, 32, 6)
    assert spec.input_size == (1024, 3)
    assert notes == [
        "assumed Point-MAE's grouping: 1024 points, 64 groups of 32 (pass --npoints/--num-group/--group-size)",
        "6 heads: as in every Point-MAE config, not in the weights; pass --num-heads if not",
        CONVENTIONS,
    ]


def test_input_size_sets_npoints_and_training_args_fill_the_rest() -> None:
    notes: list[str] = []
    spec = FAMILY.infer_spec(make_point_model().state_dict(), input_size=(256, 3),
                             args={"num_group": 16, "group_size": 8}, options={"num_heads": 3}, notes=notes)
    assert spec.input_size == (256, 3) and spec.model_kwargs["npoints"] == 256
    assert (spec.model_kwargs["num_group"], spec.model_kwargs["group_size"]) == (16, 8)
    assert notes == ["from the training args: num_group 16, group_size 8", CONVENTIONS]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"options": {**OPTIONS, "npoints": 12}}, "--npoints 12 is fewer than --num-group 16"),
    ({"options": {**OPTIONS, "group_size": 200}}, "--group-size 200 is more than --npoints 128"),
    ({"options": {**OPTIONS, "num_heads": 5}}, "--num-heads 5 does not divide the width 48"),
    ({"options": {**OPTIONS, "num_group": 0}}, "--num-group must be a whole number of at least 1, got 0"),
    ({"options": {"patch_size": 16}}, "--patch-size does not apply to a Point-MAE"),
    ({"input_size": (3, 128, 1)}, r"a Point-MAE's --input-size is N 3 \(points x xyz\), got 3 128 1"),
    ({"input_size": (128, 4)}, "--input-size is N 3"),
    ({"input_size": (256, 3), "options": OPTIONS}, "--input-size says 256 points, --npoints says 128"),
    ({"arch": "vit_base_patch16_224", "options": OPTIONS}, "--arch vit_base_patch16_224: a Point-MAE model is"),
], ids=["few-points", "big-groups", "heads", "zero-groups", "unknown-option", "input-rank", "input-xyz",
        "input-vs-npoints", "arch"])
def test_bad_settings_are_one_line_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(M2ptError, match=message) as info:
        FAMILY.infer_spec(make_point_model().state_dict(), **kwargs)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(("key", "shape", "message"), [
    ("cls_head_finetune.0.weight", (256, 64), "cls_head_finetune.0.weight has 64, the cls token's width 48 implies 96"),
    ("encoder.second_conv.3.weight", (32, 512, 1), r"encoder.second_conv.3.weight \(encoder_dims\) has 32"),
    ("blocks.blocks.0.attn.qkv.weight", (96, 48), r"blocks.blocks.0.attn.qkv.weight has \(96, 48\)"),
], ids=["head", "encoder-dims", "qkv"])
def test_shape_contradictions_are_refused(key: str, shape: tuple[int, ...], message: str) -> None:
    sd = make_point_model().state_dict()
    sd[key] = torch.zeros(shape)
    with pytest.raises(M2ptError, match=message):
        FAMILY.infer_spec(sd, options=OPTIONS)


def test_a_backbone_without_the_classifier_is_refused() -> None:
    sd = {k: v for k, v in make_point_model().state_dict().items() if not k.startswith("cls_head_finetune.8")}
    with pytest.raises(M2ptError, match="not a Point-MAE classifier: no cls_head_finetune.8.weight"):
        FAMILY.infer_spec(sd, options=OPTIONS)


def test_check_spec_and_override() -> None:
    sd = make_point_model().state_dict()
    FAMILY.check_spec(TINY_POINT, sd)
    wrong = dataclasses.replace(TINY_POINT, model_kwargs={**TINY_POINT.model_kwargs, "depth": 3})
    with pytest.raises(M2ptError, match="the config says depth 3, the weights have 2"):
        FAMILY.check_spec(wrong, sd)
    bare = dataclasses.replace(TINY_POINT, model_kwargs={k: v for k, v in TINY_POINT.model_kwargs.items()
                                                         if k != "num_heads"})
    with pytest.raises(M2ptError, match="the config's model_kwargs lack num_heads"):
        FAMILY.check_spec(bare, sd)
    assert FAMILY.override(TINY_POINT, sd) is TINY_POINT
    bigger = FAMILY.override(TINY_POINT, sd, input_size=(512, 3))
    assert bigger.input_size == (512, 3) and bigger.model_kwargs["npoints"] == 512
    assert bigger.model_kwargs["num_heads"] == 3  # declared, kept
    regrouped = FAMILY.override(TINY_POINT, sd, options={"num_group": 32, "group_size": None})
    assert (regrouped.model_kwargs["num_group"], regrouped.model_kwargs["group_size"]) == (32, 8)
    with pytest.raises(M2ptError, match="--npoints 128 is fewer than --num-group 256"):
        FAMILY.override(TINY_POINT, sd, options={"num_group": 256})
    assert ModelSpec.from_dict(TINY_POINT.to_dict()) == TINY_POINT


# ------------------------------------------------------------------ grouping


def numpy_fps(points: np.ndarray, m: int, *, kernel_rule: bool = True) -> list[int]:
    """Textbook FPS from index 0 in float64, one point at a time (pointnet2_ops' skip rule optional)."""
    chosen = [0]
    nearest = [np.inf] * len(points)
    for _ in range(m - 1):
        last = points[chosen[-1]].astype(np.float64)
        best, best_i = -1.0, 0
        for i, p in enumerate(points.astype(np.float64)):
            if kernel_rule and float(p @ p) <= 1e-3:
                continue
            nearest[i] = min(nearest[i], float(((p - last) ** 2).sum()))
            if nearest[i] > best:
                best, best_i = nearest[i], i
        chosen.append(best_i)
    return chosen


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fps_matches_a_brute_force_numpy_fps(seed: int) -> None:
    xyz = cloud(2, 96, seed=seed)
    got = farthest_point_sample(xyz, 12)
    assert got.shape == (2, 12) and got.dtype == torch.long
    for b in range(2):
        assert got[b].tolist() == numpy_fps(xyz[b].numpy(), 12)
        assert len(set(got[b].tolist())) == 12


def test_fps_never_picks_a_point_at_the_origin_as_the_cuda_kernel() -> None:
    xyz = cloud(1, 64, seed=3) * 0.1 + 1.0  # a small cluster round (1, 1, 1) ...
    xyz[0, 7] = torch.tensor([0.01, 0.0, -0.01])  # ... and the farthest point, at the origin
    assert numpy_fps(xyz[0].numpy(), 4, kernel_rule=False)[1] == 7
    got = farthest_point_sample(xyz, 4)[0].tolist()
    assert 7 not in got and got == numpy_fps(xyz[0].numpy(), 4)


def test_knn_matches_numpy() -> None:
    xyz = cloud(2, 128, seed=4)
    centres = xyz[:, :10]
    got = knn_indices(xyz, centres, 8)
    d = ((centres.double().numpy()[:, :, None] - xyz.double().numpy()[:, None]) ** 2).sum(-1)
    np.testing.assert_array_equal(got.numpy(), np.argsort(d, axis=-1, kind="stable")[..., :8])
    assert (got[..., 0] == torch.arange(10)).all()  # each centre is its own nearest point


# ------------------------------------------------------------------ forward against the state dict


def reference_forward(sd: dict[str, Tensor], pts: Tensor, kw: dict) -> Tensor:
    """Point-MAE's forward written from the state dict with functional ops and numpy grouping."""
    def lin(x: Tensor, name: str) -> Tensor:
        return F.linear(x, sd[f"{name}.weight"], sd.get(f"{name}.bias"))

    def bn(x: Tensor, name: str) -> Tensor:
        return F.batch_norm(x, sd[f"{name}.running_mean"], sd[f"{name}.running_var"], sd[f"{name}.weight"],
                            sd[f"{name}.bias"], training=False, eps=1e-5)

    def conv(x: Tensor, name: str) -> Tensor:
        return F.conv1d(x, sd[f"{name}.weight"], sd[f"{name}.bias"])

    g, k, width, heads = kw["num_group"], kw["group_size"], kw["embed_dim"], kw["num_heads"]
    tokens, centres_all = [], []
    for cloud_np in pts.numpy():
        idx = numpy_fps(cloud_np, g)
        centres = cloud_np[idx]
        order = np.argsort(((centres[:, None] - cloud_np[None]) ** 2).sum(-1), axis=-1)[:, :k]
        groups = torch.from_numpy(cloud_np[order] - centres[:, None])  # (G, K, 3)
        f = conv(F.relu(bn(conv(groups.transpose(1, 2), "encoder.first_conv.0"), "encoder.first_conv.1")),
                 "encoder.first_conv.3")
        f = torch.cat([f.amax(2, keepdim=True).expand(-1, -1, k), f], 1)
        f = conv(F.relu(bn(conv(f, "encoder.second_conv.0"), "encoder.second_conv.1")), "encoder.second_conv.3")
        tokens.append(f.amax(2))
        centres_all.append(torch.from_numpy(centres))
    batch = len(tokens)
    x = torch.cat([sd["cls_token"].expand(batch, -1, -1), torch.stack(tokens)], 1)
    pos = torch.cat([sd["cls_pos"].expand(batch, -1, -1),
                     lin(F.gelu(lin(torch.stack(centres_all), "pos_embed.0")), "pos_embed.2")], 1)
    for i in range(kw["depth"]):
        p = f"{BLOCK_PATH}.{i}"
        x = x + pos
        h = F.layer_norm(x, (width,), sd[f"{p}.norm1.weight"], sd[f"{p}.norm1.bias"])
        q, kk, v = lin(h, f"{p}.attn.qkv").reshape(batch, -1, 3, heads, width // heads).unbind(2)
        a = torch.softmax(torch.einsum("bqhd,bkhd->bhqk", q, kk) / (width // heads) ** 0.5, -1)
        x = x + lin(torch.einsum("bhqk,bkhd->bqhd", a, v).reshape(batch, -1, width), f"{p}.attn.proj")
        h = F.layer_norm(x, (width,), sd[f"{p}.norm2.weight"], sd[f"{p}.norm2.bias"])
        x = x + lin(F.gelu(lin(h, f"{p}.mlp.fc1")), f"{p}.mlp.fc2")
    x = F.layer_norm(x, (width,), sd["norm.weight"], sd["norm.bias"])
    h = torch.cat([x[:, 0], x[:, 1:].amax(1)], -1)
    h = F.relu(bn(lin(h, "cls_head_finetune.0"), "cls_head_finetune.1"))
    h = F.relu(bn(lin(h, "cls_head_finetune.4"), "cls_head_finetune.5"))
    return lin(h, "cls_head_finetune.8")


def test_forward_matches_a_recomputation_from_the_state_dict() -> None:
    model = make_point_model(seed=2)
    pts = cloud(3, seed=9)
    with torch.no_grad():
        out = model(pts)
        ref = reference_forward(model.state_dict(), pts, TINY_POINT.model_kwargs)
    assert out.shape == (3, 5) and torch.isfinite(out).all()
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------ pathways and merge


def test_merge_is_bit_identical_and_vanilla() -> None:
    model = make_point_pathway_model(seed=1)
    assert len(pathway_layers(model)) == 2 * 4
    assert model.blocks.blocks[0].attn.qkv.bias is None  # the bias-free qkv carries a pathway too
    merged = merge_model(model, TINY_POINT)
    assert isinstance(merged.blocks.blocks[0].attn.qkv, torch.nn.Linear)
    assert list(merged.state_dict()) == list(build_vanilla(TINY_POINT).state_dict())
    pts = cloud(4, seed=11)
    with torch.no_grad():
        assert torch.equal(merged(pts), model(pts))


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2**16), scale=st.floats(0.01, 3.0))
def test_merge_is_bit_identical_for_any_lambda(seed: int, scale: float) -> None:
    model = make_point_pathway_model(seed=0)
    random_lambdas(model, seed, scale=scale)
    pts = cloud(2, seed=seed)
    with torch.no_grad():
        assert torch.equal(merge_model(model, TINY_POINT)(pts), model(pts))


# ------------------------------------------------------------------ ONNX


@pytest.fixture(scope="module")
def merged_export() -> tuple[onnx.ModelProto, torch.nn.Module, dict[str, Tensor]]:
    from m2pt_deploy.export.onnx import export_model

    merged = merge_model(make_point_pathway_model(seed=4), TINY_POINT, exportable=True)
    return export_model(merged, TINY_POINT), merged, merged_state_dict(merged)


def test_onnx_export_groups_raw_points_and_matches_torch(merged_export) -> None:
    from m2pt_deploy.runtime.sessions import ort_session

    proto, merged, _ = merged_export
    ops = Counter(n.op_type for n in proto.graph.node)
    g = TINY_POINT.model_kwargs["num_group"]
    assert ops["TopK"] == 1 and ops["ArgMax"] == g - 1 and ops["Min"] == g - 1  # FPS unrolled, KNN a TopK
    session = ort_session(proto)
    name = session.get_inputs()[0].name
    for batch in (1, 3):  # dynamic batch
        pts = cloud(batch, seed=20 + batch)
        with torch.no_grad():
            expected = merged(pts).numpy()
        got = session.run(None, {name: pts.numpy()})[0]
        assert got.shape == (batch, 5)
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


def test_merged_export_is_structurally_the_vanilla_export(merged_export) -> None:
    from m2pt_deploy.verify.structure import check_structure

    proto, _, merged_sd = merged_export
    result = check_structure(proto, TINY_POINT, like=merged_sd)
    assert result, str(result)
    assert not result.differences


# ------------------------------------------------------------------ reference checkpoint files


def test_point_mae_builder_checkpoint_loads_with_its_pathways(tmp_path: Path) -> None:
    ref = point_mae_builder(tmp_path)
    ckpt = load_checkpoint(ref.path, options=OPTIONS)
    assert ckpt.kind == "reference" and ckpt.spec == TINY_POINT
    assert ckpt.pathway is not None
    assert ckpt.pathway.block_path == BLOCK_PATH
    assert ckpt.pathway.layers == ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")
    assert ckpt.pathway.lambda_kind == "scalar" and len(ckpt.pathway.aux) == 1
    # "module." is stripped; Point-MAE's own "encoder." submodule stays.
    assert "encoder.first_conv.0.weight" in ckpt.state_dict and "first_conv.0.weight" not in ckpt.state_dict
    assert f"{BLOCK_PATH}.1.attn.qkv.aux_weight.0" in ckpt.state_dict
    unmerged = build_unmerged(ckpt)
    pts = cloud(2, seed=5)
    with torch.no_grad():
        assert torch.equal(unmerged(pts), ref.model(pts))
        assert torch.equal(merge_model(unmerged, ckpt.spec)(pts), ref.model(pts))


def test_point_mae_builder_checkpoint_without_options_gets_noted_defaults(tmp_path: Path) -> None:
    ckpt = load_checkpoint(point_mae_builder(tmp_path).path)
    assert ckpt.spec.family == "pointmae" and ckpt.spec.input_size == (1024, 3)
    assert any("assumed Point-MAE's grouping" in n for n in ckpt.notes)
    assert "6 heads: as in every Point-MAE config, not in the weights; pass --num-heads if not" in ckpt.notes


# ------------------------------------------------------------------ no silent guess: heads


def test_a_head_count_the_args_state_is_not_noted_and_the_flag_may_not_contradict_it() -> None:
    sd = make_point_model().state_dict()
    grouping = {k: v for k, v in OPTIONS.items() if k != "num_heads"}
    notes: list[str] = []
    spec = FAMILY.infer_spec(sd, args={"num_heads": 3}, options=grouping, notes=notes)
    assert spec == TINY_POINT and notes == [CONVENTIONS]
    with pytest.raises(M2ptError) as e:
        FAMILY.infer_spec(sd, args={"num_heads": 3}, options={**grouping, "num_heads": 6})
    assert str(e.value) == "--num-heads 6 contradicts the training args' num_heads (3 heads)"


def test_a_config_states_the_head_count_and_the_flag_may_not_contradict_it() -> None:
    sd = make_point_model().state_dict()
    assert FAMILY.override(TINY_POINT, sd, options={"num_heads": 3}) == TINY_POINT
    with pytest.raises(M2ptError) as e:
        FAMILY.override(TINY_POINT, sd, options={"num_heads": 6})
    assert str(e.value) == "--num-heads 6 contradicts the checkpoint's config (3 heads)"


def test_a_width_six_heads_do_not_divide_needs_the_flag() -> None:
    spec = dataclasses.replace(TINY_POINT, model_kwargs={**TINY_POINT.model_kwargs, "embed_dim": 40, "num_heads": 4})
    sd = make_point_model(spec).state_dict()
    grouping = {k: v for k, v in OPTIONS.items() if k != "num_heads"}
    with pytest.raises(M2ptError) as e:
        FAMILY.infer_spec(sd, options=grouping)
    assert str(e.value) == ("the head count of a 40-wide Point-MAE is not in the weights and no convention gives one: "
                            "pass --num-heads")
    assert FAMILY.infer_spec(sd, options={**grouping, "num_heads": 4}) == spec
