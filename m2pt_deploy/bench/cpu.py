"""``m2pt-bench``: every runtime × model in one interleaved run, on one machine, named.

Rows: torch eager and ``torch.compile`` for the vanilla, merged and unmerged models; ONNX
Runtime plain, optimized (:mod:`m2pt_deploy.export.optimize`) and int8 for the vanilla and
merged exports. Beside them, in the same run: the machine's fp32 matrix-multiply peak, the
model's FLOPs, ``m2pt-export``'s wall time and peak RSS, the merge time, each ONNX file's
session start-up, and int8's top-1 agreement with fp32.

What is measured is a :class:`~m2pt_deploy.bench.subject.Subject`: random weights with a
random-λ pathway (the default: nothing is downloaded), a checkpoint, or an ONNX file (its
ONNX Runtime rows only, plus the optimized and int8 copies derived from a plain fp32 file).
For a user's model, :mod:`m2pt_deploy.bench.accuracy` scores every format on ``--data``.
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

from m2pt_deploy.bench.accuracy import EvalData, Predict, onnx_predict, score_formats, torch_predict
from m2pt_deploy.bench.export_cost import run_measured
from m2pt_deploy.bench.flops import graph_flops
from m2pt_deploy.bench.latency import LatencyComparison
from m2pt_deploy.bench.machine import machine_info
from m2pt_deploy.bench.peak import MatmulPeakRunner, add_peak_fractions, forward_gflop, matmul_peak_gflops
from m2pt_deploy.bench.subject import Subject, random_subject
from m2pt_deploy.bench.throughput import ThroughputRow, Variant, paired_ratio, rows_for_batch, run_variants
from m2pt_deploy.errors import M2ptError, first_line
from m2pt_deploy.export.int8.cpu import cpu_int8_onnx
from m2pt_deploy.export.onnx import export_model, save_onnx
from m2pt_deploy.export.optimize import optimize_onnx, save_optimized
from m2pt_deploy.families import ModelSpec, family_of
from m2pt_deploy.inputs.calibration import held_out_inputs, int8_data, photo_calibrated
from m2pt_deploy.inputs.seeded import seeded_inputs
from m2pt_deploy.model.build import build_vanilla
from m2pt_deploy.runtime.io_names import input_name
from m2pt_deploy.runtime.runners import TorchRunner, cpu_runner
from m2pt_deploy.runtime.sessions import cpu_session, ort_session, physical_cores
from m2pt_deploy.verify.numerics import compare_runners
from m2pt_deploy.verify.structure import graph_signature, structure_differences
from m2pt_deploy.verify.tolerance import INT8_CPU
from m2pt_deploy.vocabulary import CALIBRATION_SEED

__all__ = ["EAGER", "ERROR_BARS", "RUNTIMES", "BenchOptions", "run_benchmark"]

EAGER, COMPILED = "torch eager", "torch.compile"
ORT, ORT_OPT, ORT_INT8 = "ONNX Runtime", "ONNX Runtime optimized", "ONNX Runtime int8"
RUNTIMES = (EAGER, COMPILED, ORT, ORT_OPT, ORT_INT8)
ERROR_BARS = "p25–p75 of the rounds (samples/s at the rounds' 75th and 25th percentile latency)"
PEAK = "fp32 matmul peak"
SYNTHETIC = "seeded synthetic inputs in the family's layout"


@dataclasses.dataclass(frozen=True)
class BenchOptions:
    batches: tuple[int, ...] = (1, 8)
    rounds: int = 10
    warmup: int = 2
    seed: int = 0
    compile: bool = True
    int8: bool = True
    export_cost: bool = True
    #: How to run ``m2pt-export`` for its cost rows (given by the CLI; empty: no cost rows).
    export_command: tuple[str, ...] = ()
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


class _Files:
    """The ONNX files one run times, ``{runtime: {model: path}}``, and what each step cost."""

    def __init__(self, subject: Subject, tmp: Path) -> None:
        self.subject, self.tmp = subject, tmp
        self.paths: dict[str, dict[str, Path]] = {ORT: {}, ORT_OPT: {}, ORT_INT8: {}}
        self.seconds: dict[str, float] = dict(subject.seconds)
        self.notes: list[str] = []

    def export(self, calibration: np.ndarray | None, say: Callable[[str], None]) -> None:
        spec = self.subject.spec
        for name, build in self.subject.exportable.items():
            say(f"exporting the {name} model: plain, optimized" + (", int8" if calibration is not None else ""))
            with self._timed(f"export {name}"):
                proto = export_model(build(), spec)
            self.paths[ORT][name] = save_onnx(proto, self.tmp / f"{name}.onnx")
            with self._timed(f"optimize {name}"):
                fast = optimize_onnx(proto)
            self.paths[ORT_OPT][name] = save_optimized(fast, self.tmp / f"{name}.opt.onnx")
            if calibration is not None:
                with self._timed(f"int8 {name}"):
                    q = cpu_int8_onnx(proto, calibration)
                self.paths[ORT_INT8][name] = save_optimized(q, self.tmp / f"{name}.int8.onnx")

    def derive(self, calibration: np.ndarray | None, int8: bool, say: Callable[[str], None]) -> None:
        """An ONNX file: timed as given; a plain fp32 one also optimized and quantized here,
        each derivation that fails on a foreign graph a note rather than the end of the run."""
        info = self.subject.onnx
        assert info is not None
        given = ORT_INT8 if info.precision == "int8" else ORT_OPT if info.optimized else ORT
        self.paths[given]["file"] = info.path
        if given != ORT or info.precision != "fp32":
            self.notes.append(f"only the file itself is timed: optimized and int8 copies are derived from a plain "
                              f"fp32 export, and this one is {info.precision}" + (", optimized" if info.optimized
                                                                                  else ""))
            return
        proto = onnx.load_model(os.fspath(info.path))
        steps: list[tuple[str, str, Callable[[], onnx.ModelProto]]] = [
            (ORT_OPT, "optimize", lambda: optimize_onnx(proto))]
        if int8 and calibration is not None:
            tiles: np.ndarray = calibration
            steps.append((ORT_INT8, "int8", lambda: cpu_int8_onnx(proto, tiles)))
        for runtime, label, make in steps:
            say(f"deriving the {runtime} copy of {info.path.name}")
            try:
                with self._timed(f"{label} file"):
                    derived = make()
            except Exception as e:  # a graph our passes do not know is a result, not a crash
                self.notes.append(f"{runtime} not derived: {first_line(e)[:200]}")
                continue
            self.paths[runtime]["file"] = save_optimized(derived, self.tmp / f"file.{label}.onnx")

    @contextlib.contextmanager
    def _timed(self, label: str) -> Iterator[None]:
        t0 = time.perf_counter()
        yield
        self.seconds[label] = time.perf_counter() - t0


def _startup(paths: dict[str, dict[str, Path]], primary: str, repeats: int = 3) -> dict[str, float]:
    """Median seconds to create each primary file's CPU session, the files taken in turn each
    repeat; a file this toolkit optimized also the way a server unaware of it would open it
    (re-optimized at load), for comparison."""

    openers: dict[str, Callable[[], Any]] = {}
    for runtime, files in paths.items():
        if primary in files:
            openers[runtime] = functools.partial(cpu_session, files[primary], spinning=False)
    if primary in paths.get(ORT_OPT, {}):
        path = paths[ORT_OPT][primary]
        openers[f"{ORT_OPT}, re-optimized at load"] = functools.partial(
            ort_session, path, spinning=False, optimization="all")
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


def _variants(subject: Subject, paths: dict[str, dict[str, Path]], options: BenchOptions,
              peak: MatmulPeakRunner) -> list[Variant]:
    shape, feed = (None, *subject.spec.input_size), input_name(subject.spec)
    out = [Variant(EAGER, name, TorchRunner(m, shape, name=f"eager-{name}", input_name=feed), _param_bytes(m))
           for name, m in subject.torch.items()]
    if options.compile:
        # Static shapes: each batch size compiles once, in its warm-up (shown as start-up).
        out += [Variant(COMPILED, name, TorchRunner(_compiler(m), shape, name=f"compiled-{name}", input_name=feed),
                        _param_bytes(m)) for name, m in subject.torch.items()]
    for runtime, files in paths.items():
        for name, path in files.items():
            out.append(Variant(runtime, name, cpu_runner(path, name=f"{runtime}-{name}", spinning=False)))
    # The matmul peak, timed in every round among the models (on ONNX Runtime's thread count).
    out.append(Variant(PEAK, "torch.mm", peak))
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


def _spread(row: ThroughputRow, times: dict[str, list[float]]) -> dict[str, Any]:
    """The row as a dict, with the rounds' interquartile latency for the chart's error bars."""
    out = row.to_dict()
    t = times.get(f"{row.runtime} / {row.model}")
    out["p25_ms"], out["p75_ms"] = (float(np.percentile(t, 25)) * 1e3, float(np.percentile(t, 75)) * 1e3) \
        if t and row.error is None else (None, None)
    out["round_ms"] = [round(v * 1e3, 3) for v in t] if t and row.error is None else []
    return out


def _int8_speedups(batch: int, times: dict[str, list[float]]) -> list[dict[str, Any]]:
    """int8 over optimized fp32 per model, as per-round ratios (fp32 time / int8 time of the same
    round): medians taken over different rounds would compare different machine loads."""
    out = []
    for model in ("merged", "vanilla", "file"):
        fp32, int8 = times.get(f"{ORT_OPT} / {model}"), times.get(f"{ORT_INT8} / {model}")
        if fp32 and int8:
            ratio, p25, p75 = paired_ratio(fp32, int8)
            out.append({"batch": batch, "model": model, "speedup": ratio, "p25": p25, "p75": p75,
                        "rounds": len(int8)})
    return out


def _int8_agreement(subject: Subject, paths: dict[str, dict[str, Path]], options: BenchOptions) -> dict[str, Any]:
    path = paths[ORT_INT8]["merged"]
    spec, name = subject.spec, input_name(subject.spec)
    x = held_out_inputs(spec, options.agreement_images)
    feeds = [{name: x[i:i + 8]} for i in range(0, len(x), 8)]
    ref = TorchRunner(subject.torch["merged"], (None, *spec.input_size), name="torch-merged-fp32", input_name=name)
    (result,) = compare_runners([ref, cpu_runner(path, name="onnxrt-int8")], feeds, INT8_CPU, check="int8 cpu")
    return {"images": len(x), "source": "held-out photo tiles (scikit-learn's china.jpg / flower.jpg)",
            "passed": result.passed, "line": str(result), **(result.stats.to_dict() if result.stats else {}),
            "top1_rate": result.stats.top1_rate if result.stats else None}


def _calibration(subject: Subject, eval_data: EvalData | None, options: BenchOptions,
                 notes: list[str]) -> np.ndarray | None:
    """int8 calibration inputs: photo tiles for RGB image models, else the user's inputs that are
    not scored, else seeded synthetic inputs in the family's layout (noted: they calibrate the
    int8 rows for speed; its accuracy needs the family's real inputs, ``--data``)."""
    if not options.int8:
        return None
    spec = subject.spec
    if photo_calibrated(spec):
        return int8_data(spec, calib_images=options.calib_images, verify_images=1).calibration
    if eval_data is not None:
        return eval_data.calibration(options.calib_images)
    notes.append(f"int8 calibrated on {options.calib_images} {SYNTHETIC}: its rows measure speed; its accuracy "
                 f"is {'not measured (random weights)' if subject.kind == 'random' else 'measured only on --data'}")
    return family_of(spec).example_input(spec, options.calib_images, seed=CALIBRATION_SEED).numpy()


