"""Resume state: RNG and optimizer round trips, and the two-file commit under interruption."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from m2pt_deploy.errors import M2ptError
from m2pt_deploy.train.state import (
    commit,
    get_rng_state,
    load_optimizer,
    optimizer_state,
    read_resume,
    recover,
    set_rng_state,
)


def _draws() -> tuple:
    return torch.rand(3).tolist(), random.random(), random.gauss(0, 1), np.random.rand(2).tolist()


def test_rng_state_round_trip() -> None:
    random.gauss(0, 1)  # leaves a cached gaussian in Python's state
    state = get_rng_state()
    first = _draws()
    torch.manual_seed(123), random.seed(4), np.random.seed(5)
    set_rng_state(state)
    assert _draws() == first


def _optimizer() -> tuple[torch.nn.Linear, torch.optim.AdamW]:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    groups = [{"name": "w", "params": [model.weight], "base_lr": 0.1, "lr": 0.1, "weight_decay": 0.05},
              {"name": "b", "params": [model.bias], "base_lr": 0.1, "lr": 0.1, "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups)
    model(torch.randn(5, 4)).sum().backward()
    opt.step()
    return model, opt


def test_optimizer_round_trip_through_a_file(tmp_path: Path) -> None:
    model, opt = _optimizer()
    tensors, info = optimizer_state(opt)
    commit(tmp_path / "ckpt", tmp_path / "state.safetensors", lambda p: p.write_bytes(b"weights"),
           tensors, {"optimizer": info})
    loaded_tensors, loaded_info = read_resume(tmp_path / "state.safetensors")
    _, fresh = _optimizer()
    fresh.state.clear()
    load_optimizer(fresh, loaded_tensors, loaded_info["optimizer"])
    for p, q in zip(opt.param_groups[0]["params"] + opt.param_groups[1]["params"],
                    fresh.param_groups[0]["params"] + fresh.param_groups[1]["params"], strict=True):
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(opt.state[p][key], fresh.state[q][key])


def test_optimizer_groups_must_match(tmp_path: Path) -> None:
    _, opt = _optimizer()
    tensors, info = optimizer_state(opt)
    info["param_groups"][0]["name"] = "other"
    with pytest.raises(M2ptError, match="parameter groups"):
        load_optimizer(opt, tensors, info)


def _commit(tmp: Path, payload: bytes, epoch: int) -> None:
    commit(tmp / "last", tmp / "state", lambda p: p.write_bytes(payload), {"t": torch.zeros(1)}, {"epoch": epoch})


def test_dying_between_state_and_rename_rolls_forward(tmp_path: Path) -> None:
    _commit(tmp_path, b"epoch1", 1)
    # Replay a commit that died after writing the state, before the rename.
    real_replace = Path.replace
    Path.replace = lambda self, target: (_ for _ in ()).throw(KeyboardInterrupt)  # type: ignore[assignment]
    try:
        with pytest.raises(KeyboardInterrupt):
            _commit(tmp_path, b"epoch2", 2)
    finally:
        Path.replace = real_replace  # type: ignore[method-assign]
    assert (tmp_path / "last").read_bytes() == b"epoch1"
    _, info = read_resume(tmp_path / "state")
    assert info["epoch"] == 2
    recover(tmp_path / "last", info, tmp_path / "state")
    assert (tmp_path / "last").read_bytes() == b"epoch2"
    assert not (tmp_path / "last.pending").exists()


def test_failing_state_write_keeps_the_old_pair(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _commit(tmp_path, b"epoch1", 1)
    import safetensors.torch

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    with pytest.raises(M2ptError, match="No space left on device"):
        _commit(tmp_path, b"epoch2", 2)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last", "state"]
    _, info = read_resume(tmp_path / "state")
    recover(tmp_path / "last", info, tmp_path / "state")
    assert info["epoch"] == 1 and (tmp_path / "last").read_bytes() == b"epoch1"


def test_stale_pending_file_is_dropped_and_a_foreign_checkpoint_refused(tmp_path: Path) -> None:
    _commit(tmp_path, b"epoch1", 1)
    (tmp_path / "last.pending").write_bytes(b"half")
    _, info = read_resume(tmp_path / "state")
    recover(tmp_path / "last", info, tmp_path / "state")
    assert not (tmp_path / "last.pending").exists()
    (tmp_path / "last").write_bytes(b"someone else's")
    with pytest.raises(M2ptError, match="not the checkpoint this resume state was saved with"):
        recover(tmp_path / "last", info, tmp_path / "state")


def test_resume_file_errors(tmp_path: Path) -> None:
    with pytest.raises(M2ptError, match="no such resume file"):
        read_resume(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{broken")
    with pytest.raises(M2ptError, match="truncated or corrupt resume file"):
        read_resume(tmp_path / "junk.safetensors")
