"""Fixtures for serving tests: a tiny exported M2PT ViT, and m2pt-serve processes on free ports."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import pytest

pytest.importorskip("starlette", reason="serving tests need the 'serve' extra")
pytest.importorskip("tritonclient.http", reason="serving tests need the 'serve' extra")

LABELS = [f"class_{i}" for i in range(10)]
START_TIMEOUT_S = 60.0


def _tiny_checkpoint(path: Path) -> Path:
    from m2pt_deploy.model.checkpoint import save_checkpoint
    from m2pt_deploy.model.pathway import pathway_state_dict
    from tests.tiny import TINY, make_pathway_model, pathway_info

    model = make_pathway_model(TINY)
    return save_checkpoint(path, pathway_state_dict(model), TINY, pathway=pathway_info(),
                           extra={"labels": LABELS})


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from m2pt_deploy.export.onnx import OnnxFromCheckpoint, save_onnx

    root = tmp_path_factory.mktemp("tiny")
    ckpt = _tiny_checkpoint(root / "tiny.safetensors")
    return save_onnx(OnnxFromCheckpoint(ckpt)(), root / "vit.onnx")


@pytest.fixture(scope="session")
def reference_session(tiny_onnx: Path):
    import onnxruntime as ort

    return ort.InferenceSession(str(tiny_onnx), providers=["CPUExecutionProvider"])


class ServerProcess:
    """``m2pt-serve`` in a child process; ``url`` once it answers its readiness probe."""

    def __init__(self, args: Sequence[str], env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "m2pt_deploy.cli.serve", *args, "--port", "0",
             *(() if "--no-grpc" in args or "--grpc-port" in args else ("--grpc-port", "0"))],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, **(env or {})},
        )
        self.banner: list[str] = []
        self.grpc_target: str | None = None  # host:port of KServe v2 gRPC, unless --no-grpc
        self.url = self._wait_for_url()
        self.host_port = self.url.removeprefix("http://")
        self._wait_ready()

    def _wait_for_url(self) -> str:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"m2pt-serve exited: {self.proc.wait()} {self.proc.stderr.read()}")
            self.banner.append(line.rstrip())
            grpc = re.match(r"serving gRPC on (\S+)", line)
            if grpc:
                self.grpc_target = grpc.group(1)
            match = re.match(r"serving on (http://\S+)", line)
            if match:
                return match.group(1)
        raise RuntimeError("m2pt-serve printed no address in time")

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), urllib.request.urlopen(
                f"{self.url}/v2/health/ready", timeout=2
            ) as r:
                if r.status == 200:
                    return
            time.sleep(0.05)
        raise RuntimeError("m2pt-serve never became ready")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            for stream in (self.proc.stdout, self.proc.stderr):
                if stream is not None:
                    stream.close()


@pytest.fixture(scope="session")
def serve_process():
    started: list[ServerProcess] = []

    def start(*args: str, env: dict[str, str] | None = None) -> ServerProcess:
        server = ServerProcess(args, env)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def server(serve_process, tiny_onnx: Path) -> ServerProcess:
    """The tiny model served from its .onnx file with batching on."""
    return serve_process(str(tiny_onnx), "--max-batch", "8", "--max-delay-ms", "5")


def http(method: str, url: str, body: bytes | None = None,
         headers: dict[str, str] | None = None, timeout: float = 20) -> tuple[int, dict[str, str], bytes]:
    """One bounded request with the standard library: status, lower-cased headers, body."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def error_of(body: bytes) -> str:
    return json.loads(body)["error"]


class HeldModel:
    """The real tiny model behind a gate, so tests decide when inference may finish."""

    def __init__(self, model) -> None:
        self._model = model
        self.gate = threading.Event()
        self.entered = threading.Event()

    def __getattr__(self, name):
        return getattr(self._model, name)

    def run(self, feed):
        self.entered.set()
        assert self.gate.wait(timeout=20)
        return self._model.run(feed)


def start_inproc_server(model, **config):
    """Serve ``model`` as "vit" from a uvicorn thread in this process (its log is caplog's);
    returns ``(url, server, thread)``; stop with ``server.should_exit = True`` and a join."""
    import uvicorn

    from m2pt_deploy.serving.app import create_app
    from m2pt_deploy.serving.core import ServeConfig, ServerState
    from m2pt_deploy.serving.server import bind

    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(
        create_app(ServerState({"vit": model}, ServeConfig(**config))), log_level="error"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    return f"http://127.0.0.1:{sock.getsockname()[1]}", server, thread


def start_inproc_servers(model, **config):
    """Serve ``model`` as "vit" over HTTP and gRPC from one event loop in a thread, as m2pt-serve
    does; returns ``(url, grpc_target, server, thread)``; stop as for :func:`start_inproc_server`."""
    from m2pt_deploy.serving.core import ServeConfig, ServerState
    from m2pt_deploy.serving.server import bind, run_server

    sock = bind("127.0.0.1", 0)
    up: list = []
    state = ServerState({"vit": model}, ServeConfig(**config))
    thread = threading.Thread(target=run_server, args=(state, sock), daemon=True,
                              kwargs={"started": up.append, "grpc_port": 0, "log_level": "error",
                                      "drain_timeout_s": 2})
    thread.start()
    deadline = time.monotonic() + 20
    while not up and time.monotonic() < deadline:
        time.sleep(0.01)
    assert up, "in-process server did not start"
    server = up[0]
    return f"http://127.0.0.1:{sock.getsockname()[1]}", f"127.0.0.1:{server.grpc_port}", server, thread
