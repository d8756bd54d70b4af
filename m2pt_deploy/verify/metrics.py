"""Error statistics between a reference output and a candidate: pure NumPy, no runtime."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

__all__ = ["ErrorStats", "error_stats"]

# Relative error divides by |reference|; logits near zero would make it explode, so the
# denominator is floored. The relative figures are reported, never checked.
_REL_FLOOR = 1e-6


@dataclasses.dataclass(frozen=True)
class ErrorStats:
    """How far ``candidate`` is from ``reference``, over all elements and per sample.

    ``cosine`` is the smallest per-sample cosine similarity, so one bad sample shows.
    ``top1_agree`` counts samples whose arg-max over the last axis is the same.
    """

    shape: tuple[int, ...]
    bitwise_equal: bool
    max_abs: float
    mean_abs: float
    p99_abs: float
    max_rel: float
    mean_rel: float
    p99_rel: float
    cosine: float
    top1_agree: int
    top1_total: int

    @property
    def top1_rate(self) -> float:
        return self.top1_agree / self.top1_total if self.top1_total else 1.0

    @property
    def finite(self) -> bool:
        return all(math.isfinite(v) for v in (self.max_abs, self.max_rel, self.cosine))

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["shape"] = list(self.shape)
        # Strict JSON has no NaN: a non-finite figure is written as null.
        return {
            k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in out.items()
        }


def _min_cosine(reference: np.ndarray, candidate: np.ndarray) -> float:
    ref = reference.reshape(reference.shape[0], -1) if reference.ndim > 1 else reference[None]
    cand = candidate.reshape(ref.shape)
    dot = np.sum(ref * cand, axis=1)
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(cand, axis=1)
    # Two all-zero samples are the same vector; one all-zero sample is not like the other.
    both_zero = norms == 0
    same = np.all(ref == cand, axis=1)
    cos = np.where(both_zero, np.where(same, 1.0, 0.0), dot / np.where(both_zero, 1.0, norms))
    return float(np.min(cos))


def error_stats(reference: np.ndarray, candidate: np.ndarray) -> ErrorStats:
    """Compare two equally shaped arrays, computed in float64."""
    if reference.shape != candidate.shape:
        raise ValueError(f"shape {reference.shape} vs {candidate.shape}")
    ref = np.asarray(reference, dtype=np.float64)
    cand = np.asarray(candidate, dtype=np.float64)
    abs_err = np.abs(cand - ref)
    rel_err = abs_err / np.maximum(np.abs(ref), _REL_FLOOR)
    if ref.ndim >= 1 and ref.size:
        rows = ref.reshape(-1, ref.shape[-1])
        agree = rows.argmax(axis=1) == cand.reshape(rows.shape).argmax(axis=1)
        top1_agree, top1_total = int(agree.sum()), int(agree.size)
    else:
        top1_agree = top1_total = 0
    return ErrorStats(
        shape=tuple(reference.shape),
        bitwise_equal=bool(np.array_equal(reference, candidate)),
        max_abs=float(abs_err.max(initial=0.0)),
        mean_abs=float(abs_err.mean()) if abs_err.size else 0.0,
        p99_abs=float(np.percentile(abs_err, 99)) if abs_err.size else 0.0,
        max_rel=float(rel_err.max(initial=0.0)),
        mean_rel=float(rel_err.mean()) if rel_err.size else 0.0,
        p99_rel=float(np.percentile(rel_err, 99)) if rel_err.size else 0.0,
        cosine=_min_cosine(ref, cand) if ref.size else 1.0,
        top1_agree=top1_agree,
        top1_total=top1_total,
    )
