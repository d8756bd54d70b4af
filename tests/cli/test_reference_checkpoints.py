"""Every command on every checkpoint layout the M2PT reference training code writes.

The files come from ``tests/reference_formats.py`` (wrappers, prefixes and training
metadata as the reference writers save them); the reference forward is the pathway
model the file was written from, run in torch.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from m2pt_deploy.cli.common import run_main
from m2pt_deploy.cli.export import main as export_main
from m2pt_deploy.cli.merge import main as merge_main
from m2pt_deploy.cli.train import main as train_main
from m2pt_deploy.cli.verify import main as verify_main
from m2pt_deploy.model.build import build_vanilla, load_strict
from m2pt_deploy.model.checkpoint import load_checkpoint, read_state_dict
from tests.reference_formats import CORPUS, ReferenceFile
from tests.tiny import tiny_spec, write_model, write_npz


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ReferenceFile]:
    folder = tmp_path_factory.mktemp("reference")
    return {name: make(folder) for name, make in CORPUS.items()}


def _run(main, argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = run_main(main, argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _inputs(ref: ReferenceFile, n: int = 3) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((n, *ref.spec.input_size)).astype(np.float32)


def _onnx_logits(path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


@pytest.mark.parametrize("name", list(CORPUS))
def test_exports_verified_and_matches_the_reference_forward(corpus, name: str, tmp_path: Path, capsys) -> None:
    ref = corpus[name]
    out = tmp_path / "model.onnx"
    code, stdout, err = _run(export_main, ["--format", "onnx", str(ref.path), "-o", str(out),
                                           "--report", str(tmp_path / "report.json")], capsys)
    assert code == 0, err
    assert "PASSED: 3/3 checks passed" in stdout
    x = _inputs(ref)
    with torch.no_grad():
        want = ref.model(torch.from_numpy(x)).numpy()
    got = _onnx_logits(out, x)
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-4
    assert (got.argmax(1) == want.argmax(1)).all()
    assert load_checkpoint(ref.path).spec.input_size == ref.spec.input_size


@pytest.mark.parametrize("name", list(CORPUS))
def test_merge_writes_a_plain_checkpoint_with_the_reference_outputs(corpus, name: str, tmp_path: Path,
                                                                     capsys) -> None:
    ref = corpus[name]
    out = tmp_path / "merged.safetensors"
    code, _, err = _run(merge_main, [str(ref.path), "-o", str(out)], capsys)
    assert code == 0, err
    merged = load_checkpoint(out)
    assert merged.pathway is None
    vanilla = build_vanilla(merged.spec)
    load_strict(vanilla, read_state_dict(out)[0], what="merged")
    x = torch.from_numpy(_inputs(ref))
    with torch.no_grad():
        assert (vanilla(x) - ref.model(x)).abs().max() <= 1e-5


@pytest.mark.parametrize("name", list(CORPUS))
def test_verify_passes_on_the_tools_export(corpus, name: str, tmp_path: Path, capsys) -> None:
    ref = corpus[name]
    onnx_path = tmp_path / "m.onnx"
    assert _run(export_main, [str(ref.path), "-o", str(onnx_path), "--no-verify"], capsys)[0] == 0
    code, stdout, err = _run(verify_main, [str(ref.path), "--onnx", str(onnx_path)], capsys)
    assert code == 0, stdout + err
    assert "PASSED: 3/3 checks passed" in stdout


@pytest.mark.parametrize("name", list(CORPUS))
def test_train_takes_each_as_aux(corpus, name: str, tmp_path: Path, capsys) -> None:
    target = write_model(tmp_path / "target.safetensors", tiny_spec(), seed=0)
    npz = write_npz(tmp_path / "data.npz", n=32)
    argv = [str(target), "--aux", f"other={corpus[name].path}", "--data", str(npz), "--out", str(tmp_path / "run"),
            "--epochs", "1", "--batch-size", "16", "--val-split", "0.25", "--quiet"]
    code, out, err = _run(train_main, argv, capsys)
    assert code == 0, err
    assert (tmp_path / "run" / "best.safetensors").is_file()


def test_training_args_are_reported(corpus, tmp_path: Path, capsys) -> None:
    code, _, err = _run(export_main, [str(corpus["mae-finetune"].path), "-o", str(tmp_path / "m.onnx"),
                                      "--report", str(tmp_path / "r.json")], capsys)
    assert code == 0
    notes = json.loads((tmp_path / "r.json").read_text())["notes"]
    assert "10 classes, as args.nb_classes says" in notes
    assert "mean pooling, as args.global_pool says" in notes
    assert "input 32 x 32 from args.input_size" in notes
    assert "note: input 32 x 32 from args.input_size" in err


def test_audiomae_is_time_by_frequency_and_says_so(corpus, tmp_path: Path, capsys) -> None:
    ckpt = load_checkpoint(corpus["audiomae"].path)
    assert ckpt.spec.input_size == (1, 1024, 128)
    assert ckpt.spec.mean == (-4.2677393,) and ckpt.spec.std == (2 * 4.5689974,)
    assert any("from args.dataset 'audioset'" in n for n in ckpt.notes)
    code, _, err = _run(export_main, [str(corpus["audiomae"].path), "--input-size", "1", "128", "1024",
                                      "-o", str(tmp_path / "t.onnx")], capsys)
    assert code == 2 and "AudioMAE's input transposed" in err and err.count("\n") == 1
    assert not (tmp_path / "t.onnx").exists()


def test_ema_weights_only_when_asked(corpus, tmp_path: Path, capsys) -> None:
    ref = corpus["ddp-ema"]
    plain, ema = tmp_path / "plain.onnx", tmp_path / "ema.onnx"
    assert _run(export_main, [str(ref.path), "-o", str(plain), "--no-verify"], capsys)[0] == 0
    code, _, err = _run(export_main, [str(ref.path), "-o", str(ema), "--ema"], capsys)
    assert code == 0, err
    assert "note: EMA weights (model_ema)" in err
    x = _inputs(ref)
    assert np.abs(_onnx_logits(plain, x) - _onnx_logits(ema, x)).max() > 1e-3
    code, _, err = _run(export_main, [str(corpus["point-segmentation"].path), "--ema", "-o",
                                      str(tmp_path / "x.onnx")], capsys)
    assert code == 2 and "--ema: the checkpoint has no 'model_ema' weights" in err
