"""m2pt-serve under load on loopback: HTTP with dynamic batching off and on, and gRPC.

Three ``m2pt-serve`` processes run side by side: HTTP with ``--max-batch 1`` (``off``), HTTP with
batching (``on``) and gRPC with the same batching (``grpc``; its own process, so each mode's peak
memory is its own). At each concurrency level the same bounded closed-loop load hits them in
alternating rounds, so a change in the machine's load (a shared box) falls on every mode alike.
Each server's output is first checked equal to ONNX Runtime's.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from m2pt_deploy.errors import M2ptError
from m2pt_deploy.metadata import ARCH_KEY, MODEL_KWARGS_KEY

__all__ = ["MODES", "run_serving_benchmark", "serving_table"]

MODES = ("off", "on", "grpc")
_LABELS = {"off": "off", "on": "on", "grpc": "on (gRPC)"}


def _peak_rss_mb(pid: int) -> float | None:
    status = Path(f"/proc/{pid}/status")
    if not status.is_file():
        return None
    match = re.search(r"^VmHWM:\s*(\d+) kB", status.read_text(), re.MULTILINE)
    return round(int(match.group(1)) / 1024, 1) if match else None


class _Server:
    """One m2pt-serve child on free ports; ``host``, ``port`` and ``grpc_target`` once ready."""

    def __init__(self, command: Sequence[str], model: str, *args: str) -> None:
        self.proc = subprocess.Popen(
            [*command, model, "--port", "0", "--grpc-port", "0", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.grpc_target = ""
        for line in self.proc.stdout:
            grpc = re.match(r"serving gRPC on (\S+)", line)
            if grpc:
                self.grpc_target = grpc.group(1)
            match = re.match(r"serving on http://([\d.]+):(\d+)", line)
            if match:
                self.host, self.port = match.group(1), int(match.group(2))
                break
        else:
            stderr = self.proc.stderr.read().strip() if self.proc.stderr else ""
            raise M2ptError(f"m2pt-serve did not start: {stderr}", model)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://{self.host}:{self.port}/v2/health/ready", timeout=2):
                    return
            except OSError:
                time.sleep(0.05)
        raise M2ptError("m2pt-serve never became ready", model)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class _Load:
    """One batch-1 request for the model in both protocols, and ONNX Runtime's own answer to it."""

    def __init__(self, model_path: str) -> None:
        import numpy as np

        from m2pt_deploy.serving.loadgen import binary_infer_body, grpc_infer_request
        from m2pt_deploy.serving.runtime import OrtModel

        model = OrtModel(Path(model_path).stem, model_path, providers=["CPUExecutionProvider"])
        spec, output = model.inputs[0], model.outputs[0]
        shape = [1 if d == -1 else d for d in spec.shape]
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        self.name = model.name
        self.body, self.headers = binary_infer_body({spec.name: x}, {spec.name: spec.datatype})
        self.grpc_request = grpc_infer_request(model.name, {spec.name: x}, {spec.name: spec.datatype})
        self.want = model.run({spec.name: x})[output.name]
        self.info = {"path": model_path, "name": model.name, "input_shape": shape,
                     "arch": ARCH_KEY.get(model.metadata),
                     "model_kwargs": MODEL_KWARGS_KEY.get(model.metadata)}

    def check(self, server: _Server, mode: str) -> None:
        import numpy as np

        if mode == "grpc":
            import grpc
            from tritonclient.grpc import service_pb2

            with grpc.insecure_channel(server.grpc_target) as channel:
                raw = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")(
                    self.grpc_request, timeout=60)
            payload = service_pb2.ModelInferResponse.FromString(raw).raw_output_contents[0]
        else:
            request = urllib.request.Request(f"http://{server.host}:{server.port}/v2/models/{self.name}/infer",
                                             data=self.body, headers=self.headers, method="POST")
            with urllib.request.urlopen(request, timeout=60) as r:
                body, n = r.read(), int(r.headers["Inference-Header-Content-Length"])
            payload = body[n:]
        got = np.frombuffer(payload, np.float32).reshape(self.want.shape)
        if not np.array_equal(got, self.want):
            raise M2ptError(f"{mode} server output differs from ONNX Runtime by "
                            f"{np.abs(got - self.want).max():.3g}")

    def run(self, server: _Server, mode: str, *, clients: int, max_requests: int, max_seconds: float) -> Any:
        from m2pt_deploy.serving.loadgen import run_grpc_load, run_load

        if mode == "grpc":
            return run_grpc_load(server.grpc_target, self.grpc_request, clients=clients,
                                 max_requests=max_requests, max_seconds=max_seconds)
        return run_load(server.host, server.port, f"/v2/models/{self.name}/infer", self.body, self.headers,
                        clients=clients, max_requests=max_requests, max_seconds=max_seconds)


