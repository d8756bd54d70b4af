"""m2pt-serve-bench: throughput and latency of m2pt-serve with dynamic batching off and on.

Two servers run side by side on loopback (``--max-batch 1`` and ``--max-batch N``); at each
concurrency level the same bounded closed-loop load hits them in alternating rounds, so a
change in the machine's load (a shared box) falls on both settings alike. Reports
requests/s, p50/p95/p99 latency, errors and each server's peak memory, as JSON and a table.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from m2pt_deploy.cli.common import EXIT_CHECK_FAILED, EXIT_OK, HelpFormatter, add_output_args, add_version, run_main
from m2pt_deploy.errors import M2ptError
from m2pt_deploy.fileio import atomic_output, check_output_path

__all__ = ["build_parser", "entrypoint", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(formatter_class=HelpFormatter, 
        prog="m2pt-serve-bench",
        description="Benchmark m2pt-serve on loopback: dynamic batching off vs on at several "
                    "client counts, bounded in requests and time per level.",
    )
    add_version(parser)
    parser.add_argument("model", metavar="MODEL.onnx", help="an exported .onnx file")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32], metavar="N",
                        help="concurrent clients per level (default: 1 8 32)")
    parser.add_argument("--requests", type=int, default=300, metavar="N",
                        help="most requests per level and mode (default: 300)")
    parser.add_argument("--duration-s", type=float, default=15.0, metavar="S",
                        help="most seconds per level and mode (default: 15)")
    parser.add_argument("--max-batch", type=int, default=32, metavar="N",
                        help="max batch of the batching server (default: 32)")
    parser.add_argument("--max-delay-ms", type=float, default=5.0, metavar="T",
                        help="max delay of the batching server (default: 5)")
    parser.add_argument("--threads", type=int, default=0, metavar="N",
                        help="m2pt-serve --threads for both servers (default: 0, one per physical core)")
    parser.add_argument("--rounds", type=int, default=3, metavar="N",
                        help="alternating off/on rounds per level, sharing its budget (default: 3)")
    parser.add_argument("--warmup", type=int, default=10, metavar="N",
                        help="requests per server before measuring (default: 10)")
    add_output_args(parser, default_help="no file; the table is printed either way")
    return parser


def _peak_rss_mb(pid: int) -> float | None:
    status = Path(f"/proc/{pid}/status")
    if not status.is_file():
        return None
    match = re.search(r"^VmHWM:\s*(\d+) kB", status.read_text(), re.MULTILINE)
    return round(int(match.group(1)) / 1024, 1) if match else None


class _Server:
    def __init__(self, model: str, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "m2pt_deploy.cli.serve", model, "--port", "0", "--grpc-port", "0", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
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


def _request(model_path: str) -> tuple[dict[str, Any], bytes, dict[str, str], Any]:
    """One batch-1 binary request for the model, and ONNX Runtime's own answer to it."""
    import numpy as np

    from m2pt_deploy.serving.loadgen import binary_infer_body
    from m2pt_deploy.serving.runtime import OrtModel

    model = OrtModel(Path(model_path).stem, model_path, providers=["CPUExecutionProvider"])
    spec, output = model.inputs[0], model.outputs[0]
    shape = [1 if d == -1 else d for d in spec.shape]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    body, headers = binary_infer_body({spec.name: x}, {spec.name: spec.datatype})
    info = {"path": model_path, "name": model.name, "input_shape": shape,
            "arch": model.metadata.get("m2pt_deploy.arch"),
            "model_kwargs": model.metadata.get("m2pt_deploy.model_kwargs")}
    return info, body, headers, model.run({spec.name: x})[output.name]


def _check_output(server: _Server, name: str, body: bytes, headers: dict[str, str], want: Any) -> None:
    import numpy as np

    request = urllib.request.Request(f"http://{server.host}:{server.port}/v2/models/{name}/infer",
                                     data=body, headers=headers, method="POST")
    with urllib.request.urlopen(request, timeout=60) as r:
        payload, n = r.read(), int(r.headers["Inference-Header-Content-Length"])
    got = np.frombuffer(payload[n:], np.float32).reshape(want.shape)
    if not np.array_equal(got, want):
        raise M2ptError(f"server output differs from ONNX Runtime by {np.abs(got - want).max():.3g}")


