"""verify_onnx on tiny exports: each check passes on a good file and fails on a tampered one."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

import m2pt_deploy.verify.harness as harness
from m2pt_deploy.errors import M2ptError
from m2pt_deploy.merge import merge_model
from m2pt_deploy.model.checkpoint import load_checkpoint, save_checkpoint
from m2pt_deploy.verify import (
    CheckResult,
    StructureResult,
    assert_equivalent,
    onnxrt_runner,
    verify_onnx,
)
from tests.tiny import TINY, export, save_proto
from tests.verify import tamper


def _by_check(report) -> dict[str, list]:
    out: dict[str, list] = {}
    for r in report.results:
        out.setdefault(r.check if isinstance(r, CheckResult) else "structure", []).append(r)
    return out


def test_good_export_passes_all_three_checks(pathway_ckpt, good_onnx):
    report = verify_onnx(pathway_ckpt, good_onnx)
    checks = _by_check(report)
    assert report, str(report)
    assert sorted(checks) == ["merge", "runtime", "structure"]
    (merge,) = checks["merge"]
    assert merge.stats.bitwise_equal and merge.stats.max_abs == 0.0
    (runtime,) = checks["runtime"]
    assert runtime.candidate == "onnxrt" and runtime.reference == "torch-merged"
    # The done-when: fp32 max abs error <= 1e-4 and identical top-1.
    assert runtime.stats.max_abs <= 1e-4
    assert runtime.stats.top1_agree == runtime.stats.top1_total == 4
    assert isinstance(checks["structure"][0], StructureResult)
    assert str(report).splitlines()[-1] == "PASSED: 3/3 checks passed"


def test_accepts_a_path_and_given_inputs(pathway_ckpt_path, good_onnx):
    x = np.random.default_rng(5).standard_normal((3, *TINY.input_size)).astype(np.float32)
    report = verify_onnx(pathway_ckpt_path, good_onnx, inputs=x)
    assert report
    assert report.inputs["rows"] == 3
    assert all(r.stats.top1_total == 3 for r in report.results if isinstance(r, CheckResult))


def test_seed_decides_the_inputs(pathway_ckpt, good_onnx):
    a = verify_onnx(pathway_ckpt, good_onnx, seed=1).results[1].stats
    b = verify_onnx(pathway_ckpt, good_onnx, seed=1).results[1].stats
    c = verify_onnx(pathway_ckpt, good_onnx, seed=2).results[1].stats
    assert a == b
    assert a != c


def test_perturbed_initializer_fails_runtime_check_only(pathway_ckpt, good_proto, tmp_path):
    bad = save_proto(
        tamper.perturb_initializer(good_proto, "head.weight", 1.0), tmp_path / "bad.onnx"
    )
    report = verify_onnx(pathway_ckpt, bad)
    checks = _by_check(report)
    assert not report
    assert checks["merge"][0] and checks["structure"][0]
    (runtime,) = checks["runtime"]
    assert not runtime
    assert runtime.stats.max_abs > 1e-4
    assert re.search(r"^  FAILED \| runtime +\| onnxrt vs torch-merged", str(report), re.M)


def test_extra_node_fails_structure_check_only(pathway_ckpt, good_proto, tmp_path):
    bad = save_proto(tamper.append_identity(good_proto), tmp_path / "extra-node.onnx")
    report = verify_onnx(pathway_ckpt, bad)
    checks = _by_check(report)
    assert checks["merge"][0] and checks["runtime"][0]
    (structure,) = checks["structure"]
    assert not structure and not report
    n = len(good_proto.graph.node)
    assert f"node count: {n + 1} vs {n}" in structure.differences
    assert "op Identity: 1 vs absent" in structure.differences


def test_changed_initializer_shape_fails_structure_check(pathway_ckpt, good_proto, tmp_path):
    bad = save_proto(
        tamper.reshape_initializer(good_proto, "head.weight", (10, 64)), tmp_path / "same.onnx"
    )
    assert verify_onnx(pathway_ckpt, bad)  # the same shape: a control for the edit itself
    shape = tuple(next(t.dims for t in good_proto.graph.initializer if t.name == "pos_embed"))
    bad = save_proto(
        tamper.reshape_initializer(good_proto, "pos_embed", shape[1:]), tmp_path / "reshaped.onnx"
    )
    report = verify_onnx(pathway_ckpt, bad)
    structure = _by_check(report)["structure"][0]
    assert _by_check(report)["runtime"][0], "pos_embed still broadcasts"
    assert not structure and not report
    assert structure.differences == (
        f"initializer pos_embed: float{list(shape[1:])} vs float{list(shape)}",
    )


def test_wrong_merge_fails_merge_check(pathway_ckpt, good_onnx, monkeypatch):
    # One ULP on one element can vanish in rounding; one ULP on a whole layer cannot.
    def off_by_one_ulp(model, spec, **kwargs):
        merged = merge_model(model, spec, **kwargs)
        w = merged.blocks[0].mlp.fc1.weight
        with torch.no_grad():
            w.copy_(torch.nextafter(w, w + 1))
        return merged

    monkeypatch.setattr(harness, "merge_model", off_by_one_ulp)
    report = verify_onnx(pathway_ckpt, good_onnx)
    merge = _by_check(report)["merge"][0]
    assert not merge and not report
    assert "not bit-identical" in str(merge)
    assert merge.stats.max_abs < 1e-4, "far inside the runtime tolerance, yet a failure"


def test_merge_that_ignores_lambda_fails(pathway_ckpt, good_onnx, monkeypatch):
    from m2pt_deploy.model.build import build_vanilla, load_strict
    from m2pt_deploy.model.pathway import pathway_state_dict

    def vanilla_weights_only(model, spec, **kwargs):
        sd = {
            k: v
            for k, v in pathway_state_dict(model).items()
            if ".aux_weight." not in k and ".cross_modal_scale." not in k
        }
        out = build_vanilla(spec, **kwargs)
        load_strict(out, sd, what="test")
        return out

    monkeypatch.setattr(harness, "merge_model", vanilla_weights_only)
    report = verify_onnx(pathway_ckpt, good_onnx)
    checks = _by_check(report)
    assert not checks["merge"][0]
    assert not checks["runtime"][0], "ONNX carries the real merge, so it differs from the wrong one"


def test_static_batch_export_is_fed_in_its_batch(pathway_ckpt, static_onnx):
    x = np.random.default_rng(0).standard_normal((4, *TINY.input_size)).astype(np.float32)
    report = verify_onnx(pathway_ckpt, static_onnx, inputs=x)
    assert report, str(report)
    assert report.inputs["per_inference"] == 2
    assert "fixed 2 batch" in report.results[-1].reference
    with pytest.raises(M2ptError, match="fixed batch of 2; give a multiple of 2 inputs, not 3"):
        verify_onnx(pathway_ckpt, static_onnx, inputs=x[:3])


@pytest.mark.filterwarnings("ignore:the float32 number:UserWarning")
def test_fp16_export_is_judged_by_fp16_tolerance(pathway_ckpt, fp16_onnx):
    report = verify_onnx(pathway_ckpt, fp16_onnx, batch_size=8)
    runtime = _by_check(report)["runtime"][0]
    assert report.precision == "fp16"
    assert runtime.tolerance.label == "fp16"
    assert runtime.stats.cosine >= 0.999 and runtime.stats.max_abs > 0
    assert report, str(report)


def test_probe_head_checkpoint_uses_folded_head_tolerance(pathway_ckpt, tmp_path):
    sd = {k: v for k, v in pathway_ckpt.state_dict.items() if not k.startswith("head.")}
    g = torch.Generator().manual_seed(0)
    sd.update(
        {
            "head.0.running_mean": torch.randn(64, generator=g) * 0.1,
            "head.0.running_var": torch.rand(64, generator=g) + 0.5,
            "head.0.num_batches_tracked": torch.tensor(10),
            "head.1.weight": torch.randn(10, 64, generator=g) * 0.05,
            "head.1.bias": torch.randn(10, generator=g) * 0.05,
        }
    )
    path = save_checkpoint(
        tmp_path / "probe.safetensors", sd, pathway_ckpt.spec, pathway=pathway_ckpt.pathway
    )
    ckpt = load_checkpoint(path)
    assert ckpt.has_probe_head
    onnx_path = export(ckpt, tmp_path / "probe.onnx")
    report = verify_onnx(ckpt, onnx_path)
    merge = _by_check(report)["merge"][0]
    assert report, str(report)
    assert merge.tolerance.label == "probe-head fold" and merge.tolerance.max_abs == 1e-5
    assert "probe-head BatchNorm folded" in str(merge)


def test_extra_runners_are_judged_like_onnx_runtime(pathway_ckpt, good_onnx):
    # Stands in for TensorRT's TrtRunner: any Polygraphy runner joins the comparison.
    second = onnxrt_runner(good_onnx, name="onnxrt-again")
    report = verify_onnx(pathway_ckpt, good_onnx, extra_runners=[second])
    runtime = _by_check(report)["runtime"]
    assert [r.candidate for r in runtime] == ["onnxrt", "onnxrt-again"]
    assert report


def test_mismatched_provenance_is_noted(pathway_ckpt, good_proto, tmp_path):
    proto = onnx.ModelProto()
    proto.CopyFrom(good_proto)
    for prop in proto.metadata_props:
        if prop.key == "m2pt_deploy.source_sha256":
            prop.value = '"' + "0" * 64 + '"'
    report = verify_onnx(pathway_ckpt, save_proto(proto, tmp_path / "other.onnx"))
    assert report.notes and "000000000000" in report.notes[0]
    assert "note: the ONNX metadata names source sha256" in str(report)


def test_assert_equivalent_raises_with_the_table(
    pathway_ckpt_path, good_onnx, good_proto, tmp_path
):
    assert assert_equivalent(pathway_ckpt_path, good_onnx)
    bad = save_proto(
        tamper.perturb_initializer(good_proto, "head.weight", 1.0), tmp_path / "bad.onnx"
    )
    with pytest.raises(AssertionError) as info:
        assert_equivalent(pathway_ckpt_path, bad)
    assert re.search(r"FAILED \| runtime +\|", str(info.value))
    assert "FAILED: 2/3 checks passed" in str(info.value)


@pytest.mark.parametrize("content", [b"", b"\x00garbage\xff" * 10, None])
def test_unreadable_onnx_is_a_user_error_naming_the_file(
    pathway_ckpt, good_onnx, tmp_path, content
):
    path = tmp_path / "broken.onnx"
    path.write_bytes(good_onnx.read_bytes()[:500] if content is None else content)
    with pytest.raises(M2ptError) as info:
        verify_onnx(pathway_ckpt, path)
    assert info.value.path == str(path)
    assert "ONNX" in info.value.message


def test_onnx_for_another_model_is_a_user_error(pathway_ckpt, tmp_path):
    from m2pt_deploy.export.onnx import export_model, save_onnx
    from m2pt_deploy.families import ModelSpec
    from m2pt_deploy.model.build import build_vanilla

    spec = ModelSpec(TINY.arch, {**TINY.model_kwargs, "img_size": 16}, (3, 16, 16))
    path = save_onnx(
        export_model(build_vanilla(spec, exportable=True), spec), tmp_path / "other.onnx"
    )
    with pytest.raises(
        M2ptError, match=r"input pixel_values is \['N', 3, 16, 16\].*\[N, 3, 32, 32\]"
    ):
        verify_onnx(pathway_ckpt, path)


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        (np.zeros((2, 3, 16, 16), np.float32), r"inputs have shape \[2, 3, 16, 16\]"),
        (np.zeros((2, 3, 32, 32), np.int64), "inputs are int64"),
        (np.full((1, 3, 32, 32), np.nan, np.float32), "NaN or Inf"),
        (np.zeros((0, 3, 32, 32), np.float32), "0 rows"),
    ],
)
def test_bad_inputs_are_user_errors(pathway_ckpt, good_onnx, inputs, message):
    with pytest.raises(M2ptError, match=message):
        verify_onnx(pathway_ckpt, good_onnx, inputs=inputs)


def test_missing_onnx_file(pathway_ckpt, tmp_path):
    with pytest.raises(M2ptError, match="no such file"):
        verify_onnx(pathway_ckpt, tmp_path / "absent.onnx")
    assert not Path(tmp_path / "absent.onnx").exists()


def test_the_tools_own_int8_export_is_verified(trained_digits, tmp_path: Path) -> None:
    """m2pt-verify used to refuse int8 files ("the structure check exports ... fp32 or fp16")."""
    from m2pt_deploy.export.int8.cpu import cpu_int8_onnx
    from m2pt_deploy.export.onnx import OnnxFromCheckpoint
    from m2pt_deploy.export.optimize import save_optimized
    from m2pt_deploy.inputs.calibration import int8_data
    from m2pt_deploy.model.checkpoint import load_checkpoint
    from m2pt_deploy.verify import verify_onnx

    ckpt = load_checkpoint(trained_digits[0])
    data = int8_data(ckpt.spec, calib_data=trained_digits[1], calib_images=64, verify_images=64)
    path = save_optimized(cpu_int8_onnx(OnnxFromCheckpoint(ckpt)(), data.calibration), tmp_path / "int8.onnx")
    report = verify_onnx(ckpt, path, inputs=data.held_out)
    merge, runtime, structure = report.results
    assert report.precision == "int8" and merge and structure, str(report)
    assert runtime.check == "int8 onnx (cpu)" and runtime.stats is not None and runtime.stats.top1_total == 64
    assert "int8, ONNX Runtime-optimized" in structure.reference
    with pytest.raises(M2ptError, match="a 1-channel ViT is verified on its own held-out inputs"):
        verify_onnx(ckpt, path)
