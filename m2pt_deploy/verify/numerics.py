"""Numeric checks: (a) merged vs unmerged in torch, (b) any runtimes against a reference runner."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from polygraphy.backend.base import BaseRunner
from torch import nn

from m2pt_deploy.runtime.runners import TorchRunner, run_runners
from m2pt_deploy.verify.result import CheckResult, judge
from m2pt_deploy.verify.tolerance import BITWISE, PROBE_HEAD, Tolerance

__all__ = ["check_merge", "compare_runners"]


def _concat(outputs: list[dict[str, np.ndarray]], name: str) -> np.ndarray:
    return np.concatenate([o[name] for o in outputs], axis=0)


def compare_runners(
    runners: Sequence[BaseRunner],
    feeds: Sequence[dict[str, np.ndarray]],
    tolerance: Tolerance,
    *,
    check: str = "runtime",
    note: str = "",
) -> list[CheckResult]:
    """Run all runners on ``feeds``; judge every later runner against the first, per output.

    Outputs of all feeds are concatenated along the batch axis before judging, so top-1
    counts every sample once. An output the reference has and a candidate lacks fails.
    """
    outputs = run_runners(runners, feeds)
    ref_name = runners[0].name
    ref = outputs[ref_name]
    results = []
    for runner in runners[1:]:
        cand = outputs[runner.name]
        for out_name in ref[0]:
            if out_name not in cand[0]:
                missing = np.empty((0,), dtype=np.float32)
                results.append(
                    judge(
                        check,
                        (ref_name, _concat(ref, out_name)),
                        (runner.name, missing),
                        output=out_name,
                        tolerance=tolerance,
                        note=note,
                    )
                )
                continue
            results.append(
                judge(
                    check,
                    (ref_name, _concat(ref, out_name)),
                    (runner.name, _concat(cand, out_name)),
                    output=out_name,
                    tolerance=tolerance,
                    note=note,
                )
            )
    return results


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
        TorchRunner(unmerged, shape, name="torch-unmerged", input_name=input_name),
        TorchRunner(merged, shape, name="torch-merged", input_name=input_name),
    ]
    tolerance = PROBE_HEAD if probe_head else BITWISE
    note = "probe-head BatchNorm folded: equal within 1e-5, not bit for bit" if probe_head else ""
    (result,) = compare_runners(runners, feeds, tolerance, check="merge", note=note)
    return result
