"""The Starlette app: KServe v2 routes over the batchers, plus classify, metrics and OpenAPI.

Every refusal is a JSON ``{"error": ...}`` with a 4xx/5xx code, counted in the metrics; no
request can take the server down or make it unpickle anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, TypeVar

import numpy as np

from m2pt_deploy import __version__
from m2pt_deploy.heap import release_freed_memory
from m2pt_deploy.serving.batching import (
    Admission,
    Arrival,
    Draining,
    DynamicBatcher,
    Overloaded,
    RequestTimeout,
)
from m2pt_deploy.serving.guards import ApiKeyGuard, error_response, read_body
from m2pt_deploy.serving.images import decode_image, input_spec, top_k
from m2pt_deploy.serving.metrics import ServingMetrics
from m2pt_deploy.serving.openapi import openapi_document
from m2pt_deploy.serving.protocol import (
    HEADER_LENGTH,
    InferRequest,
    ProtocolError,
    encode_infer_response,
    parse_infer_request,
    validate_request,
)
from m2pt_deploy.serving.runtime import OrtModel

__all__ = ["LARGE_PARSE_BYTES", "Deadline", "ServeConfig", "ServerState", "create_app", "model_feed", "off_loop",
           "trim_soon"]

log = logging.getLogger("m2pt_deploy.serving")


@dataclasses.dataclass(frozen=True)
class ServeConfig:
    max_batch: int = 8
    max_delay_ms: float = 2.0
    max_queue: int = 128
    request_timeout_s: float = 30.0
    max_body_bytes: int = 64 << 20
    api_key: str | None = None
    default_top_k: int = 5
    body_timeout_s: float = 10.0
    allow_nonfinite: bool = False


# Bodies past this are parsed on a worker thread; smaller ones parse faster than a thread hop.
_INLINE_PARSE_BYTES = 64 << 10
# Bodies this large are parsed one at a time per server (a JSON tensor of 8 M numbers builds ~300 MB
# of Python floats before it becomes an array): concurrent large uploads wait their turn instead of
# stacking their parses in RSS, and the freed heap is handed back to the OS after each.
LARGE_PARSE_BYTES = 8 << 20
_large_lanes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = weakref.WeakKeyDictionary()
T = TypeVar("T")


class Deadline:
    """The request timeout, counted from the first byte: it covers reading, parsing and decoding."""

    def __init__(self, timeout_s: float) -> None:
        self.end = time.monotonic() + timeout_s
        self.timeout_s = timeout_s

    def shorten(self, timeout_us: int | None) -> None:
        if timeout_us is not None:
            self.end = min(self.end, self.end - self.timeout_s + timeout_us / 1e6)

    def remaining(self) -> float:
        return max(0.0, self.end - time.monotonic())

    async def within(self, work: Awaitable[T]) -> T:
        try:
            return await asyncio.wait_for(work, self.remaining())
        except TimeoutError:
            raise RequestTimeout from None


class ServerState:
    """Models, their batchers and the draining flag, shared by all handlers."""

    def __init__(self, models: Mapping[str, OrtModel], config: ServeConfig) -> None:
        self.models = dict(models)
        self.config = config
        self.metrics = ServingMetrics()
        self.draining = False
        self.batchers = {
            name: DynamicBatcher(
                model.run,
                max_batch=min(config.max_batch, model.max_batch or config.max_batch),
                max_delay_s=config.max_delay_ms / 1000, max_queue=config.max_queue,
                batchable=model.batchable, on_batch=self.metrics.batch_observer(name),
            )
            for name, model in self.models.items()
        }
        for name, batcher in self.batchers.items():
            self.metrics.track_queue(name, functools.partial(getattr, batcher, "depth"))

    def model(self, name: str, version: str | None = None) -> OrtModel:
        model = self.models.get(name)
        if model is None:
            raise ProtocolError(f"unknown model '{name}'; serving {', '.join(sorted(self.models))}",
                                status=404)
        if version not in (None, model.version):
            raise ProtocolError(f"model '{name}' has no version {version!r}; serving version "
                                f"{model.version}", status=404)
        return model

    async def run(self, model: OrtModel, feed: Mapping[str, np.ndarray], deadline: Deadline,
                  admission: Admission, arrival: Arrival) -> dict[str, np.ndarray]:
        return await self.batchers[model.name].submit(feed, timeout_s=deadline.remaining(),
                                                      arrival=arrival, admission=admission)

    async def body(self, request: Any, deadline: Deadline) -> bytes:
        return await read_body(request, self.config.max_body_bytes, idle_timeout_s=self.config.body_timeout_s,
                               deadline=deadline.end, timeout_s=deadline.timeout_s)


Handler = Callable[[Any, ServerState], Awaitable[Any]]


def _endpoint(state: ServerState, name: str, handler: Handler) -> Callable[[Any], Awaitable[Any]]:
    """Turn the failure types into status codes, and count and time every answer."""

    async def endpoint(request: Any) -> Any:
        start = time.perf_counter()
        try:
            response = await handler(request, state)
        except ProtocolError as e:
            response = error_response(e.message, e.status,
                                      {"Connection": "close"} if e.status in (408, 413) else None)
        except Overloaded:
            response = error_response("server is overloaded; retry later", 503, {"Retry-After": "1"})
        except Draining:
            response = error_response("server is shutting down", 503, {"Retry-After": "5"})
        except RequestTimeout:
            response = error_response("request timed out", 504)
        except Exception:
            log.exception("%s failed", request.url.path)
            response = error_response("internal server error", 500)
        model = request.path_params.get("name", "")
        state.metrics.observe_request(model if model in state.models else "", name,
                                      response.status_code, time.perf_counter() - start)
        return response

    return endpoint


async def _server_metadata(request: Any, state: ServerState) -> Any:
    from starlette.responses import JSONResponse

    return JSONResponse({"name": "m2pt-serve", "version": __version__,
                         "extensions": ["binary_tensor_data", "model_configuration"]})


async def _live(request: Any, state: ServerState) -> Any:
    from starlette.responses import Response

    return Response(status_code=200)


async def _ready(request: Any, state: ServerState) -> Any:
    from starlette.responses import Response

    if state.draining:
        raise ProtocolError("server is shutting down", status=503)
    return Response(status_code=200)


async def _model_ready(request: Any, state: ServerState) -> Any:
    state.model(request.path_params["name"], request.path_params.get("version"))
    return await _ready(request, state)


async def _model_metadata(request: Any, state: ServerState) -> Any:
    from starlette.responses import JSONResponse

    model = state.model(request.path_params["name"], request.path_params.get("version"))
    return JSONResponse(model.describe())


async def _model_config(request: Any, state: ServerState) -> Any:
    from starlette.responses import JSONResponse

    model = state.model(request.path_params["name"], request.path_params.get("version"))
    batcher = state.batchers[model.name]
    batched = model.batchable

    def tensors(specs: Any) -> list[dict[str, Any]]:
        return [{"name": t.name, "data_type": f"TYPE_{t.datatype}",
                 "dims": list(t.shape[1:] if batched else t.shape)} for t in specs]

    return JSONResponse({
        "name": model.name, "platform": model.platform,
        "max_batch_size": batcher.max_batch if batched else 0,
        "input": tensors(model.inputs), "output": tensors(model.outputs),
        "dynamic_batching": {"max_queue_delay_microseconds": int(batcher.max_delay_s * 1e6)},
    })


def model_feed(model: OrtModel, parsed: InferRequest) -> dict[str, np.ndarray]:
    """The feed for ``model`` from a parsed request of either protocol: names, datatypes, shapes
    and the repository's ``max_batch_size`` checked, as Triton checks them."""
    feed = validate_request(parsed, model.inputs, model.outputs)
    rows = next(iter(feed.values())).shape[0]
    if model.max_batch is not None and model.batchable and rows > model.max_batch:
        # Triton's check and wording for a repository model's max_batch_size
        raise ProtocolError(f"inference request batch-size must be <= {model.max_batch} for "
                            f"'{model.name}'")
    return feed


