"""Two gloo processes under torchrun take the same steps as one process with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch

from m2pt_deploy.train import TrainConfig, train
from tests.tiny import with_

# Gradients are averaged by an all-reduce instead of inside one mean, so float sums run
# in a different order and AdamW amplifies the rounding a little. Measured on this setup:
# one process with its batch cut into 2 micro-batches instead of 1 ends 2.2e-5 away from
# itself, 2 processes 3.4e-5 away. One AdamW step at lr 2e-3 moves a weight up to ~2e-3,
# so 1e-4 (5 % of one step) tells a matching run from one that took different steps.
ATOL = 1e-4


def test_two_gloo_processes_match_one(config: TrainConfig, tmp_path: Path) -> None:
    # Full batches only and accumulation on: each rank's 4 samples split into 2 micro-batches.
    base = with_(config, epochs=2, batch_size=8, accum_steps=2, device="cpu", clip_grad=1.0)
    single = train(with_(base, out_dir=str(tmp_path / "single")), progress=False)
    ddp = with_(base, out_dir=str(tmp_path / "ddp"), accum_steps=1)
    # The m2pt-train command itself, unchanged, under torchrun.
    cli = [ddp.target, "--aux", ddp.aux[0][0], "--data", ddp.data, "--out", ddp.out_dir, "--epochs", "2",
           "--batch-size", "8", "--lr", str(ddp.lr), "--lambda-lr", str(ddp.lambda_lr), "--warmup-epochs", "1",
           "--val-split", "0.25", "--seed", "0", "--device", "cpu", "--clip-grad", "1.0", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[2])}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "m2pt_deploy.cli.train", *cli],
        capture_output=True, text=True, timeout=240, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("trained 2 epochs") == 1  # rank 0 reports, once
    a = safetensors.torch.load_file(str(single.last))
    b = safetensors.torch.load_file(str(Path(ddp.out_dir) / "last.safetensors"))
    assert a.keys() == b.keys()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < ATOL, worst
    moved = max((a[k] - safetensors.torch.load_file(str(config.target)).get(k, a[k])).abs().max().item()
                for k in a)
    assert moved > 100 * ATOL  # the comparison is not between two untrained models
    metrics = [json.loads(line) for line in (Path(ddp.out_dir) / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["step"] == single.history[-1]["step"]
    assert abs(metrics[-1]["val_acc"] - single.history[-1]["val_acc"]) < 1e-9


class _Stop(Exception):
    pass


def test_a_one_process_run_resumes_on_two(config: TrainConfig, tmp_path: Path) -> None:
    """Elastic resume: optimizer and schedule carry over; no randomness here, so the weights match."""
    base = with_(config, epochs=2, batch_size=8, device="cpu")
    straight = train(with_(base, out_dir=str(tmp_path / "straight")), progress=False)
    steps_per_epoch = straight.history[0]["step"]

    def stop(step: int) -> None:
        if step == steps_per_epoch + 1:
            raise _Stop

    split = with_(base, out_dir=str(tmp_path / "split"))
    with pytest.raises(_Stop):
        train(split, progress=False, on_step=stop)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[2])}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "m2pt_deploy.cli.train", "--resume", str(Path(split.out_dir) / "resume.safetensors"), "--quiet"],
        capture_output=True, text=True, timeout=240, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = safetensors.torch.load_file(str(straight.last))
    b = safetensors.torch.load_file(str(Path(split.out_dir) / "last.safetensors"))
    assert max((a[k] - b[k]).abs().max().item() for k in a) < ATOL