def _format_accuracy(subject: Subject, paths: dict[str, dict[str, Path]], eval_data: EvalData | None,
                     options: BenchOptions, say: Callable[[str], None]) -> dict[str, Any]:
    """Every format of the user's model on ``eval_data``, or against the fp32 reference."""
    spec, models = subject.spec, ("unmerged", subject.primary)
    predictors: dict[str, Predict] = {f"{EAGER} / {m}": torch_predict(subject.torch[m])
                                      for m in models if m in subject.torch}
    info = subject.onnx
    for runtime, files in paths.items():
        for m in (m for m in models if m in files):
            try:
                name = info.input_name if info else input_name(spec)  # what the family's export declares
                predictors[f"{runtime} / {m}"] = onnx_predict(files[m], input_name=name,
                                                              batch=info.batch if info else None)
            except Exception as e:  # the timing rows say the same; the other formats are still scored
                say(f"{runtime} / {m} not scored: {first_line(e)}")
    reference = f"{EAGER} / {subject.reference}" if subject.reference else next(iter(predictors))
    if eval_data is not None:
        say(f"scoring {len(predictors)} formats on {eval_data.source}")
        return score_formats(predictors, reference, eval_data.chunks(), source=eval_data.source)
    count = options.agreement_images
    x = held_out_inputs(spec, count)
    source = (f"{count} held-out photo tiles (scikit-learn's china.jpg / flower.jpg)" if photo_calibrated(spec)
              else f"{count} {SYNTHETIC}")
    say(f"no --data: top-1 agreement of {len(predictors)} formats with {reference} on {source}")
    chunks = ((x[i:i + 16], None) for i in range(0, len(x), 16))
    return score_formats(predictors, reference, chunks, source=source)


