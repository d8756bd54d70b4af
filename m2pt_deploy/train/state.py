"""Resume state: optimizer, schedule step, RNG streams and progress, without pickles.

The state is one ``.safetensors`` file: tensors (optimizer moments, RNG states) in the
body, everything else as JSON in its metadata. It names the SHA-256 of the weights
checkpoint it belongs to, and :func:`commit` writes the pair in an order that a kill at
any instant leaves a consistent pair on disk (see there).
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor

from m2pt_deploy.errors import M2ptError
from m2pt_deploy.fileio import atomic_output, sha256_file
from m2pt_deploy.metadata import TRAIN_STATE_KEY

__all__ = [
    "commit",
    "get_rng_state",
    "load_optimizer",
    "optimizer_state",
    "read_resume",
    "recover",
    "seed_all",
    "set_rng_state",
]

_PENDING = ".pending"


def seed_all(seed: int) -> None:
    """Seed every stream :func:`get_rng_state` saves: torch (CPU and CUDA), Python and NumPy.

    timm's transforms draw from Python's ``random`` (RandomResizedCrop) as well as torch, so
    seeding torch alone leaves image-folder runs unrepeatable. DataLoader workers need nothing
    more: each seeds its own torch, Python and NumPy streams from a base seed that the loader
    draws from this process's torch stream.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # CUDA too, on every device


def get_rng_state() -> dict[str, Tensor]:
    """Every RNG stream training may draw from, each packed into one tensor."""
    version, mt, gauss = random.getstate()
    _, np_mt, np_pos, np_has_gauss, np_gauss = cast(tuple, np.random.get_state())
    state = {
        "torch": torch.get_rng_state().to(torch.int64),
        "python": torch.tensor([version, *mt], dtype=torch.int64),
        "python_gauss": torch.tensor([math.nan if gauss is None else gauss], dtype=torch.float64),
        "numpy": torch.tensor([*np_mt.tolist(), np_pos, np_has_gauss], dtype=torch.int64),
        "numpy_gauss": torch.tensor([np_gauss], dtype=torch.float64),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state().to(torch.int64)
    return state


def set_rng_state(state: Mapping[str, Tensor]) -> None:
    torch.set_rng_state(state["torch"].to(torch.uint8))
    py = state["python"].tolist()
    gauss = float(state["python_gauss"][0])
    random.setstate((py[0], tuple(py[1:]), None if math.isnan(gauss) else gauss))
    npy = state["numpy"].tolist()
    np.random.set_state(("MT19937", np.array(npy[:-2], dtype=np.uint32), npy[-2], npy[-1],
                         float(state["numpy_gauss"][0])))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"].to(torch.uint8))


def optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """``optimizer.state_dict()`` split into tensors and a JSON-able remainder."""
    sd = optimizer.state_dict()
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, entries in sd["state"].items():
        for key, value in entries.items():
            if isinstance(value, Tensor):
                tensors[f"optimizer.{pid}.{key}"] = value
            else:
                scalars.setdefault(str(pid), {})[key] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def load_optimizer(optimizer: torch.optim.Optimizer, tensors: Mapping[str, Tensor], info: Mapping[str, Any]) -> None:
    names = [g["name"] for g in optimizer.param_groups]
    saved = [g["name"] for g in info["param_groups"]]
    if names != saved:
        raise M2ptError(f"resume state's parameter groups {saved} do not match this model's {names}")
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = value
    for pid, entries in info["scalars"].items():
        state.setdefault(int(pid), {}).update(entries)
    optimizer.load_state_dict({"state": state, "param_groups": info["param_groups"]})


def _write_state(path: Path, tensors: Mapping[str, Tensor], info: Mapping[str, Any]) -> None:
    from safetensors.torch import save_file

    body = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_output(path, force=True) as tmp:
        save_file(body, str(tmp), metadata={TRAIN_STATE_KEY: json.dumps(info), "format": "pt"})


def read_resume(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    from safetensors import SafetensorError, safe_open

    p = Path(path)
    if not p.is_file():
        raise M2ptError("no such resume file (it is written beside the checkpoints every epoch)", p)
    try:
        with safe_open(p, framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is no dict)
    except (SafetensorError, OSError, ValueError) as e:
        raise M2ptError(f"truncated or corrupt resume file ({e})", p) from e
    if TRAIN_STATE_KEY not in meta:
        raise M2ptError("not an m2pt-train resume file (no training state in its metadata)", p)
    return tensors, json.loads(meta[TRAIN_STATE_KEY])


def commit(
    checkpoint: Path,
    state: Path,
    write_checkpoint: Callable[[Path], Any],
    tensors: Mapping[str, Tensor],
    info: dict[str, Any],
) -> None:
    """Write weights and resume state as a pair, consistent whenever the process dies.

    1. the weights go to ``<checkpoint>.pending`` (atomically);
    2. the state, naming the pending file's SHA-256, replaces the old state (atomically);
    3. the pending file is renamed over the checkpoint.
    Dying before 2 leaves the old pair (the pending file is stale); dying between 2 and 3
    leaves a state whose checkpoint is the pending file, which :func:`recover` renames.
    """
    pending = checkpoint.with_name(checkpoint.name + _PENDING)
    write_checkpoint(pending)
    try:
        _write_state(state, tensors, {**info, "checkpoint_sha256": sha256_file(pending)})
    except BaseException:
        pending.unlink(missing_ok=True)
        raise
    pending.replace(checkpoint)


def recover(checkpoint: Path, info: Mapping[str, Any], state: Path) -> None:
    """Finish an interrupted :func:`commit`, or refuse a checkpoint that is not the state's."""
    pending = checkpoint.with_name(checkpoint.name + _PENDING)
    want = info["checkpoint_sha256"]
    if pending.is_file() and sha256_file(pending) == want:
        pending.replace(checkpoint)
        return
    pending.unlink(missing_ok=True)
    if not checkpoint.is_file():
        raise M2ptError(f"the resume state's checkpoint {checkpoint.name} is missing", state)
    if sha256_file(checkpoint) != want:
        raise M2ptError(f"{checkpoint.name} is not the checkpoint this resume state was saved with "
                        "(was it overwritten?)", state)