def run_serving_benchmark(
    model: str,
    *,
    serve_command: Sequence[str],
    clients: tuple[int, ...] = (1, 8, 32),
    requests: int = 300,
    duration_s: float = 15.0,
    max_batch: int = 32,
    max_delay_ms: float = 5.0,
    threads: int = 0,
    rounds: int = 3,
    warmup: int = 10,
    progress: bool = True,
) -> dict[str, Any]:
    """Benchmark ``m2pt-serve`` serving ``model`` (an .onnx file or a one-model repository);
    ``serve_command`` starts the server (the CLI passes its own ``m2pt-serve``).

    Returns the report: ``machine``, ``model``, ``settings``, ``levels`` (per client count, per
    mode: requests/s, p50/p95/p99 ms, errors; ``speedup`` = batching on / off over HTTP,
    ``grpc_vs_http`` = gRPC / HTTP with batching on), ``peak_rss_mb`` per mode and ``errors``.
    """
    from m2pt_deploy.serving.loadgen import merge_results
    from m2pt_deploy.serving.runtime import find_models

    if min(*clients, requests, rounds) < 1 or max_batch < 2:
        raise M2ptError("--clients, --requests and --rounds must be at least 1, --max-batch at least 2")
    (model_path, _, _), = find_models(model).values()
    load = _Load(str(model_path))
    common = ("--max-queue", "1024", "--threads", str(threads))
    batching = ("--max-batch", str(max_batch), "--max-delay-ms", str(max_delay_ms), *common)
    servers: dict[str, _Server] = {}
    try:
        servers["off"] = _Server(serve_command, str(model_path), "--max-batch", "1", *common)
        servers["on"] = _Server(serve_command, str(model_path), *batching)
        servers["grpc"] = _Server(serve_command, str(model_path), *batching)
        for mode, server in servers.items():
            load.check(server, mode)
            load.run(server, mode, clients=1, max_requests=warmup, max_seconds=30)
        levels = []
        for n in clients:
            parts: dict[str, list[Any]] = {mode: [] for mode in MODES}
            for r in range(rounds):
                share = requests // rounds + (r < requests % rounds)
                for mode in MODES:
                    parts[mode].append(load.run(servers[mode], mode, clients=n, max_requests=share,
                                                max_seconds=duration_s / rounds))
            level: dict[str, Any] = {"clients": n}
            for mode in MODES:
                result = merge_results(parts[mode])
                level[mode] = result.to_dict()
                if progress:
                    print(f"{n:>3} clients, {_LABELS[mode]:>9}: {result.throughput:8.1f} req/s, "
                          f"p50 {result.percentile(50):.1f} ms, errors {result.errors}", file=sys.stderr)
            level["speedup"] = round(level["on"]["throughput_rps"] / max(level["off"]["throughput_rps"], 1e-9), 3)
            level["grpc_vs_http"] = round(level["grpc"]["throughput_rps"] / max(level["on"]["throughput_rps"], 1e-9),
                                          3)
            levels.append(level)
        peaks = {mode: _peak_rss_mb(server.proc.pid) for mode, server in servers.items()}
    finally:
        for server in servers.values():
            server.stop()
    from m2pt_deploy.bench.machine import machine_info  # imports torch: not before the work

    return {
        "machine": machine_info(), "model": load.info,
        "settings": {"requests_per_level": requests, "seconds_per_level": duration_s,
                     "rounds": rounds, "threads": threads,
                     "max_batch": max_batch, "max_delay_ms": max_delay_ms,
                     "protocol": "KServe v2 binary tensors over HTTP/1.1 keep-alive (off, on) and raw "
                                 "tensor contents over gRPC, one channel per client (grpc), loopback"},
        "levels": levels, "peak_rss_mb": peaks,
        "errors": sum(level[m]["errors"] for level in levels for m in MODES),
    }


def serving_table(report: dict[str, Any]) -> str:
    """The report as a Markdown table, one row per level and mode, then each server's peak RSS."""
    lines = ["| clients | protocol, batching | req/s | p50 ms | p95 ms | p99 ms | errors | ratio |",
             "|---:|---|---:|---:|---:|---:|---:|---:|"]
    for level in report["levels"]:
        for mode in MODES:
            r = level[mode]
            ratio = {"on": f"{level['speedup']:.2f}x on/off",
                     "grpc": f"{level['grpc_vs_http']:.2f}x gRPC/HTTP"}.get(mode, "")
            protocol = "gRPC" if mode == "grpc" else "HTTP"
            batching = "off" if mode == "off" else "on"
            lines.append(f"| {level['clients']} | {protocol}, {batching} | {r['throughput_rps']:.1f} | "
                         f"{r['p50_ms']:.1f} | {r['p95_ms']:.1f} | {r['p99_ms']:.1f} | {r['errors']} | {ratio} |")
    peaks = report["peak_rss_mb"]
    lines.append(f"\npeak server memory (RSS): HTTP batching off {peaks['off']} MiB, HTTP batching on "
                 f"{peaks['on']} MiB, gRPC batching on {peaks['grpc']} MiB")
    return "\n".join(lines)