def _parse_for(model: OrtModel, config: ServeConfig, body: bytes,
               header_length: str | None) -> tuple[InferRequest, dict[str, np.ndarray]]:
    parsed = parse_infer_request(body, header_length, allow_nonfinite=config.allow_nonfinite)
    return parsed, model_feed(model, parsed)


async def _in_thread(work: Callable[[], T]) -> T:
    # run_in_executor, not starlette's run_in_threadpool: anyio shields its threads from
    # cancellation, and the request's deadline must be able to give up waiting on one.
    return await asyncio.get_running_loop().run_in_executor(None, work)


async def off_loop(size: int, work: Callable[[], T]) -> T:
    """``work`` (parsing a body of ``size`` bytes) inline when small, else on a worker thread; large
    ones one at a time (see ``LARGE_PARSE_BYTES``)."""
    if size < _INLINE_PARSE_BYTES:
        return work()
    if size < LARGE_PARSE_BYTES:
        return await _in_thread(work)
    loop = asyncio.get_running_loop()
    lane = _large_lanes.setdefault(loop, asyncio.Semaphore(1))
    await lane.acquire()
    future = loop.run_in_executor(None, functools.partial(_then_trim, work))
    # The lane frees when the parse really ends: a request that gives up (its deadline) cannot
    # cancel a running thread, so it must not let the next large parse start beside it.
    future.add_done_callback(functools.partial(_leave_lane, lane))
    return await asyncio.shield(future)


