"""Issue 11's hostile-input probes against ``m2pt-serve``, measured: the figures for the closing note.

Exports the tiny 32x32 M2PT ViT the serving tests use (``tests/tiny.py``'s ``TINY``), starts
``python -m m2pt_deploy.cli.serve MODEL.onnx --port 0 --grpc-port 0`` on 127.0.0.1 and runs each
probe of the issue's table in turn. For every probe it records

* the HTTP status(es) and the start of the error message,
* the wall seconds of the probe,
* the server's RSS before, at its peak during the probe (VmRSS sampled every 20 ms, and VmHWM,
  reset through ``/proc/PID/clear_refs`` before the probe) and 2 s after it ends,
* the slowest ``GET /v2/health/ready`` seen by a poller that runs throughout the probe,
* the status of a normal one-image ``/infer`` request sent right after the probe,

and checks them against the issue's targets: RSS growth under 300 MB for a single request and under
700 MB for the three concurrent 60 MB bodies, health answered within 2 s, RSS back toward its
baseline (within 100 MB of it, or having given back at least half of the growth) and 200 for the
follow-up request. The stalled-upload probe runs on a second server with ``--max-delay-ms 200``,
the ``max_batch_size 4`` probe on a third serving a Triton-layout repository; the second variant of
the 60 MB bodies (short numbers, just under the JSON element limit) gets a fresh server of its own.

Everything is bounded by timeouts and talks to loopback only; the servers are stopped at the end.
Run from the repository root (takes about two minutes on two cores)::

    .venv/bin/python scripts/serving_probes.py [--out docs/bench/serving-probes.log] [--keep DIR]

The table goes to stdout and, with the CPU, the date and the commit, to ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import http.client
import io
import json
import os
import platform
import queue
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MB = 1e6
START_TIMEOUT_S = 120.0
HEALTH_TIMEOUT_S = 10.0
SINGLE_REQUEST_MB = 300.0
THREE_BODIES_MB = 700.0
HEALTH_TARGET_S = 2.0
SETTLE_S = 2.0
LATE_SETTLE_S = 20.0
BACK_TO_BASELINE_MB = 100.0


# --- model and server ------------------------------------------------------------------------


def export_tiny_model(workdir: Path) -> Path:
    """The serving tests' ``tiny_onnx``: a pathway ViT on 32x32 inputs with ten labels."""
    sys.path.insert(0, str(ROOT))
    from m2pt_deploy.export.onnx import OnnxFromCheckpoint, save_onnx
    from m2pt_deploy.model.checkpoint import save_checkpoint
    from m2pt_deploy.model.pathway import pathway_state_dict
    from tests.tiny import TINY, make_pathway_model, pathway_info

    model = make_pathway_model(TINY)
    ckpt = save_checkpoint(workdir / "tiny.safetensors", pathway_state_dict(model), TINY,
                           pathway=pathway_info(), extra={"labels": [f"class_{i}" for i in range(10)]}, force=True)
    return save_onnx(OnnxFromCheckpoint(ckpt)(), workdir / "vit.onnx", force=True)


class Server:
    """One ``m2pt-serve`` child process on free loopback ports; stdout drained, stderr to a file."""

    def __init__(self, model: Path, extra: Sequence[str], log: Path) -> None:
        self._log: IO[str] = log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "m2pt_deploy.cli.serve", str(model), "--host", "127.0.0.1",
             "--port", "0", "--grpc-port", "0", *extra],
            stdout=subprocess.PIPE, stderr=self._log, text=True, cwd=ROOT,
        )
        self.pid = self.proc.pid
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._drain, daemon=True).start()
        self.host, self.port = self._wait_for_address()

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def _wait_for_address(self) -> tuple[str, int]:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                line = self._lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                raise RuntimeError(f"m2pt-serve exited with {self.proc.wait()}")
            match = re.match(r"serving on http://(\S+):(\d+)", line)
            if match:
                return match.group(1), int(match.group(2))
        self.stop()
        raise RuntimeError("m2pt-serve printed no address in time")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()


# --- HTTP on loopback ------------------------------------------------------------------------


