"""Verification results are values: truthy when they pass, one readable line each."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from m2pt_deploy.fileio import atomic_output
from m2pt_deploy.verify.metrics import ErrorStats, error_stats
from m2pt_deploy.verify.tolerance import Tolerance

__all__ = ["CheckResult", "StructureResult", "VerificationReport", "judge"]


def _status(passed: bool) -> str:
    return "PASSED" if passed else "FAILED"


@dataclasses.dataclass(frozen=True)
class CheckResult:
    """One output of one candidate against its reference, judged by a :class:`Tolerance`."""

    check: str
    reference: str
    candidate: str
    output: str
    stats: ErrorStats | None
    tolerance: Tolerance
    problems: tuple[str, ...]
    note: str = ""

    @property
    def passed(self) -> bool:
        return not self.problems

    def __bool__(self) -> bool:
        return self.passed

    def _figure(self) -> str:
        s, tol = self.stats, self.tolerance
        if s is None:
            return "not comparable"
        if tol.bitwise:
            return (
                "bit-identical"
                if s.bitwise_equal
                else f"max abs {s.max_abs:.1e} (bit-identical required)"
            )
        if tol.max_abs is not None:
            return f"max abs {s.max_abs:.1e} (tol {tol.max_abs:.0e})"
        if tol.min_cosine is not None:
            return f"cosine {s.cosine:.6f} (tol {tol.min_cosine})"
        return f"max abs {s.max_abs:.1e}"

    def row(self) -> tuple[str, ...]:
        top1 = f"top-1 {self.stats.top1_agree}/{self.stats.top1_total}" if self.stats else ""
        extra = [self.note] if self.note else []
        extra += list(self.problems)
        return (
            _status(self.passed),
            self.check,
            f"{self.candidate} vs {self.reference}",
            self.output,
            self._figure(),
            top1,
            "; ".join(extra),
        )

    def __str__(self) -> str:
        return " | ".join(c for c in self.row() if c)

    def to_dict(self) -> dict[str, Any]:
        return {
            "check": self.check,
            "passed": self.passed,
            "reference": self.reference,
            "candidate": self.candidate,
            "output": self.output,
            "stats": self.stats.to_dict() if self.stats else None,
            "tolerance": self.tolerance.to_dict(),
            "problems": list(self.problems),
            "note": self.note,
        }


def judge(
    check: str,
    reference: tuple[str, np.ndarray],
    candidate: tuple[str, np.ndarray],
    *,
    output: str,
    tolerance: Tolerance,
    note: str = "",
) -> CheckResult:
    """Compare ``candidate`` to ``reference`` (each a ``(name, array)``) within ``tolerance``."""
    (ref_name, ref), (cand_name, cand) = reference, candidate
    if ref.shape != cand.shape:
        return CheckResult(
            check,
            ref_name,
            cand_name,
            output,
            None,
            tolerance,
            (f"shape {tuple(cand.shape)} vs {tuple(ref.shape)}",),
            note,
        )
    stats = error_stats(ref, cand)
    return CheckResult(
        check, ref_name, cand_name, output, stats, tolerance, tuple(tolerance.failures(stats)), note
    )


@dataclasses.dataclass(frozen=True)
class StructureResult:
    """The exported graph against a vanilla ViT's export: every difference, both values."""

    reference: str
    summary: str
    differences: tuple[str, ...]

    @property
    def passed(self) -> bool:
        return not self.differences

    def __bool__(self) -> bool:
        return self.passed

    def row(self) -> tuple[str, ...]:
        verdict = "identical" if self.passed else f"{len(self.differences)} difference(s)"
        return (
            _status(self.passed),
            "structure",
            f"onnx vs {self.reference}",
            "graph",
            self.summary,
            verdict,
            "; ".join(self.differences[:3]),
        )

    def __str__(self) -> str:
        return " | ".join(c for c in self.row() if c)

    def to_dict(self) -> dict[str, Any]:
        return {
            "check": "structure",
            "passed": self.passed,
            "reference": self.reference,
            "summary": self.summary,
            "differences": list(self.differences),
        }


Result = CheckResult | StructureResult


def _table(rows: Sequence[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for r in rows:
        cells = [(c, w) for c, w in zip(r, widths, strict=True) if w]
        while cells and not cells[-1][0]:
            cells.pop()
        lines.append(" | ".join(c.ljust(w) for c, w in cells).rstrip())
    return lines


@dataclasses.dataclass(frozen=True)
class VerificationReport:
    """All checks of one ONNX file against its checkpoint; truthy iff every check passed."""

    onnx: str
    checkpoint: str
    precision: str
    inputs: dict[str, Any]
    results: tuple[Result, ...]
    notes: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        return bool(self.results) and all(self.results)

    def __bool__(self) -> bool:
        return self.passed

    @property
    def failures(self) -> list[Result]:
        return [r for r in self.results if not r]

    def __str__(self) -> str:
        head = (
            f"verify {self.onnx} against {self.checkpoint} "
            f"({self.precision}, inputs: {self.inputs.get('description', '')})"
        )
        lines = [head, *("  " + line for line in _table([r.row() for r in self.results]))]
        for r in self.results:
            if isinstance(r, StructureResult) and len(r.differences) > 3:
                lines += [f"    structure: {d}" for d in r.differences[3:]]
        lines += [f"  note: {n}" for n in self.notes]
        n_ok = sum(bool(r) for r in self.results)
        lines.append(f"{_status(self.passed)}: {n_ok}/{len(self.results)} checks passed")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "onnx": self.onnx,
            "checkpoint": self.checkpoint,
            "precision": self.precision,
            "inputs": self.inputs,
            "checks": [r.to_dict() for r in self.results],
            "notes": list(self.notes),
        }

    def write_json(self, path: str | os.PathLike[str], *, force: bool = False) -> Path:
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True, allow_nan=False)
        with atomic_output(path, force=force) as tmp:
            tmp.write_text(text + "\n")
        return Path(path)
