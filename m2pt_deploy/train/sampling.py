"""Batch order that does not depend on the number of processes.

Every rank draws the same permutation (seeded by ``seed + epoch``), cuts it into global
batches, and takes its own contiguous slice of each. DDP averages the slices' gradients,
so N processes take the same optimizer steps as one process with the same global batch.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

from m2pt_deploy.errors import M2ptError

__all__ = ["GlobalBatchSampler", "ShardSampler", "micro_batch_size"]


def micro_batch_size(global_batch: int, world_size: int, accum_steps: int) -> int:
    """Samples per forward pass on one rank; the global batch must split evenly."""
    per = global_batch // (world_size * accum_steps)
    if per < 1 or per * world_size * accum_steps != global_batch:
        raise M2ptError(
            f"--batch-size {global_batch} does not split into {world_size} processes × "
            f"{accum_steps} accumulation steps"
        )
    return per


class GlobalBatchSampler(Sampler[list[int]]):
    """Training batches: this rank's slice of each full global batch (the tail is dropped)."""

    def __init__(self, n: int, global_batch: int, *, rank: int, world_size: int, seed: int) -> None:
        if n < global_batch:
            raise M2ptError(f"--batch-size {global_batch} is larger than the training set ({n} samples)")
        self.n, self.global_batch = n, global_batch
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n // self.global_batch

    def __iter__(self) -> Iterator[list[int]]:
        order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        per_rank = self.global_batch // self.world_size
        for b in range(len(self)):
            start = b * self.global_batch + self.rank * per_rank
            yield order[start:start + per_rank].tolist()


class ShardSampler(Sampler[list[int]]):
    """Evaluation batches: every sample exactly once across ranks, in order, no padding."""

    def __init__(self, n: int, batch: int, *, rank: int, world_size: int) -> None:
        self.indices = list(range(rank, n, world_size))
        self.batch = batch

    def __len__(self) -> int:
        return -(-len(self.indices) // self.batch)

    def __iter__(self) -> Iterator[list[int]]:
        for start in range(0, len(self.indices), self.batch):
            yield self.indices[start:start + self.batch]