def table(report: dict[str, Any]) -> str:
    lines = ["| clients | batching | req/s | p50 ms | p95 ms | p99 ms | errors | speed-up |",
             "|---:|---|---:|---:|---:|---:|---:|---:|"]
    for level in report["levels"]:
        for mode in ("off", "on"):
            r = level[mode]
            ratio = f"{level['speedup']:.2f}x" if mode == "on" else ""
            lines.append(f"| {level['clients']} | {mode} | {r['throughput_rps']:.1f} | {r['p50_ms']:.1f} | "
                         f"{r['p95_ms']:.1f} | {r['p99_ms']:.1f} | {r['errors']} | {ratio} |")
    peaks = report["peak_rss_mb"]
    lines.append(f"\npeak server memory (RSS): batching off {peaks['off']} MiB, on {peaks['on']} MiB")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from m2pt_deploy.serving.loadgen import merge_results, run_load
    from m2pt_deploy.serving.runtime import find_models

    if args.output:
        check_output_path(args.output, force=args.force)
    if min(*args.clients, args.requests, args.rounds) < 1 or args.max_batch < 2:
        raise M2ptError("--clients, --requests and --rounds must be at least 1, --max-batch at least 2")
    (model_path, _, _), = find_models(args.model).values()
    info, body, headers, want = _request(str(model_path))
    name = info["name"]
    common = ("--max-queue", "1024", "--threads", str(args.threads))
    servers = {"off": _Server(str(model_path), "--max-batch", "1", *common),
               "on": _Server(str(model_path), "--max-batch", str(args.max_batch),
                             "--max-delay-ms", str(args.max_delay_ms), *common)}
    try:
        for server in servers.values():
            _check_output(server, name, body, headers, want)
            run_load(server.host, server.port, f"/v2/models/{name}/infer", body, headers,
                     clients=1, max_requests=args.warmup, max_seconds=30)
        levels = []
        for clients in args.clients:
            parts: dict[str, list[Any]] = {mode: [] for mode in servers}
            for r in range(args.rounds):
                share = args.requests // args.rounds + (r < args.requests % args.rounds)
                for mode, server in servers.items():
                    parts[mode].append(run_load(
                        server.host, server.port, f"/v2/models/{name}/infer", body, headers,
                        clients=clients, max_requests=share, max_seconds=args.duration_s / args.rounds))
            level: dict[str, Any] = {"clients": clients}
            for mode in servers:
                result = merge_results(parts[mode])
                level[mode] = result.to_dict()
                print(f"{clients:>3} clients, batching {mode:>3}: {result.throughput:8.1f} req/s, "
                      f"p50 {result.percentile(50):.1f} ms, errors {result.errors}", file=sys.stderr)
            level["speedup"] = round(level["on"]["throughput_rps"] / max(level["off"]["throughput_rps"], 1e-9), 3)
            levels.append(level)
        peaks = {mode: _peak_rss_mb(server.proc.pid) for mode, server in servers.items()}
    finally:
        for server in servers.values():
            server.stop()
    from m2pt_deploy.verify.machine import machine_info  # imports torch: not before --help

    report = {
        "machine": machine_info(), "model": info,
        "settings": {"requests_per_level": args.requests, "seconds_per_level": args.duration_s,
                     "rounds": args.rounds, "threads": args.threads,
                     "max_batch": args.max_batch, "max_delay_ms": args.max_delay_ms,
                     "protocol": "KServe v2 binary tensors over HTTP/1.1 keep-alive, loopback"},
        "levels": levels, "peak_rss_mb": peaks,
        "errors": sum(level[m]["errors"] for level in levels for m in ("off", "on")),
    }
    print(table(report))
    if args.output:
        with atomic_output(args.output, force=args.force) as tmp:
            tmp.write_text(json.dumps(report, indent=2) + "\n")
    return EXIT_OK if report["errors"] == 0 else EXIT_CHECK_FAILED


def entrypoint() -> None:
    sys.exit(run_main(main))


if __name__ == "__main__":
    entrypoint()
