"""(d) Latency: merged vs vanilla, unmerged vs merged, timed side by side.

Measurements are interleaved: every round runs each variant once, in an order that
rotates from round to round, so drift in the machine's load (other processes, clock
changes) falls on both sides alike. Each round gives a ratio; the figure reported is the
median ratio with its interquartile range, beside the median latencies. The full
benchmark (every runtime, throughput, memory) is :mod:`m2pt_deploy.bench.cpu`.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from polygraphy.backend.base import BaseRunner
from torch import nn

from m2pt_deploy.errors import M2ptError
from m2pt_deploy.families import ModelSpec, family_of
from m2pt_deploy.model.build import build_vanilla
from m2pt_deploy.model.pathway import add_pathways, pathway_parameters
from m2pt_deploy.runtime.runners import quiet_polygraphy

__all__ = [
    "LatencyComparison",
    "compare_latency",
    "interleaved_times",
    "pathway_pair",
    "spec_for_arch",
    "trained_like",
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


def trained_like(model: nn.Module) -> nn.Module:
    # timm's init makes every LayerNorm 1/0 and every bias 0, which the ONNX exporter
    # shares or drops; a trained model has none of that. Small noise everywhere gives the
    # graph a trained model's shape without pushing activations towards denormals.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p), alpha=0.02)
    return model


def pathway_pair(spec: ModelSpec, *, seed: int = 0, lambda_std: float = 0.1) -> nn.Module:
    """A target model with a pathway from one auxiliary model of its family, all random (nothing downloaded)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        target = trained_like(build_vanilla(spec))
        aux = trained_like(build_vanilla(spec))
        family = family_of(spec)
        add_pathways(target, [aux], layers=family.pathway_layers, block_path=family.block_path)
        for lam in pathway_parameters(target):
            lam.data.normal_(0.0, lambda_std)
    return target.eval()
