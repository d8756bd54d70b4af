"""The statistics extension: per-model counts and cumulative durations in Triton's schema.

What each duration covers here (Triton's names, our pipeline):

- ``success`` / ``fail``: an infer request for a served model, from its arrival (first byte over
  HTTP, the whole message over gRPC) to its answer, by outcome;
- ``queue``: from the request entering the batcher's queue to its model call starting;
- ``compute_input``: stacking the batch's inputs (``np.concatenate``);
- ``compute_infer``: the ONNX Runtime call;
- ``compute_output``: splitting the outputs back into each request's rows.

As in Triton, ``inference_stats.compute_*`` add a batch's duration once per request in it, and
``batch_stats`` once per model call, by rows. Body reading, parsing and response encoding are part
of ``success`` only. Everything here runs on the event loop, so no lock is needed.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

__all__ = ["BatchRun", "ModelStatistics"]

# Distinct batch sizes kept in batch_stats: a client sending ever-new row counts (each request
# larger than --max-batch runs alone) cannot grow this without bound.
_MAX_BATCH_SIZES = 1024
_KINDS = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")


@dataclasses.dataclass(frozen=True)
class BatchRun:
    """One model call as the batcher saw it; durations in nanoseconds."""

    rows: int
    queue_ns: tuple[int, ...]  # one per request in the call
    input_ns: int
    infer_ns: int
    output_ns: int


@dataclasses.dataclass
class _Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += ns

    def to_dict(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


class ModelStatistics:
    """The counters of one model version, rendered as Triton's ``model_stats`` entry."""

    def __init__(self, name: str, version: str) -> None:
        self.name, self.version = name, version
        self.last_inference_ms = 0
        self.inference_count = 0
        self.execution_count = 0
        self._durations = {kind: _Duration() for kind in _KINDS}
        self._batches: dict[int, tuple[_Duration, _Duration, _Duration]] = {}

    def request_done(self, ns: int, *, ok: bool) -> None:
        self._durations["success" if ok else "fail"].add(ns)

    def batch_done(self, run: BatchRun) -> None:
        requests = len(run.queue_ns)
        self.last_inference_ms = time.time_ns() // 1_000_000
        self.inference_count += run.rows
        self.execution_count += 1
        d = self._durations
        d["queue"].add(sum(run.queue_ns), requests)
        d["compute_input"].add(run.input_ns * requests, requests)
        d["compute_infer"].add(run.infer_ns * requests, requests)
        d["compute_output"].add(run.output_ns * requests, requests)
        batch = self._batches.get(run.rows)
        if batch is None and len(self._batches) < _MAX_BATCH_SIZES:
            batch = self._batches[run.rows] = (_Duration(), _Duration(), _Duration())
        if batch is not None:
            for duration, ns in zip(batch, (run.input_ns, run.infer_ns, run.output_ns), strict=True):
                duration.add(ns)

    def to_dict(self) -> dict[str, Any]:
        """Triton's JSON for one model (``GET /v2/models/{name}/stats`` lists these)."""
        stats = {kind: d.to_dict() for kind, d in self._durations.items()}
        stats["cache_hit"] = stats["cache_miss"] = {"count": 0, "ns": 0}  # no response cache
        return {
            "name": self.name, "version": self.version,
            "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count, "execution_count": self.execution_count,
            "inference_stats": stats,
            "batch_stats": [
                {"batch_size": rows, "compute_input": i.to_dict(), "compute_infer": n.to_dict(),
                 "compute_output": o.to_dict()}
                for rows, (i, n, o) in sorted(self._batches.items())
            ],
            "memory_usage": [],
            "response_stats": {},
        }
