"""The demo data end to end: the trained checkpoint exports and verifies with no extra flags."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import onnx
import pytest

from m2pt_deploy.cli import demo, export
from m2pt_deploy.cli.common import run_main
from m2pt_deploy.metadata import read_metadata
from m2pt_deploy.model.checkpoint import load_checkpoint
from m2pt_deploy.pipelines.demo import AUX_ASSET, DEMO_SPEC


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, str, Path]:
    out = tmp_path_factory.mktemp("demo")
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = run_main(demo.main, ["--out", str(out), "--epochs", "1", "--quiet"])
    return code, buffer.getvalue(), out


def test_aux_asset_is_an_audio_vit_with_the_demo_blocks() -> None:
    ckpt = load_checkpoint(AUX_ASSET)
    assert ckpt.extra["modality"] == "audio" and ckpt.pathway is None
    assert AUX_ASSET.stat().st_size < 2 * 2**20
    for key in ("embed_dim", "depth", "mlp_ratio"):
        assert ckpt.spec.model_kwargs[key] == DEMO_SPEC.model_kwargs[key]
    assert ckpt.spec.input_size != DEMO_SPEC.input_size  # its own input: spectrograms


def test_demo_prints_the_comparison_and_a_passing_report(demo_run: tuple[int, str, Path]) -> None:
    code, out, folder = demo_run
    assert code == 0, out
    assert "with audio pathway" in out and "without pathway" in out and "PASSED" in out
    assert f"comparison {folder / 'comparison.png'}" in out
    for name in ("model.onnx", "merged.safetensors", "pathway/best.safetensors", "baseline/best.safetensors",
                 "pathway/curves.png", "pathway/metrics.jsonl", "comparison.png"):
        assert (folder / name).is_file(), name
    assert load_checkpoint(folder / "baseline" / "best.safetensors").pathway is None


def test_trained_checkpoint_exports_and_verifies_with_no_flags(demo_run: tuple[int, str, Path], tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    checkpoint = demo_run[2] / "pathway" / "best.safetensors"
    out = tmp_path / "model.onnx"
    assert run_main(export.main, [str(checkpoint), "--format", "onnx", "-o", str(out)]) == 0, \
        capsys.readouterr().err
    meta = read_metadata(onnx.load(out))
    assert meta["m2pt_deploy.labels"] == [str(d) for d in range(10)]
    assert meta["m2pt_deploy.model.pathway"]["aux"][0]["modality"] == "audio"


def test_demo_writes_the_figures_it_prints_as_json(demo_run: tuple[int, str, Path]) -> None:
    """demo.json is what scripts/readme_demo_table.py renders into the README: the printed figures."""
    import json

    _, out, folder = demo_run
    report = json.loads((folder / "demo.json").read_text())
    assert (report["seed"], report["epochs"], report["verified"]) == (0, 1, True)
    assert f"report     {folder / 'demo.json'}" in out
    for name, key in (("with audio pathway", "pathway"), ("without pathway", "baseline")):
        run = report[key]
        assert f"{name:<20} final {run['final_val_acc']:.4f}   best {run['best_val_acc']:.4f}" in out
        assert run["val_acc"][-1] == run["final_val_acc"] and max(run["val_acc"]) == run["best_val_acc"]
