"""Many runtimes × models timed side by side: images/s, median and p95 latency, peak memory.

Every variant is activated once, then warmed up at each batch size one after another,
each step with freed heap handed back to the OS and the process's peak RSS reset first, so
the memory a variant adds (its weights, its runtime's packed copies, its working memory) is
read off on its own; then all variants run round-robin, the order rotating each round, so
the machine's drifting load falls on all of them alike. A variant that fails to start
(``torch.compile`` without a compiler, say) becomes a row saying why, not a missing row.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from polygraphy.backend.base import BaseRunner

from m2pt_deploy.heap import release_freed_memory
from m2pt_deploy.progress import tracked
from m2pt_deploy.runtime.runners import quiet_polygraphy

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


def _measured(fn: Callable[[], None], clock: Callable[[], float]) -> tuple[float | None, float]:
    """(MB the process's peak RSS rose above its RSS before ``fn``, seconds ``fn`` took)."""
    release_freed_memory()
    can_track = reset_peak_rss()
    before = rss_mb()
    t0 = clock()
    fn()
    seconds = clock() - t0
    peak = peak_rss_mb()
    if not can_track or peak is None or before is None:
        return None, seconds
    return max(0.0, peak - before), seconds


Started = dict[tuple[str, int], tuple[float | None, float | None, str | None]]


def run_variants(
    variants: Sequence[Variant],
    feeds: dict[int, dict[str, np.ndarray]],
    *,
    rounds: int,
    warmup: int,
    log: Callable[[str], None] | None = None,
    clock: Callable[[], float] | None = None,
) -> tuple[dict[int, dict[str, list[float]]], Started]:
    """Activate every variant once, then per batch: warm each up, then run all round-robin.

    Returns ``({batch: {key: [seconds per round]}}, {(key, batch): (peak MB, start-up s, error)})``.
    Peak MB: what activation added (weights, packed copies) plus ``resident_bytes`` plus the
    peak above that during this batch's warm-up. Start-up: activation (first batch only) plus
    warm-up, so a compiler's or an arena's first-run cost shows.
    """
    import time

    say = log or (lambda _: None)
    tick = clock or time.perf_counter
    started: Started = {}
    times: dict[int, dict[str, list[float]]] = {}
    with quiet_polygraphy(), contextlib.ExitStack() as stack:
        resident: dict[str, tuple[float | None, float]] = {}
        for v in variants:
            say(f"starting {v.key}")
            try:
                mb, seconds = _measured(lambda v=v: stack.enter_context(v.runner), tick)  # type: ignore[misc]
            except Exception as e:  # a runtime's own failure is a result, reported in its rows
                for batch in feeds:
                    started[(v.key, batch)] = (None, None, _error_line(e))
                say(f"{v.key} failed: {_error_line(e)}")
                continue
            resident[v.key] = (None if mb is None else mb + v.resident_bytes / 2**20, seconds)
        for i, (batch, feed) in enumerate(feeds.items()):
            live = [v for v in variants if v.key in resident and started.get((v.key, batch)) is None]
            say(f"batch {batch}: warming up {len(live)} variants")
            ok = []
            for v in live:
                try:
                    mb, seconds = _measured(lambda v=v, f=feed: _warm(v.runner, f, warmup), tick)  # type: ignore[misc]
                except Exception as e:
                    started[(v.key, batch)] = (None, None, _error_line(e))
                    say(f"{v.key} failed at batch {batch}: {_error_line(e)}")
                    continue
                base, activation = resident[v.key]
                peak = None if base is None or mb is None else base + mb
                started[(v.key, batch)] = (peak, seconds + (activation if i == 0 else 0.0), None)
                ok.append(v)
            say(f"batch {batch}: {rounds} interleaved rounds of {len(ok)} variants")
            times[batch] = _rounds(ok, feed, rounds)
    return times, started


def _warm(runner: BaseRunner, feed: dict[str, np.ndarray], warmup: int) -> None:
    for _ in range(max(1, warmup)):
        runner.infer(feed, check_inputs=False)


def _rounds(live: Sequence[Variant], feed: dict[str, np.ndarray], rounds: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {v.key: [] for v in live}
    for i in tracked(range(rounds), "rounds"):
        shift = i % max(1, len(live))
        for v in [*live[shift:], *live[:shift]]:
            v.runner.infer(feed, check_inputs=False)
            times[v.key].append(float(v.runner.last_inference_time()))
    return times


def paired_ratio(numerator: Sequence[float], denominator: Sequence[float]) -> tuple[float, float, float]:
    """Median and interquartile range of per-round ratios (same round, same machine state)."""
    r = np.asarray(numerator, float) / np.asarray(denominator, float)
    return float(np.median(r)), float(np.percentile(r, 25)), float(np.percentile(r, 75))


def rows_for_batch(
    variants: Sequence[Variant],
    batch: int,
    times: dict[str, list[float]],
    started: Started,
    *,
    eager_runtime: str,
) -> list[ThroughputRow]:
    """One row per variant; ``vs_eager``: per-round eager time / this time, same model."""
    rows = []
    for v in variants:
        peak, start, error = started.get((v.key, batch), (None, None, "not run"))
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
