"""m2pt-bench on the user's own model: a checkpoint (with labelled data) and an ONNX file
(without), the rows and accuracy they report, and every bad input refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from m2pt_deploy.bench.accuracy import score_formats
from m2pt_deploy.cli.bench import main
from m2pt_deploy.cli.common import run_main
from tests.tiny import TINY, export, make_pathway_checkpoint

FAST = ["--batches", "2", "--rounds", "2", "--warmup", "0", "--calib-images", "8", "--no-compile",
        "--no-export-cost"]
EAGER, ORT, ORT_OPT, ORT_INT8 = "torch eager", "ONNX Runtime", "ONNX Runtime optimized", "ONNX Runtime int8"


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bench-models")
    ckpt = make_pathway_checkpoint(root / "pathway.safetensors")
    rng = np.random.default_rng(0)
    np.savez(root / "labelled.npz", x=rng.random((24, 3, 32, 32), dtype=np.float32), y=rng.integers(0, 10, 24))
    (root / "notes.txt").write_text("not a model\n")
    return {"ckpt": ckpt, "onnx": export(ckpt, root / "model.onnx"), "npz": root / "labelled.npz",
            "text": root / "notes.txt", "root": root}


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[dict, str]:
    out = Path(argv[argv.index("--out") + 1])
    assert run_main(main, argv) == 0, capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["bench.json", "bench.md", "bench.png"]
    return json.loads((out / "bench.json").read_text()), (out / "bench.md").read_text()


def test_checkpoint_with_labelled_data(files: dict[str, Path], tmp_path: Path, capsys) -> None:
    data, md = _run([str(files["ckpt"]), "--data", str(files["npz"]), "--eval-images", "16", *FAST,
                     "--out", str(tmp_path / "out")], capsys)
    rows = {(r["runtime"], r["model"]) for r in data["rows"] if r["error"] is None}
    assert rows == {(EAGER, "vanilla"), (EAGER, "merged"), (EAGER, "unmerged")} | {
        (rt, m) for rt in (ORT, ORT_OPT, ORT_INT8) for m in ("vanilla", "merged")}
    assert data["subject"]["kind"] == "checkpoint" and data["subject"]["sha256"]
    assert data["spec"]["arch"] == TINY.arch and data["settings"]["baseline_runtime"] == EAGER
    f = data["formats"]
    assert f["kind"] == "top1" and f["images"] == 16 and f["reference"] == "torch eager / unmerged"
    scores = {row["format"]: row for row in f["formats"]}
    assert list(scores) == [f"{EAGER} / unmerged", f"{EAGER} / merged", f"{ORT} / merged", f"{ORT_OPT} / merged",
                            f"{ORT_INT8} / merged"]
    assert scores[f"{EAGER} / merged"]["max_abs_logit_diff"] == 0.0  # the merge is bit-identical
    assert all(0 <= row["top1"] <= 1 and 0 <= row["agreement"] <= 1 for row in f["formats"])
    assert f"Accuracy per format on 16 of 24 labelled images in {files['npz']}" in md
    goals = [g["goal"] for g in data["goals"]]
    assert "int8 top-1 agreement with fp32 ≥ 99% (labelled data)" in goals
    assert not any(w in g for g in goals for w in ("≥ 1.25× torch eager", "matmul peak", "≥ 3×", "m2pt-export"))
    assert "merged / vanilla latency 1.00 ± 0.03, torch eager, batch 2" in goals
    assert "Not shown: the ViT-B/16 goals" in md


def test_onnx_file_without_data_reports_agreement(files: dict[str, Path], tmp_path: Path, capsys) -> None:
    data, md = _run([str(files["onnx"]), *FAST, "--out", str(tmp_path / "out")], capsys)
    assert {(r["runtime"], r["model"]) for r in data["rows"]} == {(ORT, "file"), (ORT_OPT, "file"), (ORT_INT8, "file")}
    assert data["subject"]["kind"] == "onnx" and data["subject"]["precision"] == "fp32"
    assert data["settings"]["baseline_runtime"] == ORT and data["comparisons"] == []
    assert data["export"]["commands"] == {}
    f = data["formats"]
    assert f["kind"] == "agreement" and f["reference"] == f"{ORT} / file"
    assert all(row["top1"] is None for row in f["formats"])
    assert "No labelled data (--data), so no accuracy: top-1 agreement of each format with ONNX Runtime / file" in md
    assert "| × ONNX Runtime (p25–p75) |" in md


def test_score_formats_counts_top1_and_agreement() -> None:
    logits = np.eye(3, dtype=np.float32)[[0, 1, 2, 0]]  # predicts 0 1 2 0
    chunks = iter([(np.zeros((4, 1)), np.array([0, 1, 1, 0]))])
    result = score_formats({"ref": lambda x: logits, "off": lambda x: logits[:, [1, 0, 2]]}, "ref", chunks,
                           source="4 images")
    ref, off = result["formats"]
    assert (ref["top1"], ref["agreement"]) == (0.75, 1.0)
    assert (off["top1"], off["agreement"]) == (0.0, 0.25)  # predicts 1 0 2 1
    assert result["kind"] == "top1" and result["images"] == 4


@pytest.mark.parametrize(("argv", "message"), [
    (["{root}/missing.safetensors"], "error: {root}/missing.safetensors: no such file\n"),
    (["{root}/missing.onnx"], "error: {root}/missing.onnx: no such file\n"),
    (["{root}/notes.txt"], "error: {root}/notes.txt: "),
    (["{root}/labelled.npz"], "error: {root}/labelled.npz: "),
    (["{root}"], "error: {root}: is a directory, not a checkpoint file\n"),
    (["{text_onnx}"], "error: {text_onnx}: not an ONNX model ("),
    (["{onnx}", "--batches", "1", "--data", "{root}/missing.npz"], "error: {root}/missing.npz: no such data file"),
    (["{onnx}", "--arch", "vit_base_patch16_224"], "error: --arch and --ema are for checkpoints"),
    (["{ckpt}", "--model-kwargs", "{{}}"], "error: --model-kwargs is for the random-weight run"),
    (["{ckpt}", "--device", "cuda"], "error: --device cuda times random-weight models only"),
    (["--data", "{npz}"], "error: --data needs a MODEL"),
])
def test_bad_input_is_one_line_exit_2_and_nothing_written(files: dict[str, Path], tmp_path: Path, capsys,
                                                           argv: list[str], message: str) -> None:
    text_onnx = files["root"] / "text.onnx"
    text_onnx.write_text("hello\n")
    names = {"root": files["root"], "text_onnx": text_onnx, **{k: v for k, v in files.items() if k != "root"}}
    out = tmp_path / "out"
    code = run_main(main, [a.format(**names) for a in argv] + ["--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(message.format(**names)) and err.count("\n") == 1, err
    assert not out.exists()