@dataclasses.dataclass
class Reply:
    status: int  # -1: no HTTP answer (the message says why)
    body: bytes
    seconds: float
    headers: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def error(self) -> str:
        """The ``error`` field of a JSON answer, else the start of the body."""
        try:
            doc = json.loads(self.body)
            text = str(doc.get("error", "")) if isinstance(doc, dict) else ""
        except ValueError:
            text = self.body.decode("utf-8", "replace")
        return " ".join(text.split())[:80]


def send(server: Server, method: str, path: str, body: bytes | None = None,
         headers: dict[str, str] | None = None, timeout: float = 60.0) -> Reply:
    start = time.perf_counter()
    conn = http.client.HTTPConnection(server.host, server.port, timeout=timeout)
    try:
        conn.request(method, path, body, headers or {})
        response = conn.getresponse()
        data = response.read()
        return Reply(response.status, data, time.perf_counter() - start,
                     {k.lower(): v for k, v in response.getheaders()})
    except (OSError, http.client.HTTPException) as e:
        return Reply(-1, f"{type(e).__name__}: {e}".encode(), time.perf_counter() - start)
    finally:
        conn.close()


def tensor_body(x: np.ndarray, name: str = "pixel_values") -> tuple[bytes, dict[str, str]]:
    """A KServe v2 binary-tensor request for FP32 ``x``."""
    raw = np.ascontiguousarray(x, np.float32).tobytes()
    header = json.dumps({"inputs": [{"name": name, "shape": list(x.shape), "datatype": "FP32",
                                     "parameters": {"binary_data_size": len(raw)}}]}).encode()
    return header + raw, {"Inference-Header-Content-Length": str(len(header))}


def pixels(rows: int = 1) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((rows, 3, 32, 32)).astype(np.float32)


def strict_json(body: bytes) -> bool:
    """Whether ``body`` is JSON by RFC 8259: no bare NaN / Infinity tokens."""

    def refuse(token: str) -> object:
        raise ValueError(token)

    try:
        json.loads(body, parse_constant=refuse)
    except ValueError:
        return False
    return True


# --- memory and health while a probe runs ----------------------------------------------------


def proc_status_kb(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def rss_mb(pid: int) -> float:
    return proc_status_kb(pid, "VmRSS") * 1024 / MB


def reset_hwm(pid: int) -> bool:
    """Reset VmHWM to the current RSS (``echo 5 > /proc/PID/clear_refs``); False where refused."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


class Watch:
    """Samples the server's VmRSS every 20 ms and polls its readiness route, in two threads."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.peak_mb = rss_mb(server.pid)
        self.health: list[float] = []
        self.health_failures = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._sample, daemon=True),
                         threading.Thread(target=self._poll, daemon=True)]

    def __enter__(self) -> Watch:
        self.hwm_reset = reset_hwm(self.server.pid)
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=HEALTH_TIMEOUT_S + 5)
        with contextlib.suppress(OSError, KeyError):
            hwm = proc_status_kb(self.server.pid, "VmHWM") * 1024 / MB
            if self.hwm_reset:
                self.peak_mb = max(self.peak_mb, hwm)

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            with contextlib.suppress(OSError, KeyError):
                self.peak_mb = max(self.peak_mb, rss_mb(self.server.pid))

    def _poll(self) -> None:
        while not self._stop.is_set():
            reply = send(self.server, "GET", "/v2/health/ready", timeout=HEALTH_TIMEOUT_S)
            self.health.append(reply.seconds)
            self.health_failures += reply.status != 200
            self._stop.wait(0.02)


# --- probes ----------------------------------------------------------------------------------


@dataclasses.dataclass
class Outcome:
    status: str
    error: str = ""
    note: str = ""
    ok: bool = True  # the answer is the one the issue asks for
    missed: str = ""  # why not, when not ok


