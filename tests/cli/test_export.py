from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from m2pt_deploy.model.build import build_vanilla
from tests.cli.commands import assert_user_error, export
from tests.tiny import TINY, make_pathway_model, reference_state_dict


def test_reference_checkpoint_exports_next_to_it(reference_ckpt: Path, capsys) -> None:
    code, out, err = export(["--format", "onnx", str(reference_ckpt), "--no-verify"], capsys)
    assert code == 0, err
    assert reference_ckpt.with_suffix(".onnx").is_file()
    assert "merging and exporting vit_base_patch16_224" in err  # inferred arch for a 64-wide ViT


def test_output_exists_is_refused_without_force(reference_ckpt: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "model.onnx"
    out.write_bytes(b"keep me")
    code, _, err = export([str(reference_ckpt), "-o", str(out), "--no-verify"], capsys)
    assert_user_error(code, err, "output exists; pass --force", str(out))
    assert out.read_bytes() == b"keep me"
    code, _, err = export([str(reference_ckpt), "-o", str(out), "--no-verify", "--force"], capsys)
    assert code == 0 and out.read_bytes() != b"keep me"


class _RunsCode:
    """Unpickling this calls os.getcwd: a stand-in for any code a pickle could run."""

    def __reduce__(self):
        return (os.getcwd, ())


def _pickle_with_code(p: Path) -> None:
    torch.save({"model": {"w": torch.zeros(1)}, "cfg": _RunsCode()}, p)


def _nan(p: Path) -> None:
    sd = build_vanilla(TINY).state_dict()
    sd["pos_embed"][0, 0, 0] = float("nan")
    torch.save(sd, p)


def _mismatch(p: Path) -> None:
    sd = reference_state_dict(make_pathway_model())
    sd["blocks.0.attn.qkv.aux_weight"] = torch.zeros(64, 64)
    torch.save(sd, p)


@pytest.mark.parametrize(("make", "needles"), [
    (lambda p: None, ["no such file"]),
    (lambda p: p.write_bytes(b"\x00" * 3), ["truncated or empty file"]),
    (lambda p: p.write_bytes(b"definitely not a checkpoint"), ["not a readable PyTorch checkpoint"]),
    (_pickle_with_code, ["needs code to run", "getcwd"]),
    (lambda p: torch.save({"conv.weight": torch.zeros(2, 2)}, p), ["cannot recognise the model family"]),
    (_nan, ["pos_embed contains NaN"]),
    (_mismatch, ["blocks.0.attn.qkv: target weight (192, 64) vs aux #0 weight (64, 64)"]),
], ids=["missing", "truncated", "not-a-checkpoint", "pickle-code", "not-a-vit", "nan", "aux-mismatch"])
def test_bad_checkpoints(tmp_path: Path, capsys, make, needles: list[str]) -> None:
    ckpt = tmp_path / "in.pth"
    make(ckpt)
    code, _, err = export([str(ckpt), "-o", str(tmp_path / "out.onnx")], capsys)
    assert_user_error(code, err, str(ckpt), *needles)
    assert sorted(p.name for p in tmp_path.iterdir()) == (["in.pth"] if ckpt.exists() else [])


def test_unknown_arch(reference_ckpt: Path, capsys) -> None:
    code, _, err = export([str(reference_ckpt), "--arch", "vit_nonexistent_patch3", "--no-verify"], capsys)
    assert_user_error(code, err, "unknown timm architecture 'vit_nonexistent_patch3'")


def test_unwritable_output(reference_ckpt: Path, capsys) -> None:
    code, _, err = export([str(reference_ckpt), "-o", "/proc/m2pt.onnx"], capsys)
    assert_user_error(code, err, "output folder is not writable", "/proc")


def test_bad_batch_is_refused_before_loading(reference_ckpt: Path, capsys) -> None:
    code, _, err = export([str(reference_ckpt), "--batch", "8:4:1"], capsys)
    assert_user_error(code, err, "--batch '8:4:1': needs MIN <= OPT <= MAX")


def test_installed_command_prints_one_line_and_exits_2(tmp_path: Path) -> None:
    missing = tmp_path / "missing.pth"
    proc = subprocess.run([sys.executable, "-c", "from m2pt_deploy.cli.export import entrypoint; entrypoint()",
                           str(missing)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: {missing}: no such file"


def test_help_reads_like_documentation() -> None:
    proc = subprocess.run([sys.executable, "-c", "from m2pt_deploy.cli.export import entrypoint; entrypoint()",
                           "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0
    for text in ("--precision", "--batch", "--input-size", "--no-verify", "exit status", "examples"):
        assert text in proc.stdout
