"""Run the app under uvicorn on a socket we bind ourselves, and gRPC beside it on the same loop.

Binding first turns "port in use" into a one-line user error and makes ``--port 0`` work
(the caller learns the real port). The gRPC server is bound before HTTP starts and started once
the batchers run. On SIGTERM/SIGINT the server stops accepting, readiness turns 503, in-flight
gRPC calls finish (up to ``drain_timeout_s``), then in-flight HTTP requests, then the batchers drain.
"""

from __future__ import annotations

import contextlib
import ipaddress
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

from m2pt_deploy.errors import M2ptError
from m2pt_deploy.serving.app import create_app
from m2pt_deploy.serving.core import ServeConfig, ServerState

__all__ = ["bind", "is_loopback", "run_server", "serve"]


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # asyncio turns on TCP_NODELAY only for sockets whose proto is IPPROTO_TCP; with proto 0,
    # Nagle holds each response body behind its headers for a delayed ACK (~40 ms a request).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise M2ptError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def run_server(
    state: ServerState,
    sock: socket.socket,
    *,
    drain_timeout_s: float = 30.0,
    log_level: str = "warning",
    started: Callable[[Any], None] | None = None,
    grpc_host: str | None = None,
    grpc_port: int | None = None,
) -> None:
    """Serve until a signal; blocks. ``started(server)`` runs once the loop is up.

    ``grpc_port`` (0: a free one) adds KServe v2 gRPC on ``grpc_host`` (default: the HTTP
    socket's address); ``server.grpc_port`` then holds the bound port.
    """
    import uvicorn

    class _Server(uvicorn.Server):
        grpc_server: Any = None
        grpc_port: int | None = None

        def handle_exit(self, sig: int, frame: Any) -> None:
            state.draining = True
            super().handle_exit(sig, frame)

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            # uvicorn re-raises the signal after shutdown; a completed drain should exit 0.
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            handled = (signal.SIGINT, signal.SIGTERM)
            previous = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

        async def startup(self, sockets: Any = None) -> None:
            if grpc_port is not None:
                from m2pt_deploy.serving.grpc_service import create_grpc_server

                host = grpc_host or sock.getsockname()[0]
                self.grpc_server, self.grpc_port = create_grpc_server(state, host, grpc_port)
            await super().startup(sockets=sockets)
            if self.should_exit:  # startup failed; uvicorn has said why
                return
            if self.grpc_server is not None:
                await self.grpc_server.start()
            if started is not None:
                started(self)

        async def shutdown(self, sockets: Any = None) -> None:
            # gRPC first: its calls in flight still need the batchers the HTTP lifespan closes
            if self.grpc_server is not None:
                await self.grpc_server.stop(grace=drain_timeout_s)
            await super().shutdown(sockets=sockets)

    config = uvicorn.Config(create_app(state), log_level=log_level, lifespan="on",
                            timeout_graceful_shutdown=max(1, round(drain_timeout_s)), access_log=False)
    _Server(config).run(sockets=[sock])


def _initial_state(path: str, config: ServeConfig, providers: Sequence[str], threads: int,
                   model_control: str, load_model: Sequence[str]) -> ServerState:
    """Every model of ``path`` (control "none"), or those ``load_model`` names (control
    "explicit", as Triton's ``--load-model``; ``*``: all), with a loader for the rest."""
    from m2pt_deploy.serving.runtime import RepositoryLoader, load_models

    if model_control == "none":
        if load_model:
            raise M2ptError("--load-model needs --model-control-mode explicit (without it every model "
                            "of the repository is loaded)")
        return ServerState(load_models(path, providers=providers, threads=threads), config)
    if not Path(path).is_dir():
        raise M2ptError("--model-control-mode explicit needs a model repository folder", path)
    loader = RepositoryLoader(path, providers=providers, threads=threads)
    names = loader.names()
    chosen = names if "*" in load_model else list(dict.fromkeys(load_model))
    missing = [n for n in chosen if n not in names]
    if missing:
        raise M2ptError(f"--load-model {missing[0]}: no such model in the repository (it holds "
                        f"{', '.join(names) or 'none'})", path)
    return ServerState({n: loader(n) for n in chosen}, config, loader=loader)


def serve(
    model: str,
    config: ServeConfig,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    grpc_port: int | None = 8001,
    providers: Sequence[str] | None = None,
    threads: int = 0,
    drain_timeout_s: float = 30.0,
    log_level: str = "warning",
    api_key_env: str = "M2PT_SERVE_API_KEY",
    model_control: Literal["none", "explicit"] = "none",
    load_model: Sequence[str] = (),
) -> None:
    """``m2pt-serve``: load ``model`` (an .onnx file or a Triton-layout repository), bind, and
    serve KServe v2 over HTTP (and gRPC unless ``grpc_port`` is None) until SIGTERM / SIGINT.

    Prints one line per model, then ``serving on http://HOST:PORT`` once both protocols listen
    and the batchers run (what scripts wait for), and ``stopped`` after the drain.
    """
    from m2pt_deploy.serving.runtime import resolve_providers

    for flag, value in (("--port", port), ("--grpc-port", grpc_port)):
        if value is not None and not 0 <= value <= 65535:
            raise M2ptError(f"{flag} {value}: expected 0 to 65535")
    if grpc_port is not None:
        from m2pt_deploy.serving.grpc_service import require_grpc

        require_grpc()
    if threads < 0:
        raise M2ptError(f"--threads {threads}: expected 0 or more")
    state = _initial_state(model, config, resolve_providers(providers), threads, model_control, load_model)
    sock = bind(host, port)
    bound_host, bound_port = sock.getsockname()[:2]
    models = state.models
    if state.loader is not None:
        print(f"repository {state.loader.path}: {len(state.loader.names())} models, {len(models)} loaded "
              "(explicit model control)", flush=True)
    for m in models.values():
        print(f"model {m.name} (version {m.version}) from {m.path} on {', '.join(m.providers)}; max batch "
              f"{state.batchers[m.name].max_batch}, max delay {config.max_delay_ms:g} ms", flush=True)
        warning = m.int8_warning()
        if warning:
            print(f"warning: {warning}", file=sys.stderr)
    if not is_loopback(host):
        print(f"warning: listening on {host}, reachable from other machines", file=sys.stderr)
    if config.api_key is None and not is_loopback(host):
        print(f"warning: no API key (set {api_key_env}) on a non-loopback address", file=sys.stderr)
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host

    def started(server: Any) -> None:
        # printed once both listen and the batchers run: "serving on" means ready
        if server.grpc_port is not None:
            print(f"serving gRPC on {shown}:{server.grpc_port}", flush=True)
        print(f"serving on http://{shown}:{bound_port}", flush=True)

    with contextlib.closing(sock):
        run_server(state, sock, drain_timeout_s=drain_timeout_s, log_level=log_level, started=started,
                   grpc_port=grpc_port)
    print("stopped", flush=True)
