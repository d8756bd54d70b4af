"""The benchmark's dict as Markdown (rows, ratios, accuracy per format, goals) and three files."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from m2pt_deploy.bench.chart import write_chart
from m2pt_deploy.bench.goals import FAMILY_GOALS, PAPER_TITLES, VIT_B16_GOALS, goals, is_vit_b16
from m2pt_deploy.bench.machine import machine_line
from m2pt_deploy.bench.paper import paper_model
from m2pt_deploy.errors import M2ptError
from m2pt_deploy.fileio import atomic_output

__all__ = ["ORDER", "goal_table", "markdown", "write_report"]

ORDER = ("torch eager", "torch.compile", "ONNX Runtime", "ONNX Runtime optimized", "ONNX Runtime int8")


def _f(value: float | None, fmt: str = ".2f") -> str:
    return "—" if value is None else format(value, fmt)


def _ms(value: float) -> str:
    return f"{value:.0f}" if value >= 100 else f"{value:.3g}"


def _row(r: Mapping[str, Any], baseline: str) -> str:
    if r["error"]:
        return f"| {r['runtime']} | {r['model']} | {r['batch']} | failed: {r['error']} | | | | | | |"
    ratio = "1 (baseline)" if r["runtime"] == baseline else (
        f"{r['vs_eager']:.2f} ({r['vs_eager_p25']:.2f}–{r['vs_eager_p75']:.2f})" if r["vs_eager"] else "—")
    peak = "—" if r.get("peak_fraction") is None else \
        f"{r['peak_fraction']:.0%} ({r['peak_fraction_p25']:.0%}–{r['peak_fraction_p75']:.0%})"
    return (f"| {r['runtime']} | {r['model']} | {r['batch']} | {r['images_per_s']:.2f} | {_ms(r['median_ms'])} | "
            f"{_ms(r['p95_ms'])} | {peak} | {_f(r['peak_mb'], '.0f')} | {_f(r['start_s'], '.2f')} | {ratio} |")


def _model_line(data: Mapping[str, Any]) -> str:
    spec, s = data["spec"], data["settings"]
    model = f"{spec['arch']} {spec['model_kwargs']}" if spec["model_kwargs"] else spec["arch"]
    counted = (s.get("flops") or {}).get("counted_from")
    flops = f"{s['gflop_per_image']:.4g} GFLOP per sample" + (f" (counted from {counted})" if counted else "") \
        if s.get("gflop_per_image") else "FLOPs not counted (no plain graph, no torch model of its architecture)"
    return (f"Model: {model}, input {'x'.join(map(str, spec['input_size']))}, {flops}; {s['rounds']} interleaved "
            f"rounds after {s['warmup']} warm-up runs per variant.")


def _subject_lines(data: Mapping[str, Any]) -> Iterator[str]:
    subject = data.get("subject") or {}
    kind = subject.get("kind", "random")
    if kind == "random":
        yield f"Benchmarked: {subject.get('description', 'random weights')} (nothing downloaded)."
    elif kind == "checkpoint":
        yield (f"Benchmarked: {subject['description']}, sha256 {subject['sha256'][:12]}; `vanilla` is the same "
               "architecture with random weights, the latency baseline merging is judged against.")
    else:
        yield (f"Benchmarked: {subject['description']}, sha256 {subject['sha256'][:12]}, in ONNX Runtime only; "
               "rows other than the file's own are copies derived from it in this run.")
    for note in subject.get("notes") or []:
        yield f"Note: {note}."


def _lines(data: Mapping[str, Any]) -> Iterator[str]:
    m, s = data["machine"], data["settings"]
    baseline = s.get("baseline_runtime", "torch eager")
    yield f"Machine: {machine_line(m)}; {m['physical_cores']} physical cores (ONNX Runtime threads)."
    yield (f"Load average before / after: {m['load_average_before']} / {m['load_average_after']}. "
           f"fp32 matmul peak measured in this run: {m['fp32_matmul_peak_gflops']:.0f} GFLOP/s"
           + (f" ({s['peak']})." if s.get("peak") else "."))
    yield _model_line(data)
    yield from _subject_lines(data)
    yield ""
    yield (f"| runtime | model | batch | samples/s | median ms | p95 ms | of fp32 peak (p25–p75) | peak MB | "
           f"start-up s | × {baseline} (p25–p75) |")
    yield "|---|---|---|---|---|---|---|---|---|---|"
    rank = {name: i for i, name in enumerate(ORDER)}
    for r in sorted(data["rows"], key=lambda r: (r["batch"], rank.get(r["runtime"], 9))):
        yield _row(r, baseline)
    if data["comparisons"] or data.get("int8_speedup"):
        yield ""
        yield "| runtime | batch | compared | candidate ms | baseline ms | median ratio (p25–p75) |"
        yield "|---|---|---|---|---|---|"
    for c in data["comparisons"]:
        yield (f"| {c['runtime']} | {c['batch']} | {c['candidate']} / {c['baseline']} | {_ms(c['candidate_ms'])} | "
               f"{_ms(c['baseline_ms'])} | {c['ratio']:.3f} ({c['ratio_p25']:.3f}–{c['ratio_p75']:.3f}) |")
    for x in data.get("int8_speedup") or ():
        yield (f"| ONNX Runtime int8 vs optimized | {x['batch']} | {x['model']}: fp32 / int8 time (speed-up) | | | "
               f"{x['speedup']:.3f} ({x['p25']:.3f}–{x['p75']:.3f}) |")
    yield from _export_lines(data)
    yield from _format_lines(data)
    yield from _goal_lines(data)


def _export_lines(data: Mapping[str, Any]) -> Iterator[str]:
    e = data["export"]
    yield ""
    for cost in e["commands"].values():
        status = "" if cost["returncode"] == 0 else f" (exit {cost['returncode']}: {cost['stderr_tail']})"
        yield f"- `{cost['command']}`: {cost['wall_s']:.1f} s wall, peak RSS {cost['peak_rss_mb']:.0f} MB{status}."
    if e["in_process_seconds"]:
        yield f"- In-process steps: {', '.join(f'{k} {v:.1f} s' for k, v in e['in_process_seconds'].items())}."
    startup = ", ".join(f"{k} {v:.3f} s" for k, v in e["session_startup_s"].items())
    yield f"- Session start-up (the optimized files load with graph optimization off): {startup}."
    for runtime, diffs in e["graph_differences_merged_vs_vanilla"].items():
        yield f"- {runtime} graphs, merged vs vanilla: {'; '.join(diffs[:3]) if diffs else 'structurally identical'}."
    for note in e.get("notes") or []:
        yield f"- {note}."
    if data.get("int8_agreement"):
        a = data["int8_agreement"]
        cosine = f", min cosine of logits {a['cosine']:.4f}" if a.get("cosine") is not None else ""
        yield f"- int8 vs fp32 (torch merged) on {a['images']} {a['source']}: {a['line']}{cosine}."
    if data.get("accuracy"):
        a = data["accuracy"]
        yield (f"- Accuracy on {a['images']} held-out inputs, {a['dataset']} ({a['model']}): fp32 "
               f"{a['fp32_top1']:.2%}, int8 {a['int8_top1']:.2%}, delta {a['delta']:+.2%}, agreement "
               f"{a['agreement']:.2%}.")


def _format_lines(data: Mapping[str, Any]) -> Iterator[str]:
    f = data.get("formats")
    if not f:
        return
    yield ""
    if f["kind"] == "top1":
        yield f"Accuracy per format on {f['source']} (reference for agreement: {f['reference']}):"
    else:
        yield (f"No labelled data (--data), so no accuracy: top-1 agreement of each format with {f['reference']} "
               f"on {f['source']}.")
    yield ""
    yield f"| format | top-1 | top-1 agreement with {f['reference']} | max abs logit difference |"
    yield "|---|---|---|---|"
    for row in f["formats"]:
        top1 = "—" if row["top1"] is None else f"{row['top1']:.2%}"
        yield f"| {row['format']} | {top1} | {row['agreement']:.2%} | {row['max_abs_logit_diff']:.2e} |"


def goal_table(data: Mapping[str, Any]) -> str:
    """The goals that apply to the measured model as a Markdown table, and which were left out."""
    return "\n".join(_goal_lines(data)).strip() + "\n"


def _goal_lines(data: Mapping[str, Any]) -> Iterator[str]:
    yield ""
    yield "| goal | measured | met |"
    yield "|---|---|---|"
    for g in goals(data):
        verdict = g.get("verdict") or ("yes" if g["met"] else "no")
        yield f"| {g['goal']} | {g['shown']} | {'—' if verdict == 'not measured' else verdict} |"
    spec = data.get("spec") or {}
    if not is_vit_b16(spec) and paper_model(spec) not in FAMILY_GOALS:
        yield ""
        what = "a model whose architecture its file does not record" if spec["arch"] == "unknown" else \
            f"{spec['arch']} at {'x'.join(map(str, spec['input_size']))}"
        yield f"Not shown: the ViT-B/16 goals ({VIT_B16_GOALS}); they were set for ViT-B/16 at 3x224x224, " \
            f"this is {what}. Nor the goals of {', '.join(PAPER_TITLES.values())}, set for those sizes."


def markdown(data: Mapping[str, Any]) -> str:
    return "\n".join(_lines(data)) + "\n"


def write_report(data: Mapping[str, Any], out_dir: str | os.PathLike[str]) -> tuple[Path, Path, Path]:
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