def _leave_lane(lane: asyncio.Semaphore, future: asyncio.Future[Any]) -> None:
    lane.release()
    # Collect the outcome even when the request gave up waiting, so that a parse error is not
    # logged as "never retrieved" (and its frames, which hold the body, are freed now).
    if not future.cancelled():
        future.exception()


def trim_soon(delay_s: float = 0.5) -> None:
    """Hand the heap back to the OS shortly after a large request, once its body, arrays and any
    error (whose traceback holds them) are gone: RSS returns toward its baseline after a spike."""
    loop = asyncio.get_running_loop()
    loop.call_later(delay_s, _trim_in_thread, loop)


def _trim_in_thread(loop: asyncio.AbstractEventLoop) -> None:
    with contextlib.suppress(RuntimeError):  # the loop's executor is already shut down (exit)
        loop.run_in_executor(None, release_freed_memory)


def _then_trim(work: Callable[[], T]) -> T:
    try:
        return work()
    finally:
        release_freed_memory()


async def _infer(request: Any, state: ServerState) -> Any:
    from starlette.responses import Response

    deadline = Deadline(state.config.request_timeout_s)
    model = state.model(request.path_params["name"], request.path_params.get("version"))
    batcher = state.batchers[model.name]
    # Queue-full is decided before a byte of the body is read; the batcher hears of a request
    # only once its body is in, so a stalled upload holds no batch back.
    received = 0
    try:
        with batcher.admitting() as admission:
            body = await state.body(request, deadline)
            received = len(body)
            with batcher.arriving() as arrival:
                work = functools.partial(_parse_for, model, state.config, body,
                                         request.headers.get(HEADER_LENGTH))
                parsed, feed = await deadline.within(off_loop(len(body), work))
                deadline.shorten(parsed.timeout_us)
                outputs = await state.run(model, feed, deadline, admission, arrival)
        content, headers = encode_infer_response(model.name, model.version, parsed, outputs)
        return Response(content, headers=headers)
    finally:
        if received >= LARGE_PARSE_BYTES:
            trim_soon()


