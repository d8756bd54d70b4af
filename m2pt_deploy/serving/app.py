"""The HTTP front end: KServe v2 / Open Inference Protocol REST routes over the serving core,
plus classify, metrics and OpenAPI.

Every refusal is a JSON ``{"error": ...}`` with a 4xx/5xx code, counted in the metrics; no
request can take the server down or make it unpickle anything.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import numpy as np

from m2pt_deploy.metadata import INPUT_KEY, LABELS_KEY
from m2pt_deploy.serving.batching import Draining, Overloaded, RequestTimeout
from m2pt_deploy.serving.core import (
    Deadline,
    Prepared,
    ServeConfig,
    ServerState,
    check_control_parameters,
    prepared_infer,
)
from m2pt_deploy.serving.guards import ApiKeyGuard, error_response, read_body
from m2pt_deploy.serving.images import decode_image, input_spec, top_k
from m2pt_deploy.serving.openapi import openapi_document
from m2pt_deploy.serving.protocol import (
    HEADER_LENGTH,
    InferRequest,
    ProtocolError,
    encode_infer_response,
    parse_infer_request,
)
from m2pt_deploy.serving.runtime import OrtModel

__all__ = ["create_app"]

log = logging.getLogger("m2pt_deploy.serving")
# The largest body of a request that carries no tensors (the repository extension's options).
_SMALL_BODY_BYTES = 64 << 10


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
        state.metrics.observe_request(state.label(request.path_params.get("name", "")), name,
                                      response.status_code, time.perf_counter() - start)
        return response

    return endpoint


def _json(doc: Any, status: int = 200) -> Any:
    from starlette.responses import JSONResponse

    return JSONResponse(doc, status_code=status)


async def _server_metadata(request: Any, state: ServerState) -> Any:
    return _json(state.server_metadata())


# Health answers are JSON objects, as the Open Inference Protocol's REST health responses are
# (KServe's SDK reads the body); Triton's client reads only the status code, which still says it.
async def _live(request: Any, state: ServerState) -> Any:
    return _json({"live": True})


async def _ready(request: Any, state: ServerState) -> Any:
    return _json({"ready": not state.draining}, 503 if state.draining else 200)


async def _model_ready(request: Any, state: ServerState) -> Any:
    model = state.model(request.path_params["name"], request.path_params.get("version"))
    return _json({"name": model.name, "ready": not state.draining}, 503 if state.draining else 200)


def _model_of(request: Any, state: ServerState) -> OrtModel:
    return state.model(request.path_params["name"], request.path_params.get("version"))


async def _model_metadata(request: Any, state: ServerState) -> Any:
    return _json(_model_of(request, state).describe())


async def _model_config(request: Any, state: ServerState) -> Any:
    return _json(state.model_config(_model_of(request, state)))


async def _model_statistics(request: Any, state: ServerState) -> Any:
    params = request.path_params
    return _json(state.model_statistics(params.get("name", ""), params.get("version", "")))


async def _small_json(request: Any, state: ServerState) -> dict[str, Any]:
    """The optional JSON object body of a control request, bounded before it is read."""
    deadline = Deadline(state.config.request_timeout_s)
    body = await read_body(request, _SMALL_BODY_BYTES, idle_timeout_s=state.config.body_timeout_s,
                           deadline=deadline.end, timeout_s=deadline.timeout_s)
    if not body.strip():
        return {}
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise ProtocolError(f"request is not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise ProtocolError("request must be a JSON object")
    return doc


async def _repository_index(request: Any, state: ServerState) -> Any:
    ready = (await _small_json(request, state)).get("ready", False)
    if not isinstance(ready, bool):
        raise ProtocolError("repository index request must be an object, with 'ready' a boolean")
    return _json(state.repository_index(ready_only=ready))


async def _repository_control(request: Any, state: ServerState) -> Any:
    action, name = request.url.path.rsplit("/", 1)[-1], request.path_params["name"]
    parameters = (await _small_json(request, state)).get("parameters", {})
    if not isinstance(parameters, dict):
        raise ProtocolError("'parameters' must be an object")
    check_control_parameters(action, parameters)
    await (state.load_model(name) if action == "load" else state.unload_model(name))
    return _json({"name": name, action: True})


def _prepare_infer(model: OrtModel, config: ServeConfig, header_length: str | None,
                   body: bytes) -> Prepared[InferRequest]:
    parsed = parse_infer_request(body, header_length, allow_nonfinite=config.allow_nonfinite)
    return prepared_infer(model, parsed)


def _encoded(model: OrtModel, parsed: InferRequest, outputs: dict[str, np.ndarray]) -> Any:
    from starlette.responses import Response

    content, headers = encode_infer_response(model.name, model.version, parsed, outputs)
    return Response(content, headers=headers)


async def _read_body(request: Any, state: ServerState, deadline: Deadline) -> bytes:
    config = state.config
    return await read_body(request, config.max_body_bytes, idle_timeout_s=config.body_timeout_s,
                           deadline=deadline.end, timeout_s=deadline.timeout_s)


async def _infer(request: Any, state: ServerState) -> Any:
    deadline = Deadline(state.config.request_timeout_s)
    model = _model_of(request, state)
    return await state.infer(
        model, deadline, functools.partial(_read_body, request, state, deadline), len,
        functools.partial(_prepare_infer, model, state.config, request.headers.get(HEADER_LENGTH)),
        functools.partial(_encoded, model))


def _top_k_param(request: Any, state: ServerState) -> int:
    """The requested number of classes, checked before any work (capped later by the model's)."""
    raw = request.query_params.get("top_k")
    if raw is None:
        return state.config.default_top_k
    if not raw.isdigit() or int(raw) < 1:
        raise ProtocolError(f"top_k {raw!r}: expected a whole number of at least 1")
    return int(raw)


async def _classify(request: Any, state: ServerState) -> Any:

    model = state.model(request.path_params["name"])
    spec = input_spec(model.metadata)
    layout = INPUT_KEY.get(model.metadata)
    layout = layout if isinstance(layout, dict) else {}
    modality = layout.get("modality")
    if modality not in (None, "image", "spectrogram"):
        raise ProtocolError(f"/classify takes images; model '{model.name}' takes {modality} "
                            f"({', '.join(layout.get('layout', []))}): send tensors to /infer (KServe v2)")
    if spec is None or len(model.inputs) != 1:
        raise ProtocolError(f"model '{model.name}' has no {INPUT_KEY} metadata for image "
                            "preprocessing; use /infer with tensors")
    k = _top_k_param(request, state)

    def prepare(body: bytes) -> Prepared[None]:
        return Prepared({model.inputs[0].name: decode_image(body, spec)}, None, None)

    def answer(_: None, outputs: dict[str, np.ndarray]) -> Any:
        logits = outputs.get("logits", next(iter(outputs.values())))
        if not np.isfinite(logits).all():
            raise ProtocolError(f"model '{model.name}' gave NaN or Inf logits for this image",
                                status=500)
        labels = LABELS_KEY.get(model.metadata)
        return _json({"model_name": model.name, "classes": top_k(
            logits[0], min(k, logits.shape[-1]), labels if isinstance(labels, list) else None)})

    deadline = Deadline(state.config.request_timeout_s)
    return await state.infer(model, deadline, functools.partial(_read_body, request, state, deadline),
                             len, prepare, answer)


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
        for batcher in list(state.batchers.values()):  # a load may change the dict meanwhile
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
        # before {name}: as in Triton, "stats" here is the statistics of every model
        route("/v2/models/stats", "statistics", _model_statistics),
        route("/v2/repository/index", "repository_index", _repository_index, "POST"),
        route("/v2/repository/models/{name}/load", "repository_load", _repository_control, "POST"),
        route("/v2/repository/models/{name}/unload", "repository_unload", _repository_control, "POST"),
        route(f"{models}/classify", "classify", _classify, "POST"),
    ]
    for base in (models, versioned):
        routes += [
            route(base, "metadata", _model_metadata),
            route(f"{base}/ready", "model_ready", _model_ready),
            route(f"{base}/config", "config", _model_config),
            route(f"{base}/stats", "statistics", _model_statistics),
            route(f"{base}/infer", "infer", _infer, "POST"),
        ]

    async def http_error(request: Any, exc: Any) -> Any:
        """Starlette's own 404/405 (no such route, or not that method) in the same JSON shape as
        every other refusal, counted under endpoint "unknown" (untimed: routing has no start)."""
        state.metrics.observe_request("", "unknown", exc.status_code, None)
        return error_response(exc.detail, exc.status_code, getattr(exc, "headers", None))

    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={HTTPException: http_error})
    app.state.server = state
    if not state.config.api_key:
        return app
    # refused before routing: counted under endpoint "unauthorized", untimed, as unknown routes are
    refused = functools.partial(state.metrics.observe_request, "", "unauthorized", 401, None)
    return ApiKeyGuard(app, state.config.api_key, refused=refused)
