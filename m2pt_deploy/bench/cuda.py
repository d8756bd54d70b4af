"""``m2pt-bench --device cuda``: vanilla, merged and unmerged ViTs timed on one GPU.

Each (runtime, dtype, batch) is one *cell*. In a cell the three models are warmed up one
after another, then run in turn for ``rounds`` rounds, the order rotating every round, so
clock and thermal drift fall on all three alike. Each run is timed with CUDA events from an
idle device (synchronized before and after), so a figure is the latency one call sees, launch
overhead included. fp16 and bf16 are ``torch.autocast`` entered per call, as a server would,
so weight casts are paid every call (autocast caches them only inside one context).

Eager cells run first, then ``torch.compile``'s; ``on_cell`` receives the report so far after
every cell, so a run cut short still leaves each finished cell written.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable, Iterator
from typing import Any, Literal

import torch
from torch import Tensor, nn

from m2pt_deploy.bench.cuda_report import MODELS, cell_ratio, cell_rows, failed_rows
from m2pt_deploy.bench.latency import pathway_pair, trained_like
from m2pt_deploy.bench.machine import machine_info
from m2pt_deploy.errors import M2ptError, first_line
from m2pt_deploy.families import ModelSpec
from m2pt_deploy.merge import merge_model
from m2pt_deploy.model.build import build_vanilla
from m2pt_deploy.progress import tracked

__all__ = ["DTYPES", "CudaBenchOptions", "check_cuda", "run_cuda_benchmark"]

Dtype = Literal["fp32", "fp16", "bf16"]
DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}
EAGER, COMPILED = "torch eager", "torch.compile"
Report = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class CudaBenchOptions:
    batches: tuple[int, ...] = (1, 8, 64)
    dtypes: tuple[Dtype, ...] = ("fp32", "fp16", "bf16")
    rounds: int = 30
    warmup: int = 3
    seed: int = 0
    compile: bool = True

    def check(self) -> None:
        if self.rounds < 1 or self.warmup < 0 or not self.batches or min(self.batches) < 1:
            raise M2ptError(f"need rounds >= 1, warmup >= 0 and batches >= 1, got rounds {self.rounds}, "
                            f"warmup {self.warmup}, batches {list(self.batches)}")
        unknown = [d for d in self.dtypes if d not in DTYPES]
        if unknown or not self.dtypes:
            raise M2ptError(f"dtypes must be among {', '.join(DTYPES)}, got {list(self.dtypes)}")


def check_cuda() -> None:
    if not torch.cuda.is_available():
        raise M2ptError("no CUDA device is visible (torch.cuda.is_available() is False)")


def _gpu_info(device: torch.device) -> dict[str, Any]:
    p = torch.cuda.get_device_properties(device)
    return {
        "name": torch.cuda.get_device_name(device), "capability": f"{p.major}.{p.minor}",
        "memory_gib": p.total_memory / 2**30, "multiprocessors": p.multi_processor_count,
        "torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
    }


def _models(spec: ModelSpec, seed: int, device: torch.device) -> dict[str, nn.Module]:
    """The pathway model with random λ, its merge, and an unrelated vanilla ViT (same shapes)."""
    unmerged = pathway_pair(spec, seed=seed)
    merged = merge_model(unmerged, spec)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        vanilla = trained_like(build_vanilla(spec))
    models = {"vanilla": vanilla, "merged": merged, "unmerged": unmerged}
    return {name: m.eval().to(device) for name, m in models.items()}


def _params_mb(model: nn.Module) -> float:
    return sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers())) / 2**20


@contextlib.contextmanager
def _recompiles_allowed(limit: int) -> Iterator[None]:
    """Every (model, dtype, batch) is its own static graph: raise dynamo's recompile limit so
    none silently falls back to eager, and make hitting it an error rather than a slow row."""
    import torch._dynamo

    config = torch._dynamo.config
    wanted = {"recompile_limit": limit, "accumulated_recompile_limit": max(256, 4 * limit),
              "fail_on_recompile_limit_hit": True}
    with config.patch({k: v for k, v in wanted.items() if hasattr(config, k)}):
        yield


class _Clock:
    """Seconds per call: CUDA events on a GPU, the host clock elsewhere (tests on CPU)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def time(self, fn: Callable[[], Tensor]) -> tuple[float, Tensor]:
        self.sync()
        if not self.cuda:
            t0 = time.perf_counter()
            out = fn()
            return time.perf_counter() - t0, out
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        out = fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3, out

    def reset_peak(self) -> float | None:
        if not self.cuda:
            return None
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated() / 2**20

    def peak_above(self, before: float | None) -> float | None:
        return None if before is None else torch.cuda.max_memory_allocated() / 2**20 - before


def _caller(model: nn.Module | Callable[[Tensor], Tensor], device: torch.device,
            dtype: torch.dtype | None) -> Callable[[Tensor], Tensor]:
    def run(x: Tensor) -> Tensor:
        cast = torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
        with cast:
            return model(x)

    return run


@dataclasses.dataclass
class _CellResult:
    times: dict[str, list[float]]
    start_s: dict[str, float]
    work_mb: dict[str, float | None]
    max_abs_diff: float | None


