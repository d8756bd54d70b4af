"""Prometheus metrics for the server, on a registry of its own (one per app, so tests never share)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

__all__ = ["ServingMetrics"]

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServingMetrics:
    """Requests, errors, latency, batch size and queue depth, labelled by model and endpoint.

    The model label is only ever a served model's name (or empty): a client cannot grow the
    label set by asking for made-up models.
    """

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        # code: the HTTP status, or for gRPC the status code's name (OK, INVALID_ARGUMENT, ...)
        labels = ("model", "endpoint", "protocol")
        self.requests = Counter("m2pt_requests", "Requests answered, HTTP and gRPC",
                                (*labels, "code"), registry=self.registry)
        self.errors = Counter("m2pt_request_errors", "Requests answered with a 4xx or 5xx code, "
                              "or a gRPC status other than OK", (*labels, "code"), registry=self.registry)
        self.latency = Histogram("m2pt_request_latency_seconds", "Time from request to response",
                                 labels, buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.batch_size = Histogram("m2pt_batch_size", "Rows per model call after batching",
                                    ("model",), buckets=_BATCH_BUCKETS, registry=self.registry)
        self.queue_depth = Gauge("m2pt_queue_depth", "Requests waiting for the model",
                                 ("model",), registry=self.registry)

    def observe_request(self, model: str, endpoint: str, code: int | str, seconds: float | None, *,
                        protocol: Literal["http", "grpc"] = "http") -> None:
        """``code``: an HTTP status (an error from 400), or a gRPC status name (an error unless OK);
        ``seconds`` None for a call that was never timed (one refused by routing)."""
        self.requests.labels(model, endpoint, protocol, str(code)).inc()
        if code != "OK" and (isinstance(code, str) or code >= 400):
            self.errors.labels(model, endpoint, protocol, str(code)).inc()
        if seconds is not None:
            self.latency.labels(model, endpoint, protocol).observe(seconds)

    def observe_batch(self, model: str, rows: int) -> None:
        self.batch_size.labels(model).observe(rows)

    def track_queue(self, model: str, depth: Callable[[], int]) -> None:
        self.queue_depth.labels(model).set_function(depth)

    def forget(self, model: str) -> None:
        """An unloaded model's queue gauge goes (its counters stay: they are history)."""
        self.queue_depth.remove(model)

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST
