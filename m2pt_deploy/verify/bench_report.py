"""The benchmark's dict as a Markdown table, a goal check, a PNG chart and three files."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from m2pt_deploy.errors import M2ptError
from m2pt_deploy.fileio import atomic_output
from m2pt_deploy.verify.machine import machine_line

__all__ = ["goals", "markdown", "write_chart", "write_report"]

_ORDER = ("torch eager", "torch.compile", "ONNX Runtime", "ONNX Runtime optimized", "ONNX Runtime int8")


def _f(value: float | None, fmt: str = ".2f") -> str:
    return "—" if value is None else format(value, fmt)


def _ms(value: float) -> str:
    return f"{value:.0f}" if value >= 100 else f"{value:.3g}"


def _row(r: dict[str, Any]) -> str:
    if r["error"]:
        return f"| {r['runtime']} | {r['model']} | {r['batch']} | failed: {r['error']} | | | | | |"
    ratio = "1 (baseline)" if r["runtime"] == "torch eager" else (
        f"{r['vs_eager']:.2f} ({r['vs_eager_p25']:.2f}–{r['vs_eager_p75']:.2f})" if r["vs_eager"] else "—")
    return (f"| {r['runtime']} | {r['model']} | {r['batch']} | {r['images_per_s']:.2f} | {_ms(r['median_ms'])} | "
            f"{_ms(r['p95_ms'])} | {_f(r['peak_mb'], '.0f')} | {_f(r['start_s'], '.2f')} | {ratio} |")


def _find(data: dict[str, Any], runtime: str, model: str, batch: int) -> dict[str, Any] | None:
    return next((r for r in data["rows"] if (r["runtime"], r["model"], r["batch"]) == (runtime, model, batch)
                 and not r["error"]), None)


def _comparison(data: dict[str, Any], runtime: str, batch: int, cand: str, base: str) -> dict[str, Any] | None:
    return next((c for c in data["comparisons"] if (c["runtime"], c["batch"], c["candidate"], c["baseline"])
                 == (runtime, batch, cand, base)), None)


def goals(data: dict[str, Any]) -> list[dict[str, Any]]:
    """Each goal of the performance issue with its measured figure; ``met`` is None when not measured."""
    out: list[dict[str, Any]] = []
    peak, gflop = data["machine"]["fp32_matmul_peak_gflops"], data["settings"]["gflop_per_image"]
    for b in data["settings"]["batches"]:
        fast = _find(data, "ONNX Runtime optimized", "merged", b)
        out.append(_goal(f"ONNX Runtime optimized ≥ 1.25× torch eager, batch {b}", fast["vs_eager"] if fast else None,
                         lambda v: v >= 1.25, "{:.2f}×"))
        efficiency = fast["images_per_s"] * gflop / peak if fast else None
        out.append(_goal(f"ONNX Runtime optimized within 10% of the fp32 matmul peak, batch {b}", efficiency,
                         lambda v: v >= 0.9, "{:.0%} of peak"))
    last = max(data["settings"]["batches"])
    int8, fp32 = _find(data, "ONNX Runtime int8", "merged", last), _find(data, "ONNX Runtime optimized", "merged", last)
    speedup = int8["images_per_s"] / fp32["images_per_s"] if int8 and fp32 else None
    out.append(_goal(f"int8 ≥ 3× ONNX Runtime fp32 (optimized), batch {last}", speedup, lambda v: v >= 3.0,
                     "{:.2f}×"))
    agreement = data.get("int8_agreement") or {}
    out.append(_goal("int8 top-1 agreement with fp32 ≥ 99% (photo tiles)", agreement.get("top1_rate"),
                     lambda v: v >= 0.99, "{:.1%}"))
    accuracy = data.get("accuracy")
    out.append(_goal("int8 accuracy delta on real labelled images reported", accuracy["delta"] if accuracy else None,
                     lambda v: True, "{:+.2%}"))
    for c in data["comparisons"]:
        if (c["candidate"], c["baseline"]) == ("merged", "vanilla"):
            out.append(_goal(f"merged / vanilla latency 1.00 ± 0.03, {c['runtime']}, batch {c['batch']}", c["ratio"],
                             lambda v: abs(v - 1.0) <= 0.03, "{:.3f}"))
    for label, cost in data["export"]["commands"].items():
        out.append(_goal(f"m2pt-export ({label}) ≤ 30 s", cost["wall_s"], lambda v: v <= 30, "{:.1f} s"))
        out.append(_goal(f"m2pt-export ({label}) peak RSS ≤ 4 GB", cost["peak_rss_mb"], lambda v: v <= 4096,
                         "{:.0f} MB"))
    return out


def _goal(what: str, value: float | None, test: Any, fmt: str) -> dict[str, Any]:
    if value is None:
        return {"goal": what, "value": None, "shown": "not measured", "met": None}
    return {"goal": what, "value": value, "shown": fmt.format(value), "met": bool(test(value))}


def _lines(data: dict[str, Any]) -> Iterator[str]:
    m, s = data["machine"], data["settings"]
    spec = data["spec"]
    model = f"{spec['arch']} {spec['model_kwargs']}" if spec["model_kwargs"] else spec["arch"]
    yield f"Machine: {machine_line(m)}; {m['physical_cores']} physical cores (ONNX Runtime threads)."
    yield (f"Load average before / after: {m['load_average_before']} / {m['load_average_after']}. "
           f"fp32 matmul peak measured in this run: {m['fp32_matmul_peak_gflops']:.0f} GFLOP/s.")
    yield (f"Model: {model}, input {'x'.join(map(str, spec['input_size']))}, {s['gflop_per_image']:.1f} GFLOP "
           f"per image; {s['rounds']} interleaved rounds after {s['warmup']} warm-up runs per variant.")
    yield ""
    yield ("| runtime | model | batch | images/s | median ms | p95 ms | peak MB | start-up s | "
           "× torch eager (p25–p75) |")
    yield "|---|---|---|---|---|---|---|---|---|"
    rank = {name: i for i, name in enumerate(_ORDER)}
    for r in sorted(data["rows"], key=lambda r: (r["batch"], rank.get(r["runtime"], 9))):
        yield _row(r)
    yield ""
    yield "| runtime | batch | compared | candidate ms | baseline ms | median ratio (p25–p75) |"
    yield "|---|---|---|---|---|---|"
    for c in data["comparisons"]:
        yield (f"| {c['runtime']} | {c['batch']} | {c['candidate']} / {c['baseline']} | {_ms(c['candidate_ms'])} | "
               f"{_ms(c['baseline_ms'])} | {c['ratio']:.3f} ({c['ratio_p25']:.3f}–{c['ratio_p75']:.3f}) |")
    yield from _export_lines(data)
    yield ""
    yield "| goal | measured | met |"
    yield "|---|---|---|"
    for g in goals(data):
        yield f"| {g['goal']} | {g['shown']} | {'—' if g['met'] is None else ('yes' if g['met'] else 'no')} |"


def _export_lines(data: dict[str, Any]) -> Iterator[str]:
    e = data["export"]
    yield ""
    for cost in e["commands"].values():
        status = "" if cost["returncode"] == 0 else f" (exit {cost['returncode']}: {cost['stderr_tail']})"
        yield f"- `{cost['command']}`: {cost['wall_s']:.1f} s wall, peak RSS {cost['peak_rss_mb']:.0f} MB{status}."
    seconds = ", ".join(f"{k} {v:.1f} s" for k, v in e["in_process_seconds"].items())
    yield f"- In-process steps: {seconds}."
    startup = ", ".join(f"{k} {v:.3f} s" for k, v in e["session_startup_s"].items())
    yield f"- Session start-up (merged file; the optimized ones load with graph optimization off): {startup}."
    for runtime, diffs in e["graph_differences_merged_vs_vanilla"].items():
        yield f"- {runtime} graphs, merged vs vanilla: {'; '.join(diffs[:3]) if diffs else 'structurally identical'}."
    if data.get("int8_agreement"):
        a = data["int8_agreement"]
        cosine = f", min cosine of logits {a['cosine']:.4f}" if a.get("cosine") is not None else ""
        yield f"- int8 vs fp32 (torch merged) on {a['images']} {a['source']}: {a['line']}{cosine}."
    if data.get("accuracy"):
        a = data["accuracy"]
        yield (f"- Accuracy on {a['images']} held-out {a['dataset']} images ({a['model']}): fp32 "
               f"{a['fp32_top1']:.2%}, int8 {a['int8_top1']:.2%}, delta {a['delta']:+.2%}, agreement "
               f"{a['agreement']:.2%}.")


def markdown(data: dict[str, Any]) -> str:
    return "\n".join(_lines(data)) + "\n"


def write_chart(data: dict[str, Any], path: Path) -> None:
    """Images/s per runtime and model, one panel per batch size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batches = data["settings"]["batches"]
    fig, axes = plt.subplots(1, len(batches), figsize=(6 * len(batches), 4.5), squeeze=False)
    models = ("vanilla", "merged", "unmerged")
    for ax, b in zip(axes[0], batches, strict=True):
        for j, model in enumerate(models):
            values = [(_find(data, rt, model, b) or {}).get("images_per_s") or 0.0 for rt in _ORDER]
            ax.bar([i + (j - 1) * 0.27 for i in range(len(_ORDER))], values, width=0.27, label=model)
        ax.set_xticks(range(len(_ORDER)), [rt.replace("ONNX Runtime", "ORT") for rt in _ORDER], rotation=20)
        ceiling = data["machine"]["fp32_matmul_peak_gflops"] / data["settings"]["gflop_per_image"]
        ax.axhline(ceiling, color="gray", linestyle="--", linewidth=1, label="fp32 matmul peak")
        ax.set_title(f"{data['spec']['arch']}, batch {b}")
        ax.set_ylabel("images/s (median)")
        ax.legend()
    fig.suptitle(data["machine"]["cpu"], fontsize=9)
    fig.tight_layout()
    with atomic_output(path, force=True) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def write_report(data: dict[str, Any], out_dir: str | os.PathLike[str]) -> tuple[Path, Path, Path]:
    """``bench.json``, ``bench.md`` and ``bench.png`` in ``out_dir``, each written atomically."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise M2ptError("--out must be a directory", out)
    out.mkdir(parents=True, exist_ok=True)
    data = {**data, "goals": goals(data)}
    paths = out / "bench.json", out / "bench.md", out / "bench.png"
    with atomic_output(paths[0], force=True) as tmp:
        tmp.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n")
    with atomic_output(paths[1], force=True) as tmp:
        tmp.write_text(markdown(data))
    write_chart(data, paths[2])
    return paths
