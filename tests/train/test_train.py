"""End to end on a tiny ViT: outputs, modes, exact resume, a killed run, a full disk."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch

from m2pt_deploy.cli.common import run_main
from m2pt_deploy.cli.train import main
from m2pt_deploy.fileio import sha256_file
from m2pt_deploy.model.build import build_unmerged
from m2pt_deploy.model.checkpoint import load_checkpoint
from m2pt_deploy.train import TrainConfig, train
from m2pt_deploy.train.optim import lr_factor
from tests.tiny import with_, write_image_folder

KILL_SCRIPT = """
import json, os, signal, sys
from m2pt_deploy.train import TrainConfig, train
config = TrainConfig.from_dict(json.loads(sys.argv[1]))
kill_at = int(sys.argv[2])
def hook(step):
    if step == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
train(config, progress=False, on_step=hook)
"""


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    return safetensors.torch.load_file(str(path))


def _assert_same_weights(a: Path, b: Path) -> None:
    ta, tb = _tensors(a), _tensors(b)
    assert ta.keys() == tb.keys()
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k


def test_checkpoint_has_full_metadata_and_learns(config: TrainConfig, aux: Path) -> None:
    result = train(config, progress=False)
    ckpt = load_checkpoint(result.last)
    assert ckpt.kind == "m2pt"
    assert ckpt.spec.num_classes == 4 and ckpt.spec.input_size == (1, 16, 16)
    assert ckpt.extra["labels"] == ["0", "1", "2", "3"]
    assert ckpt.extra["training"]["lr"] == config.lr and ckpt.extra["epoch"] == 3
    assert ckpt.extra["metrics"]["val_acc"] == result.history[-1]["val_acc"]
    assert ckpt.pathway is not None
    assert set(ckpt.pathway.layers) == {"attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"}
    assert ckpt.pathway.aux[0]["modality"] == "audio"
    assert ckpt.pathway.aux[0]["sha256"] == sha256_file(aux)
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    lambdas = [v[0] for v in result.history[-1]["lambda"].values()]
    assert len(lambdas) == 8 and all(v != 0.0 for v in lambdas)
    # Frozen by default: the aux weights in the checkpoint are the aux file's.
    aux_sd = load_checkpoint(aux).state_dict
    assert torch.equal(ckpt.state_dict["blocks.1.mlp.fc1.aux_weight.0"], aux_sd["blocks.1.mlp.fc1.weight"])
    records = [json.loads(line) for line in (result.out_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert (result.out_dir / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    best = load_checkpoint(result.best)
    assert best.extra["metrics"]["val_acc"] == max(r["val_acc"] for r in records)


def test_probe_mode_trains_only_lambda_and_head(config: TrainConfig, target: Path) -> None:
    result = train(with_(config, mode="probe", epochs=1), progress=False)
    trained = load_checkpoint(result.last).state_dict
    start = load_checkpoint(target).state_dict
    assert torch.equal(trained["blocks.0.attn.qkv.weight"], start["blocks.0.attn.qkv.weight"])
    assert torch.equal(trained["patch_embed.proj.weight"], start["patch_embed.proj.weight"])
    assert not torch.equal(trained["head.1.weight"], start["head.weight"])
    assert "head.0.running_mean" in trained
    assert float(trained["blocks.0.attn.qkv.cross_modal_scale.0"].abs()) > 0
    model = build_unmerged(load_checkpoint(result.last))
    assert model(torch.zeros(2, 1, 16, 16)).shape == (2, 4)


def test_train_aux_updates_the_aux_weights(config: TrainConfig, aux: Path) -> None:
    result = train(with_(config, train_aux=True, epochs=1), progress=False)
    trained = load_checkpoint(result.last).state_dict
    original = load_checkpoint(aux).state_dict
    assert not torch.equal(trained["blocks.0.mlp.fc2.aux_weight.0"], original["blocks.0.mlp.fc2.weight"])


def test_no_aux_is_plain_fine_tuning(config: TrainConfig) -> None:
    result = train(with_(config, aux=(), epochs=1), progress=False)
    ckpt = load_checkpoint(result.last)
    assert ckpt.pathway is None and not any("aux_weight" in k for k in ckpt.state_dict)


class _Stop(Exception):
    pass


def test_resume_continues_exactly(config: TrainConfig, tmp_path: Path) -> None:
    straight = train(with_(config, out_dir=str(tmp_path / "straight")), progress=False)
    steps_per_epoch = straight.history[0]["step"]

    def stop(step: int) -> None:
        if step == 2 * steps_per_epoch + 1:
            raise _Stop

    split = with_(config, out_dir=str(tmp_path / "split"))
    with pytest.raises(_Stop):
        train(split, progress=False, on_step=stop)
    resumed = train(resume=Path(split.out_dir) / "resume.safetensors", progress=False)
    _assert_same_weights(straight.last, resumed.last)
    keys = ("epoch", "step", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "lambda")
    assert [[r[k] for k in keys] for r in resumed.history] == [[r[k] for k in keys] for r in straight.history]


def test_killed_run_loses_at_most_the_epoch_and_resumes_exactly(config: TrainConfig, tmp_path: Path) -> None:
    straight = train(with_(config, out_dir=str(tmp_path / "straight")), progress=False)
    killed = with_(config, out_dir=str(tmp_path / "killed"))
    steps_per_epoch = straight.history[0]["step"]
    proc = subprocess.run([sys.executable, "-c", KILL_SCRIPT, json.dumps(killed.to_dict()),
                           str(steps_per_epoch + 2)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == -9, proc.stderr
    out = Path(killed.out_dir)
    assert load_checkpoint(out / "last.safetensors").extra["epoch"] == 1
    assert not [p.name for p in out.iterdir() if p.name.endswith((".tmp", ".pending"))]
    (out / ".last.safetensors.pending.abc123.tmp").write_bytes(b"half-written by a killed run")
    resumed = train(resume=out / "resume.safetensors", progress=False)
    _assert_same_weights(straight.last, resumed.last)
    assert not list(out.glob(".*.tmp"))


def test_full_disk_while_saving(config: TrainConfig, monkeypatch: pytest.MonkeyPatch,
                                capsys: pytest.CaptureFixture[str]) -> None:
    real = safetensors.torch.save_file
    calls = {"n": 0}

    def fill_disk(tensors, filename, metadata=None):
        calls["n"] += 1
        if calls["n"] > 3:  # epoch 1 writes best, last and resume state; epoch 2 hits a full disk
            Path(filename).write_bytes(b"\0" * 100)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", fill_disk)
    argv = [config.target, "--aux", config.aux[0][0], "--data", config.data, "--out", config.out_dir,
            "--epochs", "3", "--batch-size", "16", "--val-split", "0.25", "--quiet"]
    assert run_main(main, argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "No space left on device" in err and "\n" not in err
    out = Path(config.out_dir)
    assert load_checkpoint(out / "last.safetensors").extra["epoch"] == 1
    assert not [p.name for p in out.iterdir() if p.name.endswith((".tmp", ".pending"))]
    monkeypatch.setattr(safetensors.torch, "save_file", real)
    resumed = train(resume=out / "resume.safetensors", progress=False)
    assert resumed.history[-1]["epoch"] == 3


def test_full_disk_in_the_first_epoch_leaves_no_run_folder(config: TrainConfig, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str],
                                                           tmp_path: Path) -> None:
    def full(tensors, filename, metadata=None):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    out = tmp_path / "runs" / "a"
    argv = [config.target, "--data", config.data, "--out", str(out), "--epochs", "1", "--batch-size", "16",
            "--val-split", "0.25", "--quiet"]
    assert run_main(main, argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "No space left on device" in err, err
    assert not (tmp_path / "runs").exists()  # the parent this run created goes too


@pytest.mark.parametrize("workers", [0, 1])
def test_same_seed_gives_the_same_weights_on_an_image_folder(target: Path, tmp_path: Path, workers: int,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """Random crops and flips come from Python's random and torch; both follow --seed."""
    images = write_image_folder(tmp_path / "imgs")

    def run(name: str, seed: int) -> dict[str, torch.Tensor]:
        argv = [str(target), "--data", str(images), "--out", str(tmp_path / name), "--num-classes", "2",
                "--epochs", "1", "--batch-size", "3", "--val-split", "0.25", "--seed", str(seed),
                "--workers", str(workers), "--quiet"]
        assert run_main(main, argv) == 0, capsys.readouterr().err
        return _tensors(tmp_path / name / "last.safetensors")

    first, again, other = run("first", 0), run("again", 0), run("other", 1)
    assert first.keys() == again.keys() == other.keys()
    for k in first:
        assert torch.equal(first[k], again[k]), k
    assert any(not torch.equal(first[k], other[k]) for k in first)