def _top_k_param(request: Any, state: ServerState, num_classes: int) -> int:
    raw = request.query_params.get("top_k")
    if raw is None:
        return min(state.config.default_top_k, num_classes)
    if not raw.isdigit() or int(raw) < 1:
        raise ProtocolError(f"top_k {raw!r}: expected a whole number of at least 1")
    return min(int(raw), num_classes)


async def _classify(request: Any, state: ServerState) -> Any:
    from starlette.responses import JSONResponse

    model = state.model(request.path_params["name"])
    spec = input_spec(model.metadata)
    layout = model.metadata.get("m2pt_deploy.input")
    layout = layout if isinstance(layout, dict) else {}
    modality = layout.get("modality")
    if modality not in (None, "image", "spectrogram"):
        raise ProtocolError(f"/classify takes images; model '{model.name}' takes {modality} "
                            f"({', '.join(layout.get('layout', []))}): send tensors to /infer (KServe v2)")
    if spec is None or len(model.inputs) != 1:
        raise ProtocolError(f"model '{model.name}' has no m2pt_deploy.input metadata for image "
                            "preprocessing; use /infer with tensors")
    deadline = Deadline(state.config.request_timeout_s)
    batcher = state.batchers[model.name]
    with batcher.admitting() as admission:
        body = await state.body(request, deadline)
        with batcher.arriving() as arrival:
            pixels = await deadline.within(off_loop(len(body), functools.partial(decode_image, body, spec)))
            outputs = await state.run(model, {model.inputs[0].name: pixels}, deadline, admission,
                                      arrival)
    logits = outputs.get("logits", next(iter(outputs.values())))
    if not np.isfinite(logits).all():
        raise ProtocolError(f"model '{model.name}' gave NaN or Inf logits for this image",
                            status=500)
    labels = model.metadata.get("m2pt_deploy.labels")
    k = _top_k_param(request, state, logits.shape[-1])
    return JSONResponse({"model_name": model.name,
                         "classes": top_k(logits[0], k, labels if isinstance(labels, list) else None)})


async def _metrics(request: Any, state: ServerState) -> Any:
    from starlette.responses import Response

    body, content_type = state.metrics.render()
    return Response(body, headers={"Content-Type": content_type})


def create_app(state: ServerState) -> Any:
    """A Starlette app over ``state``; batchers start and drain with the app's lifespan."""
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        for batcher in state.batchers.values():
            batcher.start()
        yield
        state.draining = True
        for batcher in state.batchers.values():
            await batcher.close()

    def route(path: str, name: str, handler: Handler, method: str = "GET") -> Route:
        return Route(path, _endpoint(state, name, handler), methods=[method])

    document = openapi_document(sorted(state.models))

    async def openapi(request: Any) -> Any:
        return JSONResponse(document)

    models, versioned = "/v2/models/{name}", "/v2/models/{name}/versions/{version}"
    routes = [
        route("/v2", "server", _server_metadata),
        route("/v2/health/live", "live", _live),
        route("/v2/health/ready", "ready", _ready),
        route("/metrics", "metrics", _metrics),
        Route("/openapi.json", openapi, methods=["GET"]),
        route(f"{models}/classify", "classify", _classify, "POST"),
    ]
    for base in (models, versioned):
        routes += [
            route(base, "metadata", _model_metadata),
            route(f"{base}/ready", "model_ready", _model_ready),
            route(f"{base}/config", "config", _model_config),
            route(f"{base}/infer", "infer", _infer, "POST"),
        ]

    async def http_error(request: Any, exc: Any) -> Any:
        """Starlette's own 404/405 in the same JSON shape as every other refusal."""
        return error_response(exc.detail, exc.status_code, getattr(exc, "headers", None))

    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={HTTPException: http_error})
    app.state.server = state
    return ApiKeyGuard(app, state.config.api_key) if state.config.api_key else app