@dataclasses.dataclass
class Row:
    probe: str
    expect: str
    outcome: Outcome
    wall_s: float
    rss_before: float
    rss_peak: float
    rss_after: float
    health_worst_s: float
    health_failures: int
    followup: int
    rss_limit: float

    def misses(self) -> list[str]:
        out = [self.outcome.missed] if not self.outcome.ok else []
        growth = self.rss_peak - self.rss_before
        if growth >= self.rss_limit:
            out.append(f"RSS grew {growth:.0f} MB (target < {self.rss_limit:.0f})")
        if self.health_worst_s >= HEALTH_TARGET_S or self.health_failures:
            out.append(f"health worst {self.health_worst_s:.2f} s, {self.health_failures} not 200")
        kept = self.rss_after - self.rss_before
        if kept > BACK_TO_BASELINE_MB and kept > growth / 2:
            out.append(f"RSS kept {kept:.0f} MB of {growth:.0f} MB growth after {SETTLE_S:.0f} s")
        if self.followup != 200:
            out.append(f"follow-up request got {self.followup}")
        return out


def measure(server: Server, model: str, probe: str, expect: str, action: Callable[[], Outcome],
            rss_limit: float = SINGLE_REQUEST_MB) -> Row:
    print(f"-- {probe}", flush=True)
    before = rss_mb(server.pid)
    with Watch(server) as watch:
        start = time.perf_counter()
        outcome = action()
        wall = time.perf_counter() - start
    body, headers = tensor_body(pixels())
    followup = send(server, "POST", f"/v2/models/{model}/infer", body, headers, timeout=30).status
    time.sleep(SETTLE_S)
    row = Row(probe, expect, outcome, wall, before, watch.peak_mb, rss_mb(server.pid),
              max(watch.health, default=float("nan")), watch.health_failures, followup, rss_limit)
    if any(m.startswith("RSS kept") for m in row.misses()):  # how long it does take, for the note
        waited, rss = SETTLE_S, row.rss_after
        while waited < LATE_SETTLE_S and rss - before > BACK_TO_BASELINE_MB:
            time.sleep(0.5)
            waited, rss = waited + 0.5, rss_mb(server.pid)
        outcome.note += f"; RSS {rss:.0f} MB {waited:.1f} s after the probe"
    print(f"   {outcome.status} {outcome.error} | {outcome.note} | misses: {row.misses() or 'none'}",
          flush=True)
    return row


def expecting(reply: Reply, status: int, note: str = "") -> Outcome:
    ok = reply.status == status
    return Outcome(str(reply.status), reply.error, note, ok, "" if ok else f"expected {status}")


