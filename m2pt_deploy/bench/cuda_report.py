"""The GPU benchmark's timings as rows, paired ratios, Markdown and two files.

Pure functions of seconds-per-round lists: nothing here touches a GPU, so every figure the
report shows can be checked on synthetic timings.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from m2pt_deploy.bench.throughput import paired_ratio
from m2pt_deploy.errors import M2ptError
from m2pt_deploy.fileio import atomic_output

__all__ = ["MODELS", "CudaRatio", "CudaRow", "cell_ratio", "cell_rows", "failed_rows", "markdown", "write_report"]

MODELS = ("vanilla", "merged", "unmerged")
JSON_NAME, MD_NAME = "bench-cuda.json", "bench-cuda.md"


@dataclasses.dataclass(frozen=True)
class CudaRow:
    """One model at one (runtime, dtype, batch): latency from its per-round seconds."""

    runtime: str
    dtype: str
    batch: int
    model: str
    images_per_s: float | None
    median_ms: float | None
    p95_ms: float | None
    start_s: float | None = None
    params_mb: float | None = None
    work_mb: float | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class CudaRatio:
    """Per-round latency ratios in one cell: median with p25–p75, and the output check."""

    runtime: str
    dtype: str
    batch: int
    rounds: int
    merged_vs_vanilla: tuple[float, float, float] | None
    unmerged_vs_merged: tuple[float, float, float] | None
    max_abs_diff: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def cell_rows(
    runtime: str,
    dtype: str,
    batch: int,
    times: Mapping[str, Sequence[float]],
    *,
    start_s: Mapping[str, float] | None = None,
    params_mb: Mapping[str, float] | None = None,
    work_mb: Mapping[str, float | None] | None = None,
) -> list[CudaRow]:
    """One row per model in ``times`` (seconds per round): images/s from the median latency."""
    rows = []
    for model, seconds in times.items():
        arr = np.asarray(seconds, dtype=float)
        median = float(np.median(arr))
        rows.append(CudaRow(
            runtime, dtype, batch, model, images_per_s=batch / median, median_ms=median * 1e3,
            p95_ms=float(np.percentile(arr, 95)) * 1e3, start_s=(start_s or {}).get(model),
            params_mb=(params_mb or {}).get(model), work_mb=(work_mb or {}).get(model),
        ))
    return rows


def failed_rows(runtime: str, dtype: str, batch: int, error: str) -> list[CudaRow]:
    return [CudaRow(runtime, dtype, batch, m, None, None, None, error=error) for m in MODELS]


def cell_ratio(
    runtime: str, dtype: str, batch: int, times: Mapping[str, Sequence[float]], *, max_abs_diff: float | None = None
) -> CudaRatio:
    """merged / vanilla and unmerged / merged, each the median of same-round ratios."""

    def ratio(num: str, den: str) -> tuple[float, float, float] | None:
        return paired_ratio(times[num], times[den]) if times.get(num) and times.get(den) else None

    rounds = min((len(t) for t in times.values()), default=0)
    return CudaRatio(runtime, dtype, batch, rounds, ratio("merged", "vanilla"), ratio("unmerged", "merged"),
                     max_abs_diff)


def _ratio(r: Sequence[float] | None) -> str:
    return "—" if r is None else f"{r[0]:.3f} ({r[1]:.3f}–{r[2]:.3f})"


def _f(value: float | None, fmt: str) -> str:
    return "—" if value is None else format(value, fmt)


def _ms(value: float | None) -> str:
    return "—" if value is None else (f"{value:.0f}" if value >= 100 else f"{value:.3g}")


def _header(data: Mapping[str, Any]) -> Iterator[str]:
    m, g, s, spec = data["machine"], data["gpu"], data["settings"], data["spec"]
    model = f"{spec['arch']} {spec['model_kwargs']}" if spec["model_kwargs"] else spec["arch"]
    if g is None:
        yield f"GPU: none; this run was on {s['device']} (a test of the benchmark, not a GPU figure)."
    else:
        yield (f"GPU: {g['name']} ({g['memory_gib']:.0f} GiB, {g['multiprocessors']} SMs, compute capability "
               f"{g['capability']}); torch {g['torch']}, CUDA {g['cuda']}, cuDNN {g['cudnn']}; fp32 matmul precision "
               f"'{g['float32_matmul_precision']}' (TF32 matmul {'on' if g['tf32_matmul'] else 'off'}).")
    flags = f" ({' '.join(m['cpu_flags'])})" if m.get("cpu_flags") else ""
    yield (f"Host: {m['cpu']}{flags}, {m['usable_cpus']} usable of {m['logical_cpus']} logical CPUs, {m['platform']}; "
           f"Python {m['python']}, timm {m['versions'].get('timm', '?')}.")
    yield (f"Model: {model}, input {'x'.join(map(str, spec['input_size']))}; {s['rounds']} interleaved rounds "
           f"after {s['warmup']} warm-up runs per model, per (runtime, dtype, batch).")
    if not data.get("complete", True):
        yield f"**Incomplete run: {data['cells_done']} of {data['cells_total']} cells measured.**"


def _summary(data: Mapping[str, Any]) -> Iterator[str]:
    rows = {(r["runtime"], r["dtype"], r["batch"], r["model"]): r for r in data["rows"]}
    yield ("| runtime | dtype | batch | vanilla img/s | merged img/s | unmerged img/s | merged / vanilla "
           "(p25–p75) | unmerged / merged (p25–p75) | max abs diff merged vs unmerged |")
    yield "|---|---|---|---|---|---|---|---|---|"
    for c in data["ratios"]:
        key = (c["runtime"], c["dtype"], c["batch"])
        ips = [rows.get((*key, m), {}).get("images_per_s") for m in MODELS]
        yield (f"| {c['runtime']} | {c['dtype']} | {c['batch']} | " + " | ".join(_f(v, ".1f") for v in ips)
               + f" | {_ratio(c['merged_vs_vanilla'])} | {_ratio(c['unmerged_vs_merged'])} | "
               f"{_f(c['max_abs_diff'], '.2e')} |")


def _detail(data: Mapping[str, Any]) -> Iterator[str]:
    yield "| runtime | dtype | batch | model | median ms | p95 ms | start-up s | params MB | working MB |"
    yield "|---|---|---|---|---|---|---|---|---|"
    for r in data["rows"]:
        head = f"| {r['runtime']} | {r['dtype']} | {r['batch']} | {r['model']} |"
        if r["error"]:
            yield f"{head} failed: {r['error']} | | | | |"
            continue
        yield (f"{head} {_ms(r['median_ms'])} | {_ms(r['p95_ms'])} | {_f(r['start_s'], '.2f')} | "
               f"{_f(r['params_mb'], '.0f')} | {_f(r['work_mb'], '.0f')} |")


def markdown(data: Mapping[str, Any]) -> str:
    return "\n".join([*_header(data), "", *_summary(data), "", *_detail(data)]) + "\n"


def write_report(data: Mapping[str, Any], out_dir: str | os.PathLike[str]) -> tuple[Path, Path]:
    """``bench-cuda.json`` and ``bench-cuda.md`` in ``out_dir`` (created), each written atomically."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise M2ptError("--out must be a directory", out)
    out.mkdir(parents=True, exist_ok=True)
    paths = out / JSON_NAME, out / MD_NAME
    with atomic_output(paths[0], force=True) as tmp:
        tmp.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n")
    with atomic_output(paths[1], force=True) as tmp:
        tmp.write_text(markdown(data))
    return paths
