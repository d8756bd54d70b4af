"""What the hardware can do, measured in the same run as the models: a throughput figure
means little without the machine's matrix-multiply peak beside it."""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["forward_gflop", "matmul_peak_gflops"]


def matmul_peak_gflops(*, sizes: Sequence[int] = (1024, 2048), repeats: int = 5, dtype: torch.dtype = torch.float32,
                       threads: int | None = None) -> float:
    """Best sustained GFLOP/s of one square ``mm`` over ``sizes`` (the median of ``repeats``)."""
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        best = 0.0
        gen = torch.Generator().manual_seed(0)
        for n in sizes:
            a = torch.randn(n, n, generator=gen).to(dtype)
            b = torch.randn(n, n, generator=gen).to(dtype)
            torch.mm(a, b)
            runs = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                torch.mm(a, b)
                runs.append(time.perf_counter() - t0)
            runs.sort()
            best = max(best, 2 * n**3 / runs[len(runs) // 2] / 1e9)
        return best
    finally:
        torch.set_num_threads(previous)


def forward_gflop(model: nn.Module, input_size: Sequence[int]) -> float:
    """Multiply-add FLOPs (2 per MAC) of one image's forward pass, counted by torch."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, *input_size)
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        model.eval()(x)
    return counter.get_total_flops() / 1e9
