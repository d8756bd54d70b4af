"""Process group from torchrun's environment: NCCL on GPUs, gloo on CPU, nothing for one process."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import Tensor

from m2pt_deploy.errors import M2ptError

__all__ = ["Distributed"]


@dataclasses.dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, *, device: str | None = None) -> Distributed:
        """Join the group torchrun describes (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``), if any."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
        use_cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
        dev = torch.device(f"cuda:{local}" if use_cuda else "cpu")
        if use_cuda:
            torch.cuda.set_device(dev)
        if world == 1:
            return cls(device=dev)
        owns = not dist.is_initialized()
        if owns:
            dist.init_process_group("nccl" if use_cuda else "gloo")
        return cls(dist.get_rank(), dist.get_world_size(), local, dev, owns)

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def on_main(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on rank 0 only; a user error there ends every rank, none is left waiting."""
        error: M2ptError | None = None
        if self.is_main:
            try:
                fn()
            except M2ptError as e:
                error = e
        if self.sum([float(error is not None)])[0]:
            raise error or M2ptError("rank 0 stopped with an error (see its output)")

    def sum(self, values: list[float]) -> list[float]:
        if not self.enabled:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def gather(self, tensor: Tensor) -> list[Tensor]:
        """Every rank's copy of a same-shaped tensor, in rank order (on CPU)."""
        if not self.enabled:
            return [tensor]
        t = tensor.to(self.device)
        out = [torch.empty_like(t) for _ in range(self.world_size)]
        dist.all_gather(out, t)
        return [o.cpu() for o in out]