def _export_costs(subject: Subject, command: tuple[str, ...], tmp: Path,
                  say: Callable[[str], None]) -> dict[str, Any]:
    assert subject.export_args is not None
    args = subject.export_args(tmp)
    out = {}
    for label, extra in (("onnx, no verification", ["--no-verify"]), ("onnx, verified (default)", [])):
        say(f"timing m2pt-export --format onnx {' '.join(extra)}".rstrip())
        cost = run_measured(command, [*args, "--format", "onnx", "-o", str(tmp / "cli.onnx"), "--force", *extra],
                            label=f"m2pt-export --format onnx {' '.join(extra)}".rstrip())
        out[label] = cost.to_dict()
    return out


def _flops(subject: Subject, paths: dict[str, dict[str, Path]]) -> dict[str, Any] | None:
    """FLOPs per sample counted from a plain export (the vanilla model's, or the user's plain file);
    an optimized or int8 file alone is counted on the torch model its metadata names, if any."""
    plain = paths[ORT].get("vanilla") or paths[ORT].get("file")
    if plain is not None:
        counted = graph_flops(onnx.load_model(os.fspath(plain)))
        return {**counted.to_dict(), "counted_from": f"the plain ONNX export ({plain.name})"}
    try:  # a fused or quantized file that names its architecture: count the FLOPs of that model
        gflop = forward_gflop(build_vanilla(subject.spec), subject.spec.input_size)
    except (M2ptError, RuntimeError):
        return None
    return {"total_gflop": gflop, "counted_from": f"torch's FLOP counter on a vanilla {subject.spec.arch}"}


