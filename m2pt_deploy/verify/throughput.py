"""Many runtimes × models timed side by side: images/s, median and p95 latency, peak memory.

Every variant is activated and warmed up one after another, each with the process's peak
RSS reset first, so the memory a variant adds (its weights, its runtime's packed copies,
its working memory) is read off on its own; then all variants run round-robin, the order
rotating each round (:func:`interleaved_times`), so the machine's drifting load falls on
all of them alike. A variant that fails to start (``torch.compile`` without a compiler,
say) becomes a row saying why, not a missing row.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from polygraphy.backend.base import BaseRunner

from m2pt_deploy.verify.runners import quiet_polygraphy

__all__ = [
    "ThroughputRow",
    "Variant",
    "paired_ratio",
    "peak_rss_mb",
    "reset_peak_rss",
    "rss_mb",
    "run_variants",
]


@dataclasses.dataclass(frozen=True)
class Variant:
    """One runtime running one model. ``resident_bytes``: memory it holds before activation
    (a torch module's parameters), counted into its peak."""

    runtime: str
    model: str
    runner: BaseRunner
    resident_bytes: int = 0

    @property
    def key(self) -> str:
        return f"{self.runtime} / {self.model}"


@dataclasses.dataclass(frozen=True)
class ThroughputRow:
    runtime: str
    model: str
    batch: int
    images_per_s: float | None
    median_ms: float | None
    p95_ms: float | None
    peak_mb: float | None
    start_s: float | None
    vs_eager: float | None = None
    vs_eager_p25: float | None = None
    vs_eager_p75: float | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _status_kb(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return float(line.split()[1])
    except OSError:
        return None
    return None


def rss_mb() -> float | None:
    kb = _status_kb("VmRSS")
    return None if kb is None else kb / 1024


def peak_rss_mb() -> float | None:
    kb = _status_kb("VmHWM")
    return None if kb is None else kb / 1024


def reset_peak_rss() -> bool:
    """Linux: writing 5 to clear_refs resets VmHWM to the current RSS."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _error_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[-1] if text else ''}"[:300]


def _start(variant: Variant, feed: dict[str, np.ndarray], warmup: int, stack: contextlib.ExitStack,
           clock: Callable[[], float]) -> tuple[float | None, float]:
    """Activate and warm up; returns (peak MB it added, start-up seconds incl. the first run)."""
    can_track = reset_peak_rss()
    before = rss_mb()
    t0 = clock()
    stack.enter_context(variant.runner)
    for _ in range(max(1, warmup)):
        variant.runner.infer(feed, check_inputs=False)
    start = clock() - t0
    peak = peak_rss_mb()
    if not can_track or peak is None or before is None:
        return None, start
    return peak - before + variant.resident_bytes / 2**20, start


def run_variants(
    variants: Sequence[Variant],
    feed: dict[str, np.ndarray],
    *,
    rounds: int,
    warmup: int,
    log: Callable[[str], None] | None = None,
    clock: Callable[[], float] | None = None,
) -> tuple[dict[str, list[float]], dict[str, tuple[float | None, float | None, str | None]]]:
    """``({key: [seconds per round]}, {key: (peak MB, start-up s, error)})`` for every variant."""
    import time

    say = log or (lambda _: None)
    tick = clock or time.perf_counter
    started: dict[str, tuple[float | None, float | None, str | None]] = {}
    live: list[Variant] = []
    times: dict[str, list[float]] = {}
    with quiet_polygraphy(), contextlib.ExitStack() as stack:
        for v in variants:
            say(f"starting {v.key}")
            try:
                peak, start = _start(v, feed, warmup, stack, tick)
            except Exception as e:  # a runtime's own failure is a result, reported in the row
                started[v.key] = (None, None, _error_line(e))
                say(f"{v.key} failed: {started[v.key][2]}")
                continue
            started[v.key] = (peak, start, None)
            live.append(v)
            times[v.key] = []
        for i in range(rounds):
            shift = i % max(1, len(live))
            for v in live[shift:] + live[:shift]:
                v.runner.infer(feed, check_inputs=False)
                times[v.key].append(float(v.runner.last_inference_time()))
    return times, started


def paired_ratio(numerator: Sequence[float], denominator: Sequence[float]) -> tuple[float, float, float]:
    """Median and interquartile range of per-round ratios (same round, same machine state)."""
    r = np.asarray(numerator, float) / np.asarray(denominator, float)
    return float(np.median(r)), float(np.percentile(r, 25)), float(np.percentile(r, 75))


def rows_for_batch(
    variants: Sequence[Variant],
    batch: int,
    times: dict[str, list[float]],
    started: dict[str, tuple[float | None, float | None, str | None]],
    *,
    eager_runtime: str,
) -> list[ThroughputRow]:
    """One row per variant; ``vs_eager``: per-round eager time / this time, same model."""
    rows = []
    for v in variants:
        peak, start, error = started[v.key]
        t = times.get(v.key)
        if error is not None or not t:
            rows.append(ThroughputRow(v.runtime, v.model, batch, None, None, None, peak, start, error=error))
            continue
        arr = np.asarray(t)
        eager = times.get(f"{eager_runtime} / {v.model}")
        ratio = paired_ratio(eager, t) if eager else (None, None, None)
        rows.append(ThroughputRow(
            v.runtime, v.model, batch, images_per_s=batch / float(np.median(arr)),
            median_ms=float(np.median(arr)) * 1e3, p95_ms=float(np.percentile(arr, 95)) * 1e3,
            peak_mb=peak, start_s=start, vs_eager=ratio[0], vs_eager_p25=ratio[1], vs_eager_p75=ratio[2],
        ))
    return rows
