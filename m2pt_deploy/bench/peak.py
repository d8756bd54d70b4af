"""What the hardware can do, measured in the same run as the models: a throughput figure
means little without the machine's matrix-multiply peak beside it."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from polygraphy.backend.base import BaseRunner
from polygraphy.common import TensorMetadata
from torch import nn

__all__ = ["PEAK_SIZE", "MatmulPeakRunner", "add_peak_fractions", "forward_gflop", "matmul_peak_gflops"]

#: The square fp32 matmul timed in every round of m2pt-bench (a 2048² mm: 17.2 GFLOP).
PEAK_SIZE = 2048


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


class MatmulPeakRunner(BaseRunner):
    """``repeats`` ``n × n`` fp32 ``torch.mm`` per ``infer`` on ``threads`` threads, the fastest
    one's time reported: timed among the models in every round of an interleaved run, so each
    round's fraction of peak is read against the peak of that same round (the machine's load
    drifts; a peak measured once does not follow it). The fastest of a few, because one short
    product on a shared machine can land in a busy moment, and a peak that understates makes a
    fraction above 100%. ``infer`` ignores its feed."""

    def __init__(self, *, n: int = PEAK_SIZE, repeats: int = 3, threads: int | None = None,
                 name: str = "fp32-matmul-peak") -> None:
        super().__init__(name=name, prefix="matmul-peak")
        self.n, self.repeats, self.threads = n, repeats, threads

    @property
    def gflop(self) -> float:
        return 2 * self.n**3 / 1e9

    def activate_impl(self) -> None:
        gen = torch.Generator().manual_seed(0)
        self.a = torch.randn(self.n, self.n, generator=gen)
        self.b = torch.randn(self.n, self.n, generator=gen)

    def get_input_metadata_impl(self) -> TensorMetadata:
        return TensorMetadata()

    def infer_impl(self, feed_dict: dict[str, np.ndarray]) -> OrderedDict[str, np.ndarray]:
        previous = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)
        try:
            runs = []
            for _ in range(self.repeats):
                start = time.perf_counter()
                torch.mm(self.a, self.b)
                runs.append(time.perf_counter() - start)
            self.inference_time = min(runs)
        finally:
            torch.set_num_threads(previous)
        return OrderedDict()

    def deactivate_impl(self) -> None:
        del self.a, self.b


def add_peak_fractions(rows: Sequence[dict[str, Any]], times: Mapping[str, Sequence[float]],
                       peak_times: Sequence[float], *, gflop: float | None, peak_gflop: float) -> list[float]:
    """Set each row's ``peak_fraction`` (with its p25 and p75): per round, the row's GFLOP/s over the
    peak's GFLOP/s in that same round (``peak_times``: a :class:`MatmulPeakRunner`'s seconds per round,
    ``peak_gflop`` its FLOPs), then the median. ``times``: ``{"runtime / model": seconds per round}``.
    Returns the rounds' peaks in GFLOP/s."""
    peaks = [peak_gflop / t for t in peak_times]
    for row in rows:
        t = times.get(f"{row['runtime']} / {row['model']}")
        row["peak_fraction"] = row["peak_fraction_p25"] = row["peak_fraction_p75"] = None
        if not t or not peaks or not gflop or row["error"] is not None:
            continue
        fractions = np.asarray([row["batch"] * gflop / ti / p for ti, p in zip(t, peaks, strict=True)])
        row["peak_fraction"] = float(np.median(fractions))
        row["peak_fraction_p25"], row["peak_fraction_p75"] = (float(np.percentile(fractions, q)) for q in (25, 75))
    return peaks
