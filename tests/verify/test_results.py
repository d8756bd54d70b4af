from __future__ import annotations

import json
import re

import numpy as np
import pytest

from m2pt_deploy.errors import M2ptError
from m2pt_deploy.verify import (
    BITWISE,
    PROBE_HEAD,
    TOLERANCES,
    StructureResult,
    VerificationReport,
    error_stats,
    judge,
    tolerance_for,
)

LOGITS = np.random.default_rng(0).standard_normal((8, 10)).astype(np.float32)


def _shifted(delta: float) -> np.ndarray:
    out = LOGITS.copy()
    out[0, 0] += delta
    return out


@pytest.mark.parametrize(("delta", "passes"), [(5e-5, True), (2e-4, False)])
def test_fp32_bound_is_max_abs_1e_4(delta, passes):
    problems = TOLERANCES["fp32"].failures(error_stats(LOGITS, _shifted(delta)))
    assert (not problems) is passes, problems


def test_fp32_requires_identical_top1_even_within_abs_bound():
    ref = np.array([[1.0, 1.00002]], np.float32)
    cand = np.array([[1.00002, 1.0]], np.float32)
    problems = TOLERANCES["fp32"].failures(error_stats(ref, cand))
    assert problems == ["top-1 0/1 < 100%"]


def test_fp16_checks_cosine_and_top1_rate():
    tol = TOLERANCES["fp16"]
    assert not tol.failures(error_stats(LOGITS, LOGITS * 1.001))
    noisy = LOGITS + np.random.default_rng(1).standard_normal(LOGITS.shape).astype(np.float32)
    assert any("cosine" in p for p in tol.failures(error_stats(LOGITS, noisy)))


def test_int8_is_judged_by_top1_agreement_only():
    tol = TOLERANCES["int8"]
    assert tol.min_top1 == 0.98 and tol.max_abs is None and tol.min_cosine is None
    flipped = LOGITS.copy()
    flipped[0] = -flipped[0]
    assert tol.failures(error_stats(LOGITS, flipped)) == ["top-1 7/8 < 98%"]


def test_bitwise_fails_on_any_difference_and_probe_head_allows_1e_5():
    tiny = _shifted(3e-6)
    assert BITWISE.failures(error_stats(LOGITS, tiny))
    assert not PROBE_HEAD.failures(error_stats(LOGITS, tiny))
    assert PROBE_HEAD.failures(error_stats(LOGITS, _shifted(2e-5)))


def test_nan_fails_every_tolerance():
    bad = _shifted(np.nan)
    for tol in (*TOLERANCES.values(), BITWISE, PROBE_HEAD):
        assert tol.failures(error_stats(LOGITS, bad)), tol.label


def test_unknown_precision_is_a_user_error():
    with pytest.raises(M2ptError, match="no tolerance for precision 'bf16'"):
        tolerance_for("bf16")


def test_check_result_is_truthy_and_prints_one_line():
    ok = judge(
        "runtime",
        ("torch", LOGITS),
        ("onnxrt", _shifted(2.1e-6)),
        output="logits",
        tolerance=TOLERANCES["fp32"],
    )
    assert ok and ok.passed
    line = str(ok)
    assert "\n" not in line
    assert re.fullmatch(
        r"PASSED \| runtime \| onnxrt vs torch \| logits \| max abs 2\.\de-06 "
        r"\(tol 1e-04\) \| top-1 8/8",
        line,
    ), line


def test_failed_check_names_the_problem_with_both_values():
    bad = judge(
        "runtime",
        ("torch", LOGITS),
        ("onnxrt", _shifted(0.5)),
        output="logits",
        tolerance=TOLERANCES["fp32"],
    )
    assert not bad
    assert str(bad).startswith("FAILED | runtime")
    assert "max abs 5.0e-01 > 1e-04" in str(bad)


def test_shape_mismatch_is_a_failed_check_not_an_exception():
    bad = judge(
        "runtime",
        ("torch", LOGITS),
        ("onnxrt", LOGITS[:, :9]),
        output="logits",
        tolerance=TOLERANCES["fp32"],
    )
    assert not bad and bad.stats is None
    assert "shape (8, 9) vs (8, 10)" in str(bad)


def _report(*results) -> VerificationReport:
    return VerificationReport(
        "m.onnx", "m.safetensors", "fp32", {"description": "8 given"}, results
    )


def test_report_is_truthy_only_when_every_check_passes(tmp_path):
    ok = judge("merge", ("a", LOGITS), ("b", LOGITS), output="logits", tolerance=BITWISE)
    structure_ok = StructureResult("vanilla vit", "75 nodes", ())
    structure_bad = StructureResult("vanilla vit", "76 nodes", ("node count: 76 vs 75",))
    assert _report(ok, structure_ok)
    bad = _report(ok, structure_bad)
    assert not bad and bad.failures == [structure_bad]
    table = str(bad)
    assert "FAILED: 1/2 checks passed" in table.splitlines()[-1]
    assert "node count: 76 vs 75" in table
    assert not _report()


def test_report_json_is_strict_and_complete(tmp_path):
    nan = judge(
        "runtime",
        ("a", LOGITS),
        ("b", _shifted(np.nan)),
        output="logits",
        tolerance=TOLERANCES["fp32"],
    )
    path = _report(nan).write_json(tmp_path / "r.json")
    data = json.loads(path.read_text())
    assert data["passed"] is False
    assert data["checks"][0]["stats"]["max_abs"] is None
    assert data["checks"][0]["problems"][0] == "non-finite values"


def test_report_json_refuses_to_overwrite_without_force(tmp_path):
    path = tmp_path / "r.json"
    path.write_text("old")
    report = _report(StructureResult("v", "s", ()))
    with pytest.raises(M2ptError, match="output exists"):
        report.write_json(path)
    assert path.read_text() == "old"
    report.write_json(path, force=True)
    assert json.loads(path.read_text())["passed"] is True
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]
