"""m2pt-verify: exit 0 pass, 1 a check failed, 2 bad input (one line, no traceback)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from m2pt_deploy.cli.common import run_main
from m2pt_deploy.cli.verify import main
from tests.tiny import TINY, save_proto
from tests.verify import tamper


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = run_main(main, [str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(err: str, *fragments: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_good_export_exits_0_and_prints_the_table(pathway_ckpt_path, good_onnx, capsys):
    code, out, err = run([pathway_ckpt_path, "--onnx", good_onnx], capsys)
    assert code == 0, out + err
    assert out.strip().splitlines()[-1] == "PASSED: 3/3 checks passed"


def test_failed_check_exits_1_and_writes_the_report(
    pathway_ckpt_path, good_proto, tmp_path, capsys
):
    bad = save_proto(
        tamper.perturb_initializer(good_proto, "head.weight", 1.0), tmp_path / "bad.onnx"
    )
    report = tmp_path / "report.json"
    code, out, _ = run([pathway_ckpt_path, "--onnx", bad, "--report", report], capsys)
    assert code == 1
    assert "FAILED: 2/3 checks passed" in out
    data = json.loads(report.read_text())
    assert data["passed"] is False
    assert [c["check"] for c in data["checks"]] == ["merge", "runtime", "structure"]
    assert [c["passed"] for c in data["checks"]] == [True, False, True]
    assert data["checks"][1]["stats"]["max_abs"] > 1e-4


def test_report_json_matches_the_run(pathway_ckpt_path, good_onnx, tmp_path, capsys):
    report = tmp_path / "report.json"
    code, _, _ = run(
        [
            pathway_ckpt_path,
            "--onnx",
            good_onnx,
            "--report",
            report,
            "--seed",
            "3",
            "--batch-size",
            "2",
        ],
        capsys,
    )
    assert code == 0
    data = json.loads(report.read_text())
    assert data["passed"] is True and data["precision"] == "fp32"
    assert data["inputs"]["rows"] == 2 and data["inputs"]["seed"] == 3
    assert data["checks"][1]["stats"]["top1_total"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_existing_report_needs_force_and_is_checked_before_work(
    pathway_ckpt_path, good_onnx, tmp_path, capsys
):
    report = tmp_path / "report.json"
    report.write_text("keep")
    code, out, err = run([pathway_ckpt_path, "--onnx", good_onnx, "--report", report], capsys)
    assert code == 2 and out == ""
    assert_one_line_error(err, str(report), "--force")
    assert report.read_text() == "keep"
    code, _, _ = run(
        [pathway_ckpt_path, "--onnx", good_onnx, "--report", report, "--force"], capsys
    )
    assert code == 0 and json.loads(report.read_text())["passed"] is True


def test_missing_onnx(pathway_ckpt_path, tmp_path, capsys):
    missing = tmp_path / "nope.onnx"
    code, _, err = run(
        [pathway_ckpt_path, "--onnx", missing, "--report", tmp_path / "r.json"], capsys
    )
    assert code == 2
    assert_one_line_error(err, f"error: {missing}: no such file")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kind", ["garbage", "truncated", "empty"])
def test_corrupt_onnx(pathway_ckpt_path, good_onnx, tmp_path, capsys, kind):
    path = tmp_path / "broken.onnx"
    data = {
        "garbage": b"\x08\xff\xff\xff" * 64,
        "truncated": good_onnx.read_bytes()[:4000],
        "empty": b"",
    }[kind]
    path.write_bytes(data)
    report = tmp_path / "r.json"
    code, _, err = run([pathway_ckpt_path, "--onnx", path, "--report", report], capsys)
    assert code == 2
    assert_one_line_error(err, str(path), "ONNX")
    assert not report.exists()


def test_missing_checkpoint(good_onnx, tmp_path, capsys):
    missing = tmp_path / "nope.safetensors"
    code, _, err = run([missing, "--onnx", good_onnx], capsys)
    assert code == 2
    assert_one_line_error(err, f"error: {missing}: no such file")


def test_inputs_from_npy(pathway_ckpt_path, good_onnx, tmp_path, capsys):
    x = np.random.default_rng(0).standard_normal((3, *TINY.input_size)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    report = tmp_path / "r.json"
    code, _, _ = run(
        [
            pathway_ckpt_path,
            "--onnx",
            good_onnx,
            "--inputs",
            tmp_path / "x.npy",
            "--report",
            report,
        ],
        capsys,
    )
    assert code == 0
    assert json.loads(report.read_text())["inputs"]["rows"] == 3


def test_inputs_of_the_wrong_shape(pathway_ckpt_path, good_onnx, tmp_path, capsys):
    path = tmp_path / "x.npy"
    np.save(path, np.zeros((2, 3, 16, 16), np.float32))
    code, _, err = run([pathway_ckpt_path, "--onnx", good_onnx, "--inputs", path], capsys)
    assert code == 2
    assert_one_line_error(err, str(path), "inputs have shape [2, 3, 16, 16]", "[N, 3, 32, 32]")


def test_pickled_inputs_are_refused_not_loaded(pathway_ckpt_path, good_onnx, tmp_path, capsys):
    path = tmp_path / "x.npy"
    np.save(path, np.array([{"not": "data"}], dtype=object), allow_pickle=True)
    code, _, err = run([pathway_ckpt_path, "--onnx", good_onnx, "--inputs", path], capsys)
    assert code == 2
    assert_one_line_error(err, str(path), "not a plain numeric .npy array")


def test_inputs_not_a_multiple_of_a_fixed_batch(pathway_ckpt_path, static_onnx, tmp_path, capsys):
    path = tmp_path / "x.npy"
    np.save(path, np.zeros((3, *TINY.input_size), np.float32))
    code, _, err = run([pathway_ckpt_path, "--onnx", static_onnx, "--inputs", path], capsys)
    assert code == 2
    assert_one_line_error(err, str(static_onnx), "fixed batch of 2")


def test_batch_size_must_be_positive(pathway_ckpt_path, good_onnx, capsys):
    with pytest.raises(SystemExit) as info:
        main([str(pathway_ckpt_path), "--onnx", str(good_onnx), "--batch-size", "0"])
    assert info.value.code == 2
    assert "must be at least 1, got 0" in capsys.readouterr().err