def _cli(*argv: str) -> int:
    return run_main(main, [*argv, "--quiet"])


def test_resume_with_epochs_extends_a_finished_run(config: TrainConfig, capsys: pytest.CaptureFixture[str]) -> None:
    done = train(with_(config, epochs=2), progress=False)
    steps_per_epoch = done.history[0]["step"]
    assert _cli("--resume", config.out_dir, "--epochs", "3") == 0
    assert "trained 3 epochs" in capsys.readouterr().out
    records = [json.loads(line) for line in (done.out_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert records[:2] == done.history
    # The schedule is recomputed for 3 epochs: epoch 3 ends mid-cosine, not at the old floor.
    factor = lr_factor(3 * steps_per_epoch - 1, warmup_steps=steps_per_epoch, total_steps=3 * steps_per_epoch,
                       min_ratio=config.min_lr / config.lr)
    assert records[2]["lr"] == pytest.approx(config.lr * factor, rel=1e-12)
    assert records[2]["lr"] > 10 * config.min_lr  # the 2-epoch schedule would be at min_lr here
    assert load_checkpoint(done.last).extra["training"]["epochs"] == 3
    # Resuming without --epochs keeps the (new) saved total: nothing left to do, and it says so.
    assert _cli("--resume", config.out_dir) == 0
    out = capsys.readouterr().out
    assert "nothing to train: the run has finished all 3 epochs" in out and "trained" not in out


def test_resume_without_epochs_keeps_the_saved_total(config: TrainConfig, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    def stop(step: int) -> None:
        if (Path(config.out_dir) / "resume.safetensors").exists():
            raise _Stop

    with pytest.raises(_Stop):  # in epoch 2 of 3
        train(config, progress=False, on_step=stop)
    assert _cli("--resume", str(Path(config.out_dir) / "resume.safetensors")) == 0
    assert "trained 3 epochs" in capsys.readouterr().out  # the run's 3, not the CLI's default of 10


def test_resume_with_fewer_epochs_than_done(config: TrainConfig, capsys: pytest.CaptureFixture[str]) -> None:
    train(with_(config, epochs=2), progress=False)
    before = (Path(config.out_dir) / "last.safetensors").read_bytes()
    assert _cli("--resume", config.out_dir, "--epochs", "1") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err == (f"error: {Path(config.out_dir) / 'resume.safetensors'}: --epochs 1 is fewer than the 2 epochs "
                   "this run has already done; give a larger total to extend it\n")
    assert (Path(config.out_dir) / "last.safetensors").read_bytes() == before


def test_image_folder_two_aux_channel_lambda_and_bf16(config: TrainConfig, aux: Path, tmp_path: Path) -> None:
    """The other input and option paths in one short run: PNG folder, 2 auxes, per-channel λ, bf16."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for label in ("a", "b", "c", "d"):
        (tmp_path / "imgs" / label).mkdir(parents=True)
        for i in range(8):
            Image.fromarray(rng.integers(0, 256, (20, 20), dtype=np.uint8)).save(tmp_path / "imgs" / label / f"{i}.png")
    changes = {"data": str(tmp_path / "imgs"), "aux": ((str(aux), "audio"), (str(aux), "video")),
               "lambda_kind": "channel", "precision": "bf16", "epochs": 1, "batch_size": 8}
    result = train(with_(config, **changes), progress=False)
    ckpt = load_checkpoint(result.last)
    assert ckpt.extra["labels"] == ["a", "b", "c", "d"]
    assert ckpt.pathway is not None and [a["modality"] for a in ckpt.pathway.aux] == ["audio", "video"]
    assert ckpt.pathway.lambda_kind == "channel"
    assert ckpt.state_dict["blocks.0.mlp.fc1.cross_modal_scale.1"].shape == (256,)
    assert ckpt.state_dict["blocks.0.mlp.fc1.weight"].dtype == torch.float32
    assert all(torch.isfinite(v).all() for v in ckpt.state_dict.values() if v.is_floating_point())


def test_train_needs_config_or_resume(config: TrainConfig, tmp_path: Path) -> None:
    from m2pt_deploy.errors import M2ptError

    with pytest.raises(M2ptError, match="not both or neither"):
        train()
    with pytest.raises(M2ptError, match="not both or neither"):
        train(config, resume=tmp_path / "resume.safetensors")
