"""Numeric checks: (a) merged vs unmerged in torch, (b) any runtimes against a reference runner."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from polygraphy.backend.base import BaseRunner
from torch import nn

from m2pt_deploy.runtime.runners import TorchRunner, run_runners
from m2pt_deploy.verify.result import CheckResult, judge
from m2pt_deploy.verify.tolerance import BITWISE, PROBE_HEAD, Tolerance

__all__ = ["MERGED", "UNMERGED", "check_merge", "compare_outputs", "compare_runners", "merge_tolerance"]

#: The torch runners' names in every report.
UNMERGED, MERGED = "torch-unmerged", "torch-merged"


def _concat(outputs: Sequence[dict[str, np.ndarray]], name: str) -> np.ndarray:
    return np.concatenate([o[name] for o in outputs], axis=0)


def compare_runners(
    runners: Sequence[BaseRunner],
    feeds: Sequence[dict[str, np.ndarray]],
    tolerance: Tolerance,
    *,
    check: str = "runtime",
    note: str = "",
) -> list[CheckResult]:
    """Run all runners on ``feeds``; judge every later runner against the first, per output."""
    outputs = run_runners(runners, feeds)
    return compare_outputs(outputs, runners[0].name, [r.name for r in runners[1:]], tolerance, check=check,
                           note=note)


def compare_outputs(
    outputs: Mapping[str, Sequence[dict[str, np.ndarray]]],
    reference: str,
    candidates: Sequence[str],
    tolerance: Tolerance,
    *,
    check: str = "runtime",
    note: str = "",
) -> list[CheckResult]:
    """Judge each candidate's outputs (``run_runners``' result) against the reference's, per output.

    Outputs of all feeds are concatenated along the batch axis before judging, so top-1
    counts every sample once. An output the reference has and a candidate lacks fails.
    """
    ref = outputs[reference]
    results = []
    for name in candidates:
        cand = outputs[name]
        for out_name in ref[0]:
            got = _concat(cand, out_name) if out_name in cand[0] else np.empty((0,), dtype=np.float32)
            results.append(judge(check, (reference, _concat(ref, out_name)), (name, got), output=out_name,
                                 tolerance=tolerance, note=note))
    return results


def merge_tolerance(*, probe_head: bool) -> tuple[Tolerance, str]:
    """Bit for bit, except where a linear-probe head's BatchNorm was folded into its Linear."""
    if probe_head:
        return PROBE_HEAD, "probe-head BatchNorm folded: equal within 1e-5, not bit for bit"
    return BITWISE, ""


def check_merge(
    unmerged: nn.Module,
    merged: nn.Module,
    feeds: Sequence[dict[str, np.ndarray]],
    *,
    probe_head: bool = False,
) -> CheckResult:
    """The fold is the forward pass's own arithmetic, so the outputs must be bit-identical.

    A linear-probe head (BatchNorm folded into the Linear) changes rounding; then the
    bound is max abs 1e-5, and the result line says why.
    """
    input_name = next(iter(feeds[0]))
    shape = (None, *feeds[0][input_name].shape[1:])
    runners = [
        TorchRunner(unmerged, shape, name=UNMERGED, input_name=input_name),
        TorchRunner(merged, shape, name=MERGED, input_name=input_name),
    ]
    tolerance, note = merge_tolerance(probe_head=probe_head)
    (result,) = compare_runners(runners, feeds, tolerance, check="merge", note=note)
    return result
