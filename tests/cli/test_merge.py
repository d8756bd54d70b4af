from __future__ import annotations

from pathlib import Path

import timm
import torch

from m2pt_deploy.cli.common import run_main
from m2pt_deploy.cli.merge import main
from m2pt_deploy.model.build import build_unmerged
from m2pt_deploy.model.checkpoint import load_checkpoint
from tests.tiny import TINY


def test_merged_checkpoint_loads_in_timm_and_matches(m2pt_ckpt: Path, tmp_path: Path, capsys, input_batch) -> None:  # noqa: E501
    out = tmp_path / "merged.safetensors"
    assert run_main(main, [str(m2pt_ckpt), "-o", str(out)]) == 0
    assert "8 pathway layers folded" in capsys.readouterr().out
    overlay = {"file": str(out), "num_classes": 10}
    vanilla = timm.create_model(TINY.arch, pretrained=True, pretrained_cfg_overlay=overlay, **TINY.model_kwargs).eval()
    x = input_batch(TINY, 3)
    with torch.no_grad():
        assert torch.equal(vanilla(x), build_unmerged(load_checkpoint(m2pt_ckpt))(x))
    merged = load_checkpoint(out)
    assert merged.kind == "m2pt" and merged.pathway is None
    assert merged.extra["merged_from"]["pathway"]["layers"] == ["attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"]


def test_reference_checkpoint_merges_to_default_name(reference_ckpt: Path, capsys) -> None:
    assert run_main(main, [str(reference_ckpt)]) == 0
    assert reference_ckpt.with_name("reference_merged.safetensors").is_file()


def test_missing_input(tmp_path: Path, capsys) -> None:
    code = run_main(main, [str(tmp_path / "nope.pth"), "-o", str(tmp_path / "m.safetensors")])
    err = capsys.readouterr().err
    assert code == 2 and err.strip() == f"error: {tmp_path / 'nope.pth'}: no such file"
    assert list(tmp_path.iterdir()) == []