def _run_cell(calls: dict[str, Callable[[Tensor], Tensor]], x: Tensor, clock: _Clock, *,
              rounds: int, warmup: int) -> _CellResult:
    """Warm each model up (start-up time and working memory), then time them in turn."""
    start_s, work_mb, outputs = {}, {}, {}
    for name, call in calls.items():
        before = clock.reset_peak()
        t0 = time.perf_counter()
        for _ in range(max(1, warmup)):
            outputs[name] = call(x)
        clock.sync()
        start_s[name], work_mb[name] = time.perf_counter() - t0, clock.peak_above(before)
    names = list(calls)
    times: dict[str, list[float]] = {name: [] for name in calls}
    for i in tracked(range(rounds), "rounds"):
        shift = i % len(names)
        for name in names[shift:] + names[:shift]:
            seconds, _ = clock.time(lambda name=name: calls[name](x))  # type: ignore[misc]
            times[name].append(seconds)
    diff = float((outputs["merged"].float() - outputs["unmerged"].float()).abs().max().item())
    # None: the logits overflowed (fp16) or are NaN; JSON has no NaN and the table shows "—".
    return _CellResult(times, start_s, work_mb, diff if math.isfinite(diff) else None)


def _cells(options: CudaBenchOptions) -> list[tuple[str, Dtype, int]]:
    runtimes = (EAGER, COMPILED) if options.compile else (EAGER,)
    return [(rt, dt, b) for rt in runtimes for dt in options.dtypes for b in options.batches]


def _compiled(models: dict[str, nn.Module]) -> dict[str, Callable[[Tensor], Tensor]]:
    # One torch.compile per model; each (dtype, batch) then compiles in its cell's warm-up.
    return {name: torch.compile(m, dynamic=False) for name, m in models.items()}  # type: ignore[misc]


def _inputs(spec: ModelSpec, batch: int, seed: int, device: torch.device) -> Tensor:
    gen = torch.Generator(device=device).manual_seed(seed)
    return torch.randn((batch, *spec.input_size), generator=gen, device=device)


def _run(spec: ModelSpec, options: CudaBenchOptions, device: torch.device, *,
         log: Callable[[str], None], on_cell: Callable[[Report], object] | None) -> Report:
    options.check()
    t_start = time.perf_counter()
    log(f"building a random {spec.arch}, a random-λ pathway model and its merge, on {device}")
    models = _models(spec, options.seed, device)
    compiled = _compiled(models) if options.compile else {}
    clock, cells = _Clock(device), _cells(options)
    report: Report = {
        "machine": machine_info(), "gpu": _gpu_info(device) if device.type == "cuda" else None,
        "spec": spec.to_dict(), "settings": {**dataclasses.asdict(options), "device": str(device),
                                             "inputs": "seeded standard normal, float32"},
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "rows": [], "ratios": [], "complete": False, "cells_done": 0, "cells_total": len(cells),
    }
    params = {name: _params_mb(m) for name, m in models.items()}
    with torch.inference_mode(), _recompiles_allowed(4 * len(cells)):
        for runtime, dtype, batch in cells:
            log(f"{runtime}, {dtype}, batch {batch}: {options.rounds} rounds of {', '.join(MODELS)}")
            source = compiled if runtime == COMPILED else models
            calls = {name: _caller(source[name], device, DTYPES[dtype]) for name in MODELS}
            _measure_cell(report, (runtime, dtype, batch), calls, _inputs(spec, batch, options.seed, device),
                          clock, options, params, log)
            report["cells_done"] += 1
            report["elapsed_s"] = time.perf_counter() - t_start
            if on_cell is not None:
                on_cell(report)
    report["complete"] = True
    return report


def _measure_cell(report: Report, cell: tuple[str, str, int], calls: dict[str, Callable[[Tensor], Tensor]],
                  x: Tensor, clock: _Clock, options: CudaBenchOptions, params: dict[str, float],
                  log: Callable[[str], None]) -> None:
    runtime, dtype, batch = cell
    try:
        r = _run_cell(calls, x, clock, rounds=options.rounds, warmup=options.warmup)
    except Exception as e:  # a failing cell (a compiler error, out of memory) is a result, not the end
        log(f"{runtime}, {dtype}, batch {batch} failed: {first_line(e)}")
        report["rows"] += [row.to_dict() for row in failed_rows(runtime, dtype, batch, first_line(e)[:300])]
        if clock.cuda:
            torch.cuda.empty_cache()
        return
    rows = cell_rows(runtime, dtype, batch, r.times, start_s=r.start_s, params_mb=params, work_mb=r.work_mb)
    report["rows"] += [row.to_dict() for row in rows]
    report["ratios"].append(cell_ratio(runtime, dtype, batch, r.times, max_abs_diff=r.max_abs_diff).to_dict())


def run_cuda_benchmark(spec: ModelSpec, options: CudaBenchOptions | None = None, *,
                       log: Callable[[str], None] | None = None,
                       on_cell: Callable[[Report], object] | None = None) -> Report:
    """Time vanilla, merged and unmerged ``spec`` models on the current CUDA device.

    Returns a JSON-ready dict (see :mod:`m2pt_deploy.bench.cuda_report`): ``rows`` per model
    (images/s, median and p95 ms, start-up, memory) and ``ratios`` per cell (merged / vanilla,
    unmerged / merged, and the max abs difference of merged and unmerged logits).
    """
    check_cuda()
    return _run(spec, options or CudaBenchOptions(), torch.device("cuda", torch.cuda.current_device()),
                log=log or (lambda _: None), on_cell=on_cell)
