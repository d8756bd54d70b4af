"""A closed-loop load generator for KServe v2 servers, bounded in requests and in time.

Each client is a thread with one keep-alive HTTP connection (or one gRPC channel) that sends its
next request as soon as the previous one is answered, so ``clients`` is the number of requests in
flight. gRPC clients send pre-serialized ``ModelInferRequest`` bytes, so neither protocol pays for
building its message in the timed loop.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import socket
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from m2pt_deploy.serving.protocol import HEADER_LENGTH

__all__ = ["LoadResult", "binary_infer_body", "grpc_infer_request", "merge_results", "run_grpc_load",
           "run_load"]


@dataclasses.dataclass
class LoadResult:
    clients: int
    requests: int
    errors: int
    seconds: float
    latencies_ms: list[float]
    error_samples: list[str]

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {"clients": self.clients, "requests": self.requests, "errors": self.errors,
                "seconds": round(self.seconds, 3), "throughput_rps": round(self.throughput, 2),
                "p50_ms": round(self.percentile(50), 2), "p95_ms": round(self.percentile(95), 2),
                "p99_ms": round(self.percentile(99), 2), "error_samples": self.error_samples[:5]}


def merge_results(parts: list[LoadResult]) -> LoadResult:
    """Rounds of one setting, measured in turn with another's, as one result."""
    return LoadResult(parts[0].clients, sum(p.requests for p in parts), sum(p.errors for p in parts),
                      sum(p.seconds for p in parts), [x for p in parts for x in p.latencies_ms],
                      [x for p in parts for x in p.error_samples])


def binary_infer_body(inputs: Mapping[str, np.ndarray], datatypes: Mapping[str, str]) -> tuple[bytes, dict[str, str]]:
    """One binary-extension request asking for every output in binary."""
    header = json.dumps({
        "inputs": [{"name": n, "shape": list(a.shape), "datatype": datatypes[n],
                    "parameters": {"binary_data_size": a.nbytes}} for n, a in inputs.items()],
        "parameters": {"binary_data_output": True},
    }).encode()
    body = header + b"".join(np.ascontiguousarray(a).tobytes() for a in inputs.values())
    return body, {HEADER_LENGTH: str(len(header)), "Content-Type": "application/octet-stream"}


class _Budget:
    """Hands out request slots until the count or the deadline runs out."""

    def __init__(self, requests: int, seconds: float) -> None:
        self._left, self._deadline = requests, time.perf_counter() + seconds
        self._lock = threading.Lock()

    def take(self) -> bool:
        with self._lock:
            if self._left <= 0 or time.perf_counter() >= self._deadline:
                return False
            self._left -= 1
            return True


def _connect(host: str, port: int) -> http.client.HTTPConnection:
    conn = http.client.HTTPConnection(host, port, timeout=60)
    conn.connect()
    # http.client writes headers and body in two sends; without TCP_NODELAY, Nagle's algorithm
    # and delayed ACKs add ~40 ms to every request and the benchmark measures TCP, not the server.
    conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return conn


def _client(host: str, port: int, path: str, body: bytes, headers: dict[str, str],
            budget: _Budget, latencies: list[float], errors: list[str]) -> None:
    conn = _connect(host, port)
    try:
        while budget.take():
            start = time.perf_counter()
            try:
                conn.request("POST", path, body, headers)
                response = conn.getresponse()
                payload = response.read()
            except (OSError, http.client.HTTPException) as e:
                errors.append(f"{type(e).__name__}: {e}")
                conn.close()
                conn = _connect(host, port)
                continue
            if response.status == 200:
                latencies.append((time.perf_counter() - start) * 1000)
            else:
                errors.append(f"{response.status}: {payload[:200]!r}")
    finally:
        conn.close()


def run_load(host: str, port: int, path: str, body: bytes, headers: dict[str, str], *,
             clients: int, max_requests: int, max_seconds: float) -> LoadResult:
    return _run(clients, max_requests, max_seconds,
                lambda budget, latencies, errors: _client(host, port, path, body, dict(headers),
                                                          budget, latencies, errors))


def grpc_infer_request(model: str, inputs: Mapping[str, np.ndarray], datatypes: Mapping[str, str]) -> bytes:
    """A serialized ``ModelInferRequest`` with raw input contents, as ``tritonclient.grpc`` sends."""
    from tritonclient.grpc import service_pb2

    request = service_pb2.ModelInferRequest(model_name=model)
    for name, array in inputs.items():
        request.inputs.add(name=name, datatype=datatypes[name], shape=list(array.shape))
        request.raw_input_contents.append(np.ascontiguousarray(array).tobytes())
    return request.SerializeToString()  # type: ignore[no-any-return]


def _grpc_client(target: str, request: bytes, budget: _Budget, latencies: list[float],
                 errors: list[str]) -> None:
    import grpc

    with grpc.insecure_channel(target, options=[("grpc.max_receive_message_length", -1)]) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        while budget.take():
            start = time.perf_counter()
            try:
                call(request, timeout=60)
            except grpc.RpcError as e:
                errors.append(f"{e.code().name}: {e.details()}")
                continue
            latencies.append((time.perf_counter() - start) * 1000)


def run_grpc_load(target: str, request: bytes, *, clients: int, max_requests: int,
                  max_seconds: float) -> LoadResult:
    """As :func:`run_load`, over KServe v2 gRPC to ``host:port`` with one channel per client."""
    return _run(clients, max_requests, max_seconds,
                lambda budget, latencies, errors: _grpc_client(target, request, budget, latencies, errors))


def _run(clients: int, max_requests: int, max_seconds: float,
         client: Callable[[_Budget, list[float], list[str]], None]) -> LoadResult:
    budget = _Budget(max_requests, max_seconds)
    latencies: list[float] = []
    errors: list[str] = []
    threads = [threading.Thread(target=client, args=(budget, latencies, errors), daemon=True)
               for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return LoadResult(clients, len(latencies), len(errors), time.perf_counter() - start,
                      latencies, errors)
