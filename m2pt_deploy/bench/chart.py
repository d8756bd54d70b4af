"""The benchmark chart: images/s per runtime and model, one panel per batch size.

Bars are medians over the interleaved rounds; whiskers span the rounds' interquartile range
(images/s at the 75th and 25th percentile latency), so two bars whose whiskers overlap are
not told apart by this run. The legend sits to the right of the panels, clear of the bars.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from m2pt_deploy.fileio import atomic_output

__all__ = ["MODEL_ORDER", "bench_figure", "write_chart"]

MODEL_ORDER = ("vanilla", "merged", "unmerged", "file")
_RUNTIME_ORDER = ("torch eager", "torch.compile", "ONNX Runtime", "ONNX Runtime optimized", "ONNX Runtime int8")


def _bar(row: Mapping[str, Any] | None, batch: int) -> tuple[float, float, float]:
    """(median images/s, distance down to the p25 figure, up to the p75 figure); NaN (no bar)
    for a variant this run does not have, zeros for one that failed."""
    if row is None:
        return math.nan, math.nan, math.nan
    if row.get("error") or not row.get("images_per_s"):
        return 0.0, 0.0, 0.0
    value = float(row["images_per_s"])
    if not row.get("p25_ms") or not row.get("p75_ms"):
        return value, 0.0, 0.0
    low, high = batch * 1e3 / row["p75_ms"], batch * 1e3 / row["p25_ms"]
    return value, max(0.0, value - low), max(0.0, high - value)


def bench_figure(data: Mapping[str, Any]) -> Any:
    """The chart as a matplotlib Figure (for tests: its containers and legend can be inspected)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = {(r["runtime"], r["model"], r["batch"]): r for r in data["rows"]}
    runtimes = [rt for rt in _RUNTIME_ORDER if any(k[0] == rt for k in rows)]
    models = [m for m in MODEL_ORDER if any(k[1] == m for k in rows)]
    batches = data["settings"]["batches"]
    width = 0.8 / max(1, len(models))
    fig, axes = plt.subplots(1, len(batches), figsize=(max(5.0, 1.1 * len(runtimes) + 1.5) * len(batches) + 1.8, 4.8),
                             squeeze=False, layout="constrained")
    for ax, b in zip(axes[0], batches, strict=True):
        for j, model in enumerate(models):
            bars = [_bar(rows.get((rt, model, b)), b) for rt in runtimes]
            xs = [i + (j - (len(models) - 1) / 2) * width for i in range(len(runtimes))]
            ax.bar(xs, [v for v, _, _ in bars], width=width, label=model, color=f"C{j}",
                   yerr=[[lo for _, lo, _ in bars], [hi for _, _, hi in bars]], capsize=3,
                   error_kw={"elinewidth": 1, "ecolor": "black"})
            for x, rt in zip(xs, runtimes, strict=True):
                row = rows.get((rt, model, b))
                if row is not None and row.get("error"):
                    ax.text(x, 0, "failed", rotation=90, ha="center", va="bottom", fontsize=8)
        gflop = data["settings"].get("gflop_per_image")
        if gflop:
            ax.axhline(data["machine"]["fp32_matmul_peak_gflops"] / gflop, color="gray", linestyle="--", linewidth=1,
                       label="fp32 matmul peak")
        ax.set_xticks(range(len(runtimes)), [rt.replace("ONNX Runtime", "ORT") for rt in runtimes], rotation=20,
                      ha="right")
        ax.set_title(f"{data['spec']['arch']}, batch {b}")
        ax.set_ylabel("samples/s (median)")
    # Models in bar order first, the peak line last (matplotlib lists lines before bars).
    entries = sorted(zip(*axes[0][0].get_legend_handles_labels(), strict=True), key=lambda e: e[1] not in models)
    fig.legend([h for h, _ in entries], [label for _, label in entries], loc="outside right upper")
    fig.suptitle(data["machine"]["cpu"], fontsize=9)
    fig.supxlabel(f"bars: median of {data['settings']['rounds']} interleaved rounds; whiskers: p25–p75 of the "
                  "rounds", fontsize=8)
    return fig


def write_chart(data: Mapping[str, Any], path: Path) -> None:
    fig = bench_figure(data)  # selects the Agg backend before pyplot is imported here
    import matplotlib.pyplot as plt

    with atomic_output(path, force=True) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
