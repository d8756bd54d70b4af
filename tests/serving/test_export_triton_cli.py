"""m2pt-export --format triton: a repository Triton's schema accepts, and its refusals."""

from __future__ import annotations

from pathlib import Path

from m2pt_deploy.cli.common import EXIT_BAD_INPUT, run_main
from m2pt_deploy.cli.export import main
from tests.serving.test_triton import parse_config


def test_export_writes_a_parsable_model_folder(m2pt_ckpt: Path, tmp_path: Path, capsys) -> None:
    repo = tmp_path / "models"
    code = run_main(main, ["--format", "triton", str(m2pt_ckpt), "-o", str(repo),
                           "--name", "vit", "--max-batch", "16", "--instances", "2"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert f"wrote {repo / 'vit'}" in out
    assert "verifying against the unmerged model ... done" in err
    config, pb2 = parse_config(repo / "vit")
    assert config.max_batch_size == 16 and config.instance_group[0].count == 2
    assert list(config.input[0].dims) == [3, 32, 32]
    assert (repo / "vit" / "1" / "model.onnx").stat().st_size > 0
    assert sorted(p.name for p in repo.iterdir()) == ["vit"]

    code = run_main(main, ["--format", "triton", str(m2pt_ckpt), "-o", str(repo), "--no-verify",
                           "--name", "vit"])
    err = capsys.readouterr().err
    assert code == EXIT_BAD_INPUT
    assert err.strip().splitlines()[-1] == (
        f"error: {repo / 'vit'}: model folder exists; pass --force to replace it")


def test_accelerator_on_cpu_instances_is_refused_and_nothing_is_written(m2pt_ckpt, tmp_path, capsys):
    repo = tmp_path / "models"
    code = run_main(main, ["--format", "triton", str(m2pt_ckpt), "-o", str(repo), "--no-verify",
                           "--trt-accelerator", "fp16"])
    err = capsys.readouterr().err
    assert code == EXIT_BAD_INPUT
    assert "TensorRT accelerator needs the onnxruntime platform on KIND_GPU" in err.splitlines()[-1]
    assert not repo.exists() or not any(repo.iterdir())
