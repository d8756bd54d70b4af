"""``m2pt-bench``: every runtime × model in one interleaved run, on one machine, named.

Rows: torch eager and ``torch.compile`` for the vanilla, merged and unmerged models; ONNX
Runtime plain, optimized (:mod:`m2pt_deploy.export.optimize`) and int8 for the vanilla and
merged exports. Beside them, in the same run: the machine's fp32 matrix-multiply peak, the
model's FLOPs, ``m2pt-export``'s wall time and peak RSS, the merge time, each ONNX file's
session start-up, and int8's top-1 agreement with fp32. Random weights with a random-λ
pathway: nothing is downloaded.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from m2pt_deploy.build import build_vanilla
from m2pt_deploy.checkpoint import PathwayInfo, save_checkpoint
from m2pt_deploy.errors import M2ptError
from m2pt_deploy.export.cpu_int8 import VERIFY_SEED, cpu_int8_onnx, photo_tiles
from m2pt_deploy.export.onnx import INPUT_NAME, export_model, save_onnx
from m2pt_deploy.export.optimize import (
    cpu_session,
    cpu_session_options,
    optimize_onnx,
    physical_cores,
    save_optimized,
)
from m2pt_deploy.merge import merge_model
from m2pt_deploy.pathway import DEFAULT_LAYERS, pathway_state_dict
from m2pt_deploy.verify.cpu_int8 import INT8_CPU, cpu_runner
from m2pt_deploy.verify.export_cost import run_measured
from m2pt_deploy.verify.latency import LatencyComparison, pathway_pair, trained_like
from m2pt_deploy.verify.machine import machine_info
from m2pt_deploy.verify.numerics import compare_runners
from m2pt_deploy.verify.peak import forward_gflop, matmul_peak_gflops
from m2pt_deploy.verify.runners import TorchRunner, seeded_inputs
from m2pt_deploy.verify.structure import graph_signature, structure_differences
from m2pt_deploy.verify.throughput import ThroughputRow, Variant, paired_ratio, rows_for_batch, run_variants
from m2pt_deploy.vit import ModelSpec

__all__ = ["EAGER", "RUNTIMES", "BenchOptions", "run_benchmark"]

EAGER, COMPILED = "torch eager", "torch.compile"
ORT, ORT_OPT, ORT_INT8 = "ONNX Runtime", "ONNX Runtime optimized", "ONNX Runtime int8"
RUNTIMES = (EAGER, COMPILED, ORT, ORT_OPT, ORT_INT8)


@dataclasses.dataclass(frozen=True)
class BenchOptions:
    batches: tuple[int, ...] = (1, 8)
    rounds: int = 10
    warmup: int = 2
    seed: int = 0
    compile: bool = True
    int8: bool = True
    export_cost: bool = True
    calib_images: int = 64
    agreement_images: int = 64

    def check(self) -> None:
        if self.rounds < 1 or self.warmup < 0 or not self.batches or min(self.batches) < 1:
            raise M2ptError(f"need rounds >= 1, warmup >= 0 and batches >= 1, got rounds {self.rounds}, "
                            f"warmup {self.warmup}, batches {list(self.batches)}")
        if self.int8 and (self.calib_images < 1 or self.agreement_images < 1):
            raise M2ptError(f"int8 needs calibration and agreement images, got {self.calib_images} "
                            f"and {self.agreement_images}")


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _param_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))


class _Models:
    """The torch models and ONNX files one run compares, built once."""

    def __init__(self, spec: ModelSpec, options: BenchOptions, tmp: Path, say: Callable[[str], None]) -> None:
        self.spec, self.tmp = spec, tmp
        say(f"building a random {spec.arch} with a random-λ pathway, merging it")
        self.unmerged = pathway_pair(spec, seed=options.seed)
        t0 = time.perf_counter()
        self.merged = merge_model(self.unmerged, spec)
        self.merge_s = time.perf_counter() - t0
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(options.seed + 1)
            self.vanilla = trained_like(build_vanilla(spec, exportable=True))
        # torch rows run timm's default (fused-attention) modules, as merge_model returns them;
        # the ONNX exports use the exportable ones. Same weights either way.
        vanilla_eager = build_vanilla(spec)
        vanilla_eager.load_state_dict(self.vanilla.state_dict())
        self.torch = {"vanilla": vanilla_eager.eval(), "merged": self.merged, "unmerged": self.unmerged}
        self.onnx: dict[str, dict[str, Path]] = {ORT: {}, ORT_OPT: {}, ORT_INT8: {}}
        self.seconds: dict[str, float] = {"merge": self.merge_s}

    def export(self, options: BenchOptions, say: Callable[[str], None]) -> None:
        sources = {"merged": merge_model(self.unmerged, self.spec, exportable=True), "vanilla": self.vanilla}
        tiles = photo_tiles(self.spec.input_size, self.spec.mean, self.spec.std, count=options.calib_images) \
            if options.int8 else None
        for name, model in sources.items():
            say(f"exporting the {name} model: plain, optimized" + (", int8" if options.int8 else ""))
            with self._timed(f"export {name}"):
                proto = export_model(model, self.spec)
            self.onnx[ORT][name] = save_onnx(proto, self.tmp / f"{name}.onnx")
            with self._timed(f"optimize {name}"):
                fast = optimize_onnx(proto)
            self.onnx[ORT_OPT][name] = save_optimized(fast, self.tmp / f"{name}.opt.onnx")
            if tiles is not None:
                with self._timed(f"int8 {name}"):
                    q = cpu_int8_onnx(proto, tiles)
                self.onnx[ORT_INT8][name] = save_optimized(q, self.tmp / f"{name}.int8.onnx")

    @contextlib.contextmanager
    def _timed(self, label: str) -> Iterator[None]:
        t0 = time.perf_counter()
        yield
        self.seconds[label] = time.perf_counter() - t0


def _startup(paths: dict[str, dict[str, Path]], repeats: int = 3) -> dict[str, float]:
    """Median seconds to create each merged file's CPU session, the files taken in turn each
    repeat; the optimized file also the way a server unaware of it would open it
    (re-optimized at load), for comparison."""
    import onnxruntime as ort

    openers: dict[str, Callable[[], Any]] = {}
    for runtime, files in paths.items():
        if "merged" in files:
            openers[runtime] = functools.partial(cpu_session, files["merged"], spinning=False)
    if "merged" in paths.get(ORT_OPT, {}):
        path = paths[ORT_OPT]["merged"]
        options = cpu_session_options(path, spinning=False)
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        openers[f"{ORT_OPT}, re-optimized at load"] = functools.partial(
            ort.InferenceSession, str(path), options, providers=["CPUExecutionProvider"])
    seconds: dict[str, list[float]] = {k: [] for k in openers}
    for _ in range(repeats):
        for key, opener in openers.items():
            seconds[key].append(_seconds(opener))
    return {k: float(np.median(v)) for k, v in seconds.items()}


def _seconds(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _graph_differences(paths: dict[str, dict[str, Path]]) -> dict[str, list[str]]:
    out = {}
    for runtime, files in paths.items():
        if {"merged", "vanilla"} <= set(files):
            out[runtime] = structure_differences(graph_signature(onnx.load(files["merged"])),
                                                 graph_signature(onnx.load(files["vanilla"])))
    return out


def _variants(models: _Models, options: BenchOptions) -> list[Variant]:
    shape = (None, *models.spec.input_size)
    out = [Variant(EAGER, name, TorchRunner(m, shape, name=f"eager-{name}"), _param_bytes(m))
           for name, m in models.torch.items()]
    if options.compile:
        # Static shapes: each batch size compiles once, in its warm-up (shown as start-up).
        out += [Variant(COMPILED, name, TorchRunner(_compiler(m), shape, name=f"compiled-{name}"), _param_bytes(m))
                for name, m in models.torch.items()]
    for runtime, files in models.onnx.items():
        for name, path in files.items():
            out.append(Variant(runtime, name, cpu_runner(path, name=f"{runtime}-{name}", spinning=False)))
    return out


def _compiler(model: nn.Module) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        return torch.compile(model, dynamic=False)  # type: ignore[return-value]

    return build


def _comparisons(batch: int, times: dict[str, list[float]]) -> list[LatencyComparison]:
    pairs = [(rt, "merged", "vanilla") for rt in RUNTIMES] + [(rt, "unmerged", "merged") for rt in (EAGER, COMPILED)]
    out = []
    for runtime, cand, base in pairs:
        c, b = times.get(f"{runtime} / {cand}"), times.get(f"{runtime} / {base}")
        if not c or not b:
            continue
        ratio, p25, p75 = paired_ratio(c, b)
        out.append(LatencyComparison(runtime, batch, cand, base, float(np.median(c)) * 1e3,
                                     float(np.median(b)) * 1e3, ratio, p25, p75, len(c)))
    return out


def _int8_agreement(models: _Models, options: BenchOptions) -> dict[str, Any] | None:
    path = models.onnx[ORT_INT8].get("merged")
    if path is None:
        return None
    spec = models.spec
    x = photo_tiles(spec.input_size, spec.mean, spec.std, count=options.agreement_images, seed=VERIFY_SEED)
    feeds = [{INPUT_NAME: x[i:i + 8]} for i in range(0, len(x), 8)]
    ref = TorchRunner(models.merged, (None, *spec.input_size), name="torch-merged-fp32")
    (result,) = compare_runners([ref, cpu_runner(path, name="onnxrt-int8")], feeds, INT8_CPU, check="int8 cpu")
    return {"images": len(x), "source": "held-out photo tiles (scikit-learn's china.jpg / flower.jpg)",
            "passed": result.passed, "line": str(result), **(result.stats.to_dict() if result.stats else {}),
            "top1_rate": result.stats.top1_rate if result.stats else None}


def _export_costs(models: _Models, tmp: Path, say: Callable[[str], None]) -> dict[str, Any]:
    ckpt = tmp / "pathway.safetensors"
    info = PathwayInfo(DEFAULT_LAYERS, "blocks", "scalar", ({"modality": "random", "sha256": None},))
    save_checkpoint(ckpt, pathway_state_dict(models.unmerged), models.spec, pathway=info)
    out = {}
    for label, extra in (("onnx, no verification", ["--no-verify"]), ("onnx, verified (default)", [])):
        say(f"timing m2pt-export --format onnx {' '.join(extra)}".rstrip())
        cost = run_measured([str(ckpt), "--format", "onnx", "-o", str(tmp / "cli.onnx"), "--force", *extra],
                            label=f"m2pt-export --format onnx {' '.join(extra)}".rstrip())
        out[label] = cost.to_dict()
    return out


def run_benchmark(spec: ModelSpec, options: BenchOptions | None = None, *,
                  log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The whole benchmark as a JSON-ready dict (see :mod:`m2pt_deploy.verify.bench_report`)."""
    say = log or (lambda _: None)
    options = options or BenchOptions()
    options.check()
    load_before = _load()
    say("measuring the fp32 matrix-multiply peak")
    peak = matmul_peak_gflops()
    rows: list[ThroughputRow] = []
    comparisons: list[LatencyComparison] = []
    with tempfile.TemporaryDirectory(prefix="m2pt-bench-") as tmp_name:
        tmp = Path(tmp_name)
        models = _Models(spec, options, tmp, say)
        gflop = forward_gflop(models.merged, spec.input_size)
        # Before torch.compile starts compiler workers: the export's own process, alone.
        costs = _export_costs(models, tmp, say) if options.export_cost else {}
        models.export(options, say)
        startup = _startup(models.onnx)
        graph_diffs = _graph_differences(models.onnx)
        agreement = _int8_agreement(models, options) if options.int8 else None
        feeds = {b: {INPUT_NAME: seeded_inputs(spec.input_size, b, seed=options.seed)} for b in options.batches}
        variants = _variants(models, options)
        say(f"{len(variants)} variants, batches {list(options.batches)}, {options.rounds} interleaved rounds each")
        times, started = run_variants(variants, feeds, rounds=options.rounds, warmup=options.warmup, log=say)
        for batch in options.batches:
            rows += rows_for_batch(variants, batch, times[batch], started, eager_runtime=EAGER)
            comparisons += _comparisons(batch, times[batch])
    machine = machine_info()
    machine.update(physical_cores=physical_cores(), load_average_before=load_before, load_average_after=_load(),
                   fp32_matmul_peak_gflops=peak)
    return {
        "machine": machine,
        "spec": spec.to_dict(),
        "settings": {**dataclasses.asdict(options), "inputs": "seeded standard normal, float32",
                     "gflop_per_image": gflop, "ort_threads": physical_cores()},
        "rows": [r.to_dict() for r in rows],
        "comparisons": [c.to_dict() for c in comparisons],
        "export": {"commands": costs, "in_process_seconds": models.seconds, "session_startup_s": startup,
                   "graph_differences_merged_vs_vanilla": graph_diffs},
        "int8_agreement": agreement,
    }
