"""Check (c): the merged graph is a vanilla ViT's graph; anything else is reported, both values."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from m2pt_deploy.export.onnx import export_model
from m2pt_deploy.model.build import build_unmerged, build_vanilla
from m2pt_deploy.verify import check_structure, graph_signature, structure_differences
from m2pt_deploy.verify.structure import export_settings, value_pattern
from tests.tiny import TINY
from tests.verify import tamper


def _copy(proto: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    return out


def test_signature_of_a_graph_equals_itself(good_proto):
    assert structure_differences(graph_signature(good_proto), graph_signature(good_proto)) == []


def test_each_kind_of_difference_is_reported_with_both_values(good_proto):
    ref = graph_signature(good_proto)
    changed = _copy(good_proto)
    changed.opset_import[0].version = 17
    changed.graph.input[0].type.tensor_type.elem_type = onnx.TensorProto.FLOAT16
    diffs = structure_differences(graph_signature(tamper.add_unused_initializer(changed)), ref)
    assert "opset ai.onnx: 17 vs 18" in diffs
    assert "initializer extra_weight: float[3] vs absent" in diffs
    inputs = [d for d in diffs if d.startswith("inputs:")]
    assert len(inputs) == 1 and "'float16'" in inputs[0] and "'float'" in inputs[0]


def test_shared_scalar_scales_are_not_a_structural_difference(good_proto):
    """ONNX Runtime keeps one of two equal scalar initializers (ConstantSharing): in an int8 graph
    that depends on which calibrated scales coincide, so a graph where two scalar scales were merged
    is the same graph; a changed non-scalar initializer is still a difference."""
    from onnx import helper, numpy_helper

    def with_scales(shared: bool) -> onnx.ModelProto:
        out = _copy(good_proto)
        inp = out.graph.input[0].name
        names = ["scale_a", "scale_a" if shared else "scale_b"]
        for name in dict.fromkeys(names):
            out.graph.initializer.append(numpy_helper.from_array(np.float32(0.5), name))
        out.graph.initializer.append(numpy_helper.from_array(np.int8(0), "zero"))
        first = out.graph.node[0]
        q = helper.make_node("QuantizeLinear", [inp, names[0], "zero"], ["q"], name="q")
        dq = helper.make_node("DequantizeLinear", ["q", names[1], "zero"], ["dq"], name="dq")
        out.graph.node.insert(0, dq)
        out.graph.node.insert(0, q)
        first.input[0] = "dq"
        return out

    assert structure_differences(graph_signature(with_scales(True)), graph_signature(with_scales(False))) == []
    widened = with_scales(False)
    weight = next(t for t in widened.graph.initializer if len(t.dims) == 2)
    weight.dims[0] += 1
    assert any(d.startswith(f"initializer {weight.name}:")
               for d in structure_differences(graph_signature(widened), graph_signature(with_scales(True))))


def test_export_settings_are_read_off_the_graph(good_proto):
    settings = export_settings(good_proto)
    assert settings.opset == 18 and settings.batch.dynamic and settings.precision == "fp32"


def test_untrained_weights_share_initializers_and_the_reference_follows(tmp_path):
    # timm's init gives every LayerNorm weight 1 and bias 0: the exporter stores them once.
    model = build_vanilla(TINY, exportable=True)
    proto = export_model(model, TINY)
    assert len(proto.graph.initializer) < len(model.state_dict())
    assert check_structure(proto, TINY, like=model.state_dict())
    pattern = dict(value_pattern(model.state_dict()))
    assert pattern["blocks.0.norm1.weight"] == "const:1.0"
    assert pattern["blocks.0.attn.qkv.weight"] == "random"


def test_trained_like_weights_match_a_fully_random_reference():
    model = build_vanilla(TINY, exportable=True)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.02)
    proto = export_model(model, TINY)
    result = check_structure(proto, TINY)
    assert result, result.differences
    assert result.summary.startswith(f"{len(proto.graph.node)} nodes")


def test_repeated_tensors_are_mirrored():
    sd = {
        "a": torch.tensor([1.0, 2.0]),
        "b": torch.tensor([1.0, 2.0]),
        "c": torch.zeros(2),
        "n": torch.tensor([3]),
    }
    assert value_pattern(sd) == (("a", "random"), ("b", "same:a"), ("c", "const:0.0"))


def test_unmerged_pathway_graph_is_not_vanilla(pathway_ckpt):
    """Exporting without merging leaves the pathway in the graph: (c) must say so."""
    unmerged = build_unmerged(pathway_ckpt)
    proto = export_model(unmerged, pathway_ckpt.spec)
    result = check_structure(proto, pathway_ckpt.spec)
    assert not result
    assert any(d.startswith("node count:") for d in result.differences)
    assert "FAILED | structure" in str(result)


def test_structure_check_refuses_unknown_precision(good_proto):
    from m2pt_deploy.errors import M2ptError

    proto = _copy(good_proto)
    for prop in proto.metadata_props:
        if prop.key == "m2pt_deploy.precision":
            prop.value = '"fp8"'  # int8 is checked since m2pt-verify takes the tool's int8 exports
    with pytest.raises(M2ptError, match="fp32, fp16 or int8, not fp8"):
        check_structure(proto, TINY)