def png(image: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG", optimize=True)  # type: ignore[attr-defined]
    return buf.getvalue()


def probe_strip(server: Server, model: str, height: int) -> Callable[[], Outcome]:
    from PIL import Image

    data = png(Image.new("RGB", (1, height), (120, 30, 200)))

    def run() -> Outcome:
        reply = send(server, "POST", f"/v2/models/{model}/classify", data, timeout=120)
        return expecting(reply, 413, f"{len(data)} B PNG")

    return run


def probe_deep_json(server: Server, model: str) -> Outcome:
    deep = b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    return expecting(send(server, "POST", f"/v2/models/{model}/infer", deep, timeout=60), 400)


def probe_nonfinite(server: Server, model: str) -> Outcome:
    replies = []
    for bad in (float("nan"), float("inf")):
        data = pixels().reshape(-1).tolist()
        data[5] = bad
        body = json.dumps({"inputs": [{"name": "pixel_values", "shape": [1, 3, 32, 32],
                                       "datatype": "FP32", "data": data}]}).encode()  # bare NaN / Infinity
        replies.append(send(server, "POST", f"/v2/models/{model}/infer", body, timeout=30))
    valid = all(strict_json(r.body) for r in replies)
    ok = all(r.status == 400 for r in replies) and valid
    return Outcome("/".join(str(r.status) for r in replies), replies[0].error,
                   f"NaN, Inf; bodies valid JSON: {'yes' if valid else 'NO'}", ok,
                   "" if ok else "expected 400 with valid JSON")


def json_body_of_size(size: int, short: bool) -> tuple[bytes, int]:
    """A ~``size``-byte /infer body of one flat FP32 tensor (a wrong shape for the model)."""
    if short:  # 8 bytes a number ("0.12345,"): 7.5M for 60 MB, under the 8.4M element limit
        n = size // 8
        data = b",".join([b"0.12345"] * n)
    else:  # random float32 values as Python prints them, ~20 bytes a number
        sample = json.dumps(np.random.default_rng(1).standard_normal(10_000).astype(np.float32).tolist())
        n = int(size / (len(sample) / 10_000))
        data = json.dumps(np.random.default_rng(1).standard_normal(n).astype(np.float32).tolist()).encode()[1:-1]
    head = json.dumps({"inputs": [{"name": "pixel_values", "shape": [n], "datatype": "FP32", "data": []}]})
    before, after = head.encode().split(b"[]")
    return before + b"[" + data + b"]" + after, n


def probe_three_bodies(server: Server, model: str, body: bytes, n: int) -> Callable[[], Outcome]:
    def run() -> Outcome:
        results: list[Reply] = []
        threads = [threading.Thread(target=lambda: results.append(
            send(server, "POST", f"/v2/models/{model}/infer", body, timeout=120))) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=150)
        statuses = sorted(r.status for r in results)
        ok = len(statuses) == 3 and all(400 <= s < 500 for s in statuses)
        slowest = max((r.seconds for r in results), default=float("nan"))
        return Outcome("/".join(map(str, statuses)), results[0].error if results else "",
                       f"3 x {len(body) / MB:.1f} MB, {n:,} numbers each; slowest {slowest:.2f} s",
                       ok, "" if ok else "expected 4xx for each (wrong shape or too many elements)")

    return run


def probe_crowd(server: Server, model: str, clients: int = 300) -> Outcome:
    body, headers = tensor_body(pixels())
    headers = {**headers, "Content-Length": str(len(body))}
    conns = []
    for _ in range(clients):
        conn = http.client.HTTPConnection(server.host, server.port, timeout=60)
        conn.connect()
        conns.append(conn)
    gate = threading.Barrier(clients + 1)
    results: list[tuple[int, float, str]] = []
    lock = threading.Lock()
    t0 = [0.0]

    def client(conn: http.client.HTTPConnection) -> None:
        gate.wait(timeout=60)
        try:
            conn.request("POST", f"/v2/models/{model}/infer", body, headers)
            response = conn.getresponse()
            response.read()
            got = (response.status, time.perf_counter() - t0[0], response.getheader("Retry-After") or "")
        except (OSError, http.client.HTTPException):
            got = (-1, time.perf_counter() - t0[0], "")
        finally:
            conn.close()
        with lock:
            results.append(got)

    threads = [threading.Thread(target=client, args=(c,), daemon=True) for c in conns]
    for t in threads:
        t.start()
    t0[0] = time.perf_counter()
    gate.wait(timeout=60)
    for t in threads:
        t.join(timeout=90)
    counts = {s: sum(1 for r in results if r[0] == s) for s in sorted({r[0] for r in results})}
    refused = sorted(r[1] for r in results if r[0] == 503)
    served = sorted(r[1] for r in results if r[0] == 200)
    note = ", ".join(f"{n} x {s}" for s, n in counts.items())
    if refused:
        retry = {r[2] for r in results if r[0] == 503}
        note += (f"; first 503 at {refused[0]:.3f} s, 503 p50 {statistics.median(refused):.3f} s"
                 f" (Retry-After {'/'.join(sorted(retry))})")
    if served:
        note += f"; 200 p50 {statistics.median(served):.3f} s, last {served[-1]:.3f} s"
    ok = set(counts) <= {200, 503} and len(results) == clients
    slow = bool(refused) and statistics.median(refused) >= 1.0
    return Outcome("/".join(f"{s}x{n}" for s, n in counts.items()), "", note, ok and not slow,
                   "" if ok and not slow else "503s late or clients without an answer")


def probe_stalled(server: Server, model: str) -> Outcome:
    body, headers = tensor_body(pixels())
    path = f"/v2/models/{model}/infer"

    def latencies(count: int) -> list[float]:
        return [send(server, "POST", path, body, headers, timeout=30).seconds for _ in range(count)]

    baseline = statistics.median(latencies(10))
    closed: dict[str, object] = {}
    sock = socket.create_connection((server.host, server.port), timeout=30)
    head = (f"POST {path} HTTP/1.1\r\nHost: {server.host}\r\nContent-Length: {len(body)}\r\n"
            f"Inference-Header-Content-Length: {headers['Inference-Header-Content-Length']}\r\n\r\n")
    sock.sendall(head.encode() + body[: len(body) // 2])
    start = time.perf_counter()

    def wait_for_close() -> None:
        chunks = []
        with contextlib.suppress(OSError):
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        closed["s"] = time.perf_counter() - start
        closed["answer"] = b"".join(chunks)

    reader = threading.Thread(target=wait_for_close, daemon=True)
    reader.start()
    during: list[float] = []
    while reader.is_alive() and time.perf_counter() - start < 25:
        during.extend(latencies(1))
    reader.join(timeout=10)
    sock.close()
    answer = closed.get("answer", b"")
    assert isinstance(answer, bytes)
    status_line = answer.split(b"\r\n", 1)[0].decode("latin-1") if answer else "no answer"
    status = status_line.split()[1] if status_line.startswith("HTTP/") else status_line
    error = answer.split(b"\r\n\r\n", 1)[-1] if answer else b""
    median = statistics.median(during) if during else float("nan")
    when = f"closed after {closed['s']:.2f} s" if "s" in closed else "NOT closed within 25 s"
    note = (f"others p50 {baseline * 1e3:.1f} ms before, {median * 1e3:.1f} ms during (n={len(during)}); "
            f"stalled upload {when}")
    ok = status == "408" and "s" in closed and median < 0.1
    return Outcome(status, Reply(0, error, 0).error, note, ok,
                   "" if ok else "expected 408 and others unaffected by the stall")


def probe_images(server: Server, model: str) -> Outcome:
    from PIL import Image

    deep = png(Image.fromarray(np.tile(np.linspace(0, 65535, 32, dtype=np.uint16), (32, 1))))
    raw = Image.new("RGB", (64, 32), (0, 0, 255))
    raw.paste((255, 0, 0), (0, 0, 32, 32))
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned 90 degrees clockwise
    buf = io.BytesIO()
    raw.save(buf, "JPEG", exif=exif, quality=95)
    replies = [send(server, "POST", f"/v2/models/{model}/classify", data, timeout=30)
               for data in (deep, buf.getvalue())]
    ok = all(r.status == 200 for r in replies)
    bad = next((r for r in replies if r.status != 200), replies[0])
    return Outcome("/".join(str(r.status) for r in replies), bad.error if not ok else "",
                   "16-bit PNG (I;16), EXIF orientation 6 JPEG", ok, "" if ok else "expected 200 for both")


def probe_batch_limit(server: Server, model: str) -> Outcome:
    body, headers = tensor_body(pixels(8))
    return expecting(send(server, "POST", f"/v2/models/{model}/infer", body, headers, timeout=30), 400,
                     "8 rows to max_batch_size 4")


# --- report ----------------------------------------------------------------------------------


def table(rows: Sequence[Row]) -> str:
    head = ("probe", "expect", "status", "wall s", "RSS before", "peak", "+peak", "after 2s", "health max s",
            "next", "target")
    lines = [[r.probe, r.expect, r.outcome.status, f"{r.wall_s:.2f}", f"{r.rss_before:.0f} MB",
              f"{r.rss_peak:.0f} MB", f"{r.rss_peak - r.rss_before:+.0f}", f"{r.rss_after:.0f} MB",
              f"{r.health_worst_s:.3f}", str(r.followup), "met" if not r.misses() else "MISSED"] for r in rows]
    widths = [max(len(x) for x in col) for col in zip(head, *lines, strict=True)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [fmt.format(*head), fmt.format(*("-" * w for w in widths))]
    out += [fmt.format(*line) for line in lines]
    out.append("")
    for i, r in enumerate(rows, 1):
        out.append(f"({i}) {r.probe}: {r.outcome.status}" + (f" {r.outcome.error!r}" if r.outcome.error else ""))
        if r.outcome.note:
            out.append(f"    {r.outcome.note}")
        for miss in r.misses():
            out.append(f"    MISSED: {miss}")
    return "\n".join(out)


def machine() -> list[str]:
    cpu, flags = "unknown", ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key.strip() == "model name" and cpu == "unknown":
                cpu = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = value.strip()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True, timeout=10).stdout.strip() or "unknown"
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                           capture_output=True, text=True, timeout=10).stdout.splitlines()
    if dirty:
        commit += f" (working tree: {len(dirty)} tracked files with uncommitted changes)"
    return [f"date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
            f"commit: {commit}",
            f"cpu: {cpu} ({os.cpu_count()} logical cores)",
            f"cpu flags: {flags}",
            f"python: {platform.python_version()}, numpy {np.__version__}"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs/bench/serving-probes.log")
    parser.add_argument("--keep", type=Path, help="work folder to keep (model, server logs)")
    args = parser.parse_args(argv)

    with contextlib.ExitStack() as stack:
        workdir = args.keep or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="probes-")))
        workdir.mkdir(parents=True, exist_ok=True)
        onnx_path = export_tiny_model(workdir)
        from m2pt_deploy.export.triton import write_triton_repository

        repo = workdir / "repository"
        write_triton_repository(onnx_path, repo, name="vit4", max_batch=4, force=True)
        print("building the 60 MB bodies", flush=True)
        long_body, long_n = json_body_of_size(60_000_000, short=False)
        short_body, short_n = json_body_of_size(60_000_000, short=True)

        servers: list[Server] = []
        stack.callback(lambda: [s.stop() for s in servers])

        def start(model: Path, *extra: str) -> Server:
            servers.append(Server(model, extra, workdir / f"server-{len(servers)}.log"))
            return servers[-1]

        main_server = start(onnx_path)
        v = "vit"
        rows = [
            measure(main_server, v, "classify 1x1,000,000 PNG", "413", probe_strip(main_server, v, 1_000_000)),
            measure(main_server, v, "classify 1x100,000 PNG", "413", probe_strip(main_server, v, 100_000)),
            measure(main_server, v, "JSON nested 100,000 deep", "400", lambda: probe_deep_json(main_server, v)),
            measure(main_server, v, "NaN / Inf in JSON input", "400", lambda: probe_nonfinite(main_server, v)),
            measure(main_server, v, "3 x 60 MB JSON, ~20 B/number", "4xx",
                    probe_three_bodies(main_server, v, long_body, long_n), THREE_BODIES_MB),
            measure(main_server, v, "300 clients, queue 128", "200/503",
                    lambda: probe_crowd(main_server, v)),
            measure(main_server, v, "16-bit PNG; EXIF JPEG", "200", lambda: probe_images(main_server, v)),
        ]
        short = start(onnx_path)  # from a fresh baseline, not the heap the first bodies left
        rows.append(measure(short, v, "3 x 60 MB JSON, 8 B/number", "4xx",
                            probe_three_bodies(short, v, short_body, short_n), THREE_BODIES_MB))
        short.stop()
        del long_body, short_body
        delayed = start(onnx_path, "--max-delay-ms", "200")
        rows.append(measure(delayed, v, "stalled upload, delay 200 ms", "408",
                            lambda: probe_stalled(delayed, v)))
        triton = start(repo)
        rows.append(measure(triton, "vit4", "8 rows, max_batch_size 4", "400",
                            lambda: probe_batch_limit(triton, "vit4")))

    report = table(rows)
    settings = ("servers: m2pt-serve defaults (max-batch 8, max-delay-ms 2, max-queue 128, body-timeout-s 10, "
                "request-timeout-s 30, max-body-mb 64) on 127.0.0.1; the stalled-upload probe with "
                "--max-delay-ms 200, the max_batch_size probe on a Triton-layout repository, 3 x 60 MB at "
                "8 B/number on a fresh server; the others share one server, in the order listed")
    legend = ("RSS in MB (10^6 bytes): before the probe, peak (VmRSS every 20 ms and VmHWM), 2 s after; "
              "health max = slowest GET /v2/health/ready polled during the probe; next = a normal /infer "
              "right after. Targets: +peak < 300 MB (< 700 MB for 3 x 60 MB), health < 2 s, RSS back toward "
              "baseline, next = 200.")
    text = "\n".join(["m2pt-serve under issue 11's hostile-input probes (scripts/serving_probes.py)",
                      *machine(), settings, legend, "", report, ""])
    print("\n" + report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"wrote {args.out}")
    return 1 if any(r.misses() for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
