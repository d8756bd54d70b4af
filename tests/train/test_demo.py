"""The demo data end to end: m2pt-train's checkpoint exports and verifies with no extra flags."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from m2pt_deploy.checkpoint import load_checkpoint
from m2pt_deploy.cli import demo, export
from m2pt_deploy.cli import train as train_cli
from m2pt_deploy.cli.common import run_main
from m2pt_deploy.demo import AUX_ASSET, DEMO_SPEC, write_digits
from m2pt_deploy.export.onnx import read_metadata


def test_aux_asset_is_an_audio_vit_with_the_demo_blocks() -> None:
    ckpt = load_checkpoint(AUX_ASSET)
    assert ckpt.extra["modality"] == "audio" and ckpt.pathway is None
    assert AUX_ASSET.stat().st_size < 2 * 2**20
    for key in ("embed_dim", "depth", "mlp_ratio"):
        assert ckpt.spec.model_kwargs[key] == DEMO_SPEC.model_kwargs[key]
    assert ckpt.spec.input_size != DEMO_SPEC.input_size  # its own input: spectrograms


def test_trained_checkpoint_exports_and_verifies_with_no_flags(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    from m2pt_deploy.build import build_vanilla
    from m2pt_deploy.checkpoint import save_checkpoint

    save_checkpoint(tmp_path / "target.safetensors", build_vanilla(DEMO_SPEC).state_dict(), DEMO_SPEC)
    data = write_digits(tmp_path / "digits.npz")
    run = tmp_path / "run"
    argv = [str(tmp_path / "target.safetensors"), "--aux", f"audio={AUX_ASSET}", "--data", str(data),
            "--out", str(run), "--epochs", "1", "--batch-size", "128", "--quiet"]
    assert run_main(train_cli.main, argv) == 0
    out = tmp_path / "model.onnx"
    assert run_main(export.main, [str(run / "best.safetensors"), "--format", "onnx", "-o", str(out)]) == 0, \
        capsys.readouterr().err
    meta = read_metadata(onnx.load(out))
    assert meta["m2pt_deploy.labels"] == [str(d) for d in range(10)]
    assert meta["m2pt_deploy.pathway"]["aux"][0]["modality"] == "audio"


def test_demo_prints_the_comparison_and_the_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = run_main(demo.main, ["--out", str(tmp_path / "demo"), "--epochs", "1", "--quiet"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "with audio pathway" in out and "without pathway" in out
    for name in ("model.onnx", "merged.safetensors", "pathway/best.safetensors", "baseline/best.safetensors",
                 "pathway/curves.png"):
        assert (tmp_path / "demo" / name).is_file(), name