def _batches(subject: Subject, options: BenchOptions) -> tuple[int, ...]:
    fixed = subject.onnx.batch if subject.onnx else None
    if fixed is not None and set(options.batches) != {fixed}:
        raise M2ptError(f"{subject.onnx.path.name} takes batches of exactly {fixed}: "  # type: ignore[union-attr]
                        f"pass --batches {fixed}, not {' '.join(map(str, options.batches))}")
    return options.batches


def run_benchmark(subject: Subject | ModelSpec, options: BenchOptions | None = None, *,
                  eval_data: EvalData | None = None, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The whole benchmark as a JSON-ready dict (see :mod:`m2pt_deploy.bench.cpu_report`).

    A :class:`ModelSpec` means random weights of that architecture (the default run).
    ``eval_data``: labelled images that every format of a user's model is scored on.
    """
    say = log or (lambda _: None)
    options = options or BenchOptions()
    options.check()
    if isinstance(subject, ModelSpec):
        say(f"building a random {subject.arch} with a random-λ pathway, merging it")
        subject = random_subject(subject, seed=options.seed)
    spec, batches = subject.spec, _batches(subject, options)
    load_before = _load()
    say("measuring the fp32 matrix-multiply peak")
    peak = matmul_peak_gflops(threads=physical_cores())
    rows: list[dict[str, Any]] = []
    comparisons: list[LatencyComparison] = []
    with tempfile.TemporaryDirectory(prefix="m2pt-bench-") as tmp_name:
        tmp = Path(tmp_name)
        # Before torch.compile starts compiler workers: the export's own process, alone.
        costs = _export_costs(subject, options.export_command, tmp, say) \
            if options.export_cost and options.export_command and subject.export_args else {}
        files = _Files(subject, tmp)
        calibration = _calibration(subject, eval_data, options, files.notes)
        if subject.onnx is not None:
            files.derive(calibration, options.int8, say)
        else:
            files.export(calibration, say)
        flops = _flops(subject, files.paths)
        gflop = flops["total_gflop"] if flops else None
        startup = _startup(files.paths, subject.primary)
        graph_diffs = _graph_differences(files.paths)
        # Random weights on synthetic clips or clouds: int8 is timed, its agreement not claimed.
        agreement = _int8_agreement(subject, files.paths, options) \
            if subject.kind == "random" and files.paths[ORT_INT8] and photo_calibrated(spec) else None
        formats = _format_accuracy(subject, files.paths, eval_data, options, say) if subject.kind != "random" \
            else None
        name = subject.onnx.input_name if subject.onnx else input_name(spec)
        feeds = {b: {name: seeded_inputs(spec.input_size, b, seed=options.seed)} for b in batches}
        peak_runner = MatmulPeakRunner(threads=physical_cores())
        variants = _variants(subject, files.paths, options, peak_runner)
        baseline = EAGER if subject.torch else variants[0].runtime
        say(f"{len(variants)} variants, batches {list(batches)}, {options.rounds} interleaved rounds each")
        times, started = run_variants(variants, feeds, rounds=options.rounds, warmup=options.warmup, log=say)
        models = [v for v in variants if v.runtime != PEAK]
        round_peaks: list[float] = []
        speedups: list[dict[str, Any]] = []
        for batch in batches:
            batch_rows = [_spread(r, times[batch])
                          for r in rows_for_batch(models, batch, times[batch], started, eager_runtime=baseline)]
            peak_times = times[batch].pop(f"{PEAK} / torch.mm", [])
            round_peaks += add_peak_fractions(batch_rows, times[batch], peak_times, gflop=gflop,
                                              peak_gflop=peak_runner.gflop)
            rows += batch_rows
            comparisons += _comparisons(batch, times[batch])
            speedups += _int8_speedups(batch, times[batch])
    machine = machine_info()
    # The peak is the median of the rounds' own (the figure each row's fraction is read against),
    # the one measured before the run only where no round ran.
    machine.update(physical_cores=physical_cores(), load_average_before=load_before, load_average_after=_load(),
                   fp32_matmul_peak_gflops=float(np.median(round_peaks)) if round_peaks else peak,
                   fp32_matmul_peak_gflops_before_run=peak,
                   fp32_matmul_peak_rounds=[round(p, 1) for p in round_peaks])
    return {
        "machine": machine,
        "spec": spec.to_dict(),
        "subject": subject.source,
        "settings": {**dataclasses.asdict(options), "batches": list(batches),
                     "inputs": "seeded standard normal, float32", "gflop_per_image": gflop, "flops": flops,
                     "peak": f"the fastest of {peak_runner.repeats} {peak_runner.n}² fp32 "
                             f"torch.mm on {physical_cores()} threads, in every round among the models; each row's "
                             "fraction of it is the median of the rounds'",
                     "ort_threads": physical_cores(), "primary_model": subject.primary,
                     "baseline_runtime": baseline, "error_bars": ERROR_BARS},
        "rows": rows,
        "comparisons": [c.to_dict() for c in comparisons],
        "int8_speedup": speedups,
        "export": {"commands": costs, "in_process_seconds": files.seconds, "session_startup_s": startup,
                   "graph_differences_merged_vs_vanilla": graph_diffs, "notes": files.notes},
        "int8_agreement": agreement,
        "formats": formats,
    }
