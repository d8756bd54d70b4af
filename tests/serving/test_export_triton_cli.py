"""m2pt-export --format triton: a repository Triton's schema accepts, and its refusals."""

from __future__ import annotations

import json
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
    assert "--trt-accelerator needs GPU instances" in err.splitlines()[-1]
    assert not repo.exists() or not any(repo.iterdir())


def _named_paths(text: str) -> list[Path]:
    return [Path(word.rstrip(",)")) for word in text.split() if word.startswith("/")]


def test_the_printed_lines_name_the_files_the_user_keeps(m2pt_ckpt: Path, tmp_path: Path, capsys) -> None:
    """The ONNX is verified in a temporary folder; what is printed names its copy in the model folder."""
    repo, report = tmp_path / "models", tmp_path / "report.json"
    code = run_main(main, ["--format", "triton", str(m2pt_ckpt), "-o", str(repo), "--name", "vit",
                           "--report", str(report)])
    out, err = capsys.readouterr()
    assert code == 0, err
    onnx_file = repo / "vit" / "1" / "model.onnx"
    assert f"wrote {onnx_file}\n" in out and f"verify {onnx_file} against {m2pt_ckpt}" in out
    assert json.loads(report.read_text())["onnx"] == str(onnx_file)
    assert "m2pt-triton-" not in out
    named = _named_paths(out)
    assert onnx_file in named and all(p.exists() for p in named), [p for p in named if not p.exists()]


def test_a_failed_verification_keeps_the_export_where_the_lines_say(m2pt_ckpt: Path, tmp_path: Path, capsys,
                                                                    monkeypatch) -> None:
    import dataclasses

    from m2pt_deploy.verify import tolerance

    # No export reaches 101% top-1 agreement: the failing branch, deterministically.
    monkeypatch.setitem(tolerance.TOLERANCES, "fp32", dataclasses.replace(tolerance.TOLERANCES["fp32"],
                                                                          min_top1=1.01))
    repo = tmp_path / "models"
    code = run_main(main, ["--format", "triton", str(m2pt_ckpt), "-o", str(repo), "--name", "vit"])
    out, err = capsys.readouterr()
    kept = repo / "vit.unverified.onnx"
    assert code == 1
    assert f"verification FAILED; the export is kept at {kept} for inspection" in err
    assert f"verify {kept} against" in out and "partial" not in out
    assert kept.stat().st_size > 0 and all(p.exists() for p in _named_paths(out))
    assert sorted(p.name for p in repo.iterdir()) == ["vit.unverified.onnx"]
