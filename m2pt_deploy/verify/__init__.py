"""Prove an export equivalent to its checkpoint and free of added cost.

``verify_onnx`` runs the numeric and structural checks and returns a
:class:`VerificationReport`; ``assert_equivalent`` does the same for a test suite. The
latency benchmark lives in :mod:`m2pt_deploy.bench.latency` (``m2pt-bench``).
"""

from __future__ import annotations

from m2pt_deploy.inputs.seeded import seeded_inputs
from m2pt_deploy.runtime.runners import TorchRunner, onnxrt_runner, run_runners
from m2pt_deploy.verify.harness import assert_equivalent, check_inputs, load_onnx, verify_onnx
from m2pt_deploy.verify.metrics import ErrorStats, error_stats
from m2pt_deploy.verify.numerics import check_merge, compare_runners
from m2pt_deploy.verify.result import CheckResult, StructureResult, VerificationReport, judge
from m2pt_deploy.verify.structure import check_structure, graph_signature, structure_differences
from m2pt_deploy.verify.tolerance import BITWISE, PROBE_HEAD, TOLERANCES, Tolerance, tolerance_for

__all__ = [
    "BITWISE",
    "PROBE_HEAD",
    "TOLERANCES",
    "CheckResult",
    "ErrorStats",
    "StructureResult",
    "Tolerance",
    "TorchRunner",
    "VerificationReport",
    "assert_equivalent",
    "check_inputs",
    "check_merge",
    "check_structure",
    "compare_runners",
    "error_stats",
    "graph_signature",
    "judge",
    "load_onnx",
    "onnxrt_runner",
    "run_runners",
    "seeded_inputs",
    "structure_differences",
    "tolerance_for",
    "verify_onnx",
]
