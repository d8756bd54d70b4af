"""(d) Latency: merged vs vanilla in ONNX Runtime, unmerged vs merged in torch.

Measurements are interleaved: every round runs each variant once, in an order that
rotates from round to round, so drift in the machine's load (other processes, clock
changes) falls on both sides alike. Each round gives a ratio; the figure reported is the
median ratio with its interquartile range, beside the median latencies.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from polygraphy.backend.base import BaseRunner
from torch import nn

from m2pt_deploy.build import build_vanilla
from m2pt_deploy.errors import M2ptError
from m2pt_deploy.export.onnx import INPUT_NAME, export_model, save_onnx
from m2pt_deploy.fileio import atomic_output
from m2pt_deploy.merge import merge_model
from m2pt_deploy.pathway import add_pathways, pathway_parameters
from m2pt_deploy.verify.machine import machine_info, machine_line
from m2pt_deploy.verify.runners import TorchRunner, onnxrt_runner, quiet_polygraphy, seeded_inputs
from m2pt_deploy.verify.structure import graph_signature, structure_differences
from m2pt_deploy.vit import ModelSpec

__all__ = [
    "BenchReport",
    "LatencyComparison",
    "compare_latency",
    "interleaved_times",
    "pathway_pair",
    "run_benchmark",
    "spec_for_arch",
]


@dataclasses.dataclass(frozen=True)
class LatencyComparison:
    """``candidate`` against ``baseline`` on one runtime at one batch size."""

    runtime: str
    batch: int
    candidate: str
    baseline: str
    candidate_ms: float
    baseline_ms: float
    ratio: float
    ratio_p25: float
    ratio_p75: float
    rounds: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def row(self) -> str:
        return (
            f"| {self.runtime} | {self.batch} | {self.candidate} / {self.baseline} | "
            f"{self.candidate_ms:.2f} | {self.baseline_ms:.2f} | "
            f"{self.ratio:.3f} ({self.ratio_p25:.3f}–{self.ratio_p75:.3f}) |"
        )


def interleaved_times(
    runners: Sequence[BaseRunner], feed: dict[str, np.ndarray], *, rounds: int, warmup: int
) -> dict[str, list[float]]:
    """Seconds per inference, ``{runner name: [one per round]}``, runs interleaved."""
    times: dict[str, list[float]] = {r.name: [] for r in runners}
    with quiet_polygraphy(), contextlib.ExitStack() as stack:
        active = [stack.enter_context(r) for r in runners]
        for runner in active:
            for _ in range(warmup):
                runner.infer(feed, check_inputs=False)
        for i in range(rounds):
            shift = i % len(active)
            for runner in active[shift:] + active[:shift]:
                runner.infer(feed, check_inputs=False)
                times[runner.name].append(float(runner.last_inference_time()))
    return times


def compare_latency(
    runtime: str,
    candidate: BaseRunner,
    baseline: BaseRunner,
    feed: dict[str, np.ndarray],
    *,
    rounds: int,
    warmup: int,
) -> LatencyComparison:
    times = interleaved_times([candidate, baseline], feed, rounds=rounds, warmup=warmup)
    cand, base = np.array(times[candidate.name]), np.array(times[baseline.name])
    ratios = cand / base
    return LatencyComparison(
        runtime=runtime,
        batch=len(next(iter(feed.values()))),
        candidate=candidate.name,
        baseline=baseline.name,
        candidate_ms=float(np.median(cand) * 1e3),
        baseline_ms=float(np.median(base) * 1e3),
        ratio=float(np.median(ratios)),
        ratio_p25=float(np.percentile(ratios, 25)),
        ratio_p75=float(np.percentile(ratios, 75)),
        rounds=rounds,
    )


def spec_for_arch(arch: str, model_kwargs: dict[str, Any] | None = None) -> ModelSpec:
    """A :class:`ModelSpec` whose input size is read off the built model."""
    kwargs = dict(model_kwargs or {})
    model = build_vanilla(ModelSpec(arch, kwargs, (3, 224, 224)))
    embed = getattr(model, "patch_embed", None)
    if embed is None or not hasattr(embed, "img_size"):
        raise M2ptError(f"{arch} is not a ViT with a patch embedding; the benchmark needs one")
    h, w = embed.img_size
    return ModelSpec(arch, kwargs, (int(embed.proj.in_channels), int(h), int(w)))


def _trained_like(model: nn.Module) -> nn.Module:
    # timm's init makes every LayerNorm 1/0 and every bias 0, which the ONNX exporter
    # shares or drops; a trained model has none of that. Small noise everywhere gives the
    # graph a trained model's shape without pushing activations towards denormals.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p), alpha=0.02)
    return model


def pathway_pair(spec: ModelSpec, *, seed: int = 0, lambda_std: float = 0.1) -> nn.Module:
    """A target ViT with a pathway from one auxiliary ViT, all random (nothing downloaded)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        target = _trained_like(build_vanilla(spec))
        aux = _trained_like(build_vanilla(spec))
        add_pathways(target, [aux])
        for lam in pathway_parameters(target):
            lam.data.normal_(0.0, lambda_std)
    return target.eval()


@dataclasses.dataclass(frozen=True)
class BenchReport:
    machine: dict[str, Any]
    spec: dict[str, Any]
    settings: dict[str, Any]
    results: tuple[LatencyComparison, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "machine": self.machine,
            "spec": self.spec,
            "settings": self.settings,
            "results": [r.to_dict() for r in self.results],
        }

    def markdown(self) -> str:
        kwargs = self.spec["model_kwargs"]
        model = f"{self.spec['arch']} {kwargs}" if kwargs else self.spec["arch"]
        lines = [
            f"Machine: {machine_line(self.machine)}.",
            f"Model: {model}, input "
            f"{'x'.join(map(str, self.spec['input_size']))}; {self.settings['rounds']} interleaved "
            f"rounds after {self.settings['warmup']} warm-up runs each.",
            self._graph_line(),
            "",
            "| runtime | batch | compared | candidate median ms | baseline median ms | median ratio (p25–p75) |",
            "|---|---|---|---|---|---|",
            *(r.row() for r in self.results),
        ]
        return "\n".join(lines) + "\n"

    def _graph_line(self) -> str:
        diffs = self.settings.get("graph_differences", [])
        if not diffs:
            return "Merged and vanilla ONNX graphs: structurally identical."
        return f"Merged and vanilla ONNX graphs differ: {'; '.join(diffs[:3])}."

    def write(self, out_dir: str | os.PathLike[str]) -> tuple[Path, Path]:
        """``bench.json`` and ``bench.md`` in ``out_dir``, each written atomically (overwritten)."""
        out = Path(out_dir)
        if out.exists() and not out.is_dir():
            raise M2ptError("--out must be a directory", out)
        out.mkdir(parents=True, exist_ok=True)
        paths = out / "bench.json", out / "bench.md"
        for path, text in zip(
            paths,
            (json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n", self.markdown()),
            strict=True,
        ):
            with atomic_output(path, force=True) as tmp:
                tmp.write_text(text)
        return paths


def _export(model: nn.Module, spec: ModelSpec, path: Path) -> Path:
    return save_onnx(export_model(model, spec), path)


def run_benchmark(
    spec: ModelSpec,
    *,
    batches: Sequence[int] = (1, 8),
    rounds: int = 30,
    warmup: int = 3,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> BenchReport:
    """Build the random pathway model, export merged and vanilla graphs, time all pairs.

    ``log`` receives a line before each long step (exports, each comparison).
    """
    say = log or (lambda _: None)
    if rounds < 1 or warmup < 0 or not batches or min(batches) < 1:
        raise M2ptError(
            f"need rounds >= 1, warmup >= 0 and batches >= 1, got "
            f"rounds {rounds}, warmup {warmup}, batches {list(batches)}"
        )
    say(f"building a random {spec.arch} with a random-λ pathway")
    unmerged = pathway_pair(spec, seed=seed)
    merged_eager = merge_model(unmerged, spec)
    shape = (None, *spec.input_size)
    results = []
    with tempfile.TemporaryDirectory(prefix="m2pt-bench-") as tmp:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 1)
            vanilla = _trained_like(build_vanilla(spec, exportable=True))
        say("exporting the merged and the vanilla model to ONNX")
        merged_onnx = _export(merge_model(unmerged, spec, exportable=True), spec, Path(tmp, "merged.onnx"))
        vanilla_onnx = _export(vanilla, spec, Path(tmp, "vanilla.onnx"))
        graph_diffs = structure_differences(
            graph_signature(onnx.load(merged_onnx)), graph_signature(onnx.load(vanilla_onnx))
        )
        for batch in batches:
            feed = {INPUT_NAME: seeded_inputs(spec.input_size, batch, seed=seed)}
            say(f"batch {batch}: ONNX Runtime merged vs vanilla, {rounds} rounds")
            results.append(
                compare_latency(
                    "ONNX Runtime CPU",
                    onnxrt_runner(merged_onnx, name="merged", spinning=False),
                    onnxrt_runner(vanilla_onnx, name="vanilla", spinning=False),
                    feed,
                    rounds=rounds,
                    warmup=warmup,
                )
            )
            say(f"batch {batch}: torch unmerged vs merged, {rounds} rounds")
            results.append(
                compare_latency(
                    "torch eager CPU",
                    TorchRunner(unmerged, shape, name="unmerged"),
                    TorchRunner(merged_eager, shape, name="merged"),
                    feed,
                    rounds=rounds,
                    warmup=warmup,
                )
            )
    settings = {
        "batches": list(batches),
        "rounds": rounds,
        "warmup": warmup,
        "seed": seed,
        "inputs": "seeded standard normal, float32",
        "graph_differences": graph_diffs,
    }
    return BenchReport(machine_info(), spec.to_dict(), settings, tuple(results))
