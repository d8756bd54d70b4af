"""KServe v2 over gRPC: Triton's ``GRPCInferenceService``, beside HTTP on the same event loop.

The servicer implements the service definition that ``tritonclient[grpc]`` ships
(``tritonclient.grpc.service_pb2_grpc``), so Triton's own gRPC client works unmodified. It shares
everything with HTTP through the protocol-neutral core
(:class:`~m2pt_deploy.serving.core.ServerState`: models, batchers, statistics, model control,
draining flag, the infer pipeline), the request checks (``validate_request``, ``max_batch_size``,
NaN/Inf refusal), the API key and the Prometheus metrics (``protocol="grpc"``, ``code`` the gRPC
status name); ``grpc_protocol.py`` decodes its messages as ``protocol.py`` decodes HTTP bodies.

Bounds decided before any work, as HTTP decides them:

- ``grpc.max_receive_message_length`` is the HTTP body limit: gRPC refuses a larger message from
  its length prefix (RESOURCE_EXHAUSTED) before a handler runs;
- ``maximum_concurrent_rpcs`` is the queue limit (plus room for probes), so messages held in memory
  are bounded like HTTP bodies in upload;
- the queue place is taken before a tensor is decoded; a full queue is UNAVAILABLE, as in Triton;
- a tensor's element count is checked against its shape before an array is built.
"""

from __future__ import annotations

import functools
import hmac
import logging
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import numpy as np

from m2pt_deploy.errors import M2ptError
from m2pt_deploy.serving.batching import Draining, Overloaded, RequestTimeout
from m2pt_deploy.serving.core import Deadline, Prepared, ServerState, check_control_parameters, prepared_infer
from m2pt_deploy.serving.grpc_protocol import parse_grpc_request
from m2pt_deploy.serving.protocol import InferRequest, ProtocolError

__all__ = ["GRPC_STATUS", "GrpcInferenceService", "create_grpc_server", "require_grpc"]

log = logging.getLogger("m2pt_deploy.serving")

# The HTTP status a refusal carries -> the gRPC status code it becomes (Triton's mapping).
GRPC_STATUS = {
    400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 404: "NOT_FOUND", 408: "DEADLINE_EXCEEDED",
    413: "RESOURCE_EXHAUSTED", 415: "INVALID_ARGUMENT", 500: "INTERNAL", 503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
_OPEN_METHODS = frozenset({"ServerLive", "ServerReady"})  # as HTTP's health probes
_PROBE_SLOTS = 32  # concurrent RPCs allowed past the queue limit: probes and metadata
_MAX_GRPC_MESSAGE = (1 << 31) - 1


class _Refused(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def _given_key(metadata: Sequence[tuple[str, str | bytes]] | None) -> bytes:
    """The API key from ``x-api-key: KEY`` or ``authorization: Bearer KEY`` call metadata."""
    values = {k.lower(): v for k, v in metadata or () if isinstance(v, str)}
    if "x-api-key" in values:
        return values["x-api-key"].encode()
    scheme, _, token = values.get("authorization", "").partition(" ")
    return token.strip().encode() if scheme.lower() == "bearer" else b""


Method = Callable[[Any, Any, Any], Awaitable[Any]]


def _rpc(endpoint: str) -> Callable[[Method], Method]:
    """Authorise, map refusals to gRPC status codes, and count and time every answer."""

    def wrap(method: Method) -> Method:
        @functools.wraps(method)
        async def handler(self: GrpcInferenceService, request: Any, context: Any) -> Any:
            import grpc

            start = time.perf_counter()
            # ModelInfer and the repository calls name the model in model_name, the others in name
            name = getattr(request, "model_name", "") or getattr(request, "name", "")
            code, message, response = "OK", "", None
            try:
                if method.__name__ not in _OPEN_METHODS:
                    self._authorize(context)
                if isinstance(request, _Undecodable):
                    raise ProtocolError(f"request is not a valid {request.kind} protobuf message")
                response = await method(self, request, context)
            except _Refused as e:
                code, message = e.code, e.message
            except ProtocolError as e:
                code, message = GRPC_STATUS.get(e.status, "INTERNAL"), e.message
            except Overloaded:
                code, message = "UNAVAILABLE", "server is overloaded; retry later"
            except Draining:
                code, message = "UNAVAILABLE", "server is shutting down"
            except RequestTimeout:
                code, message = "DEADLINE_EXCEEDED", "request timed out"
            except Exception:
                log.exception("gRPC %s failed", method.__name__)
                code, message = "INTERNAL", "internal server error"
            self.state.metrics.observe_request(self.state.label(name), endpoint, code,
                                               time.perf_counter() - start, protocol="grpc")
            if code != "OK":
                await context.abort(getattr(grpc.StatusCode, code), message)
            return response

        return handler

    return wrap


def require_grpc() -> None:
    """Refuse with one line when the gRPC libraries are missing (they come with the serve extra)."""
    try:
        import grpc  # noqa: F401
        from tritonclient.grpc import service_pb2_grpc  # noqa: F401
    except (ImportError, RuntimeError):  # tritonclient.grpc raises RuntimeError without grpcio
        raise M2ptError("gRPC serving needs grpcio and tritonclient[grpc]: pip install "
                        "'m2pt-deploy[serve]', or pass --no-grpc") from None


def _servicer_base() -> type:
    from tritonclient.grpc import service_pb2_grpc

    return service_pb2_grpc.GRPCInferenceServiceServicer  # type: ignore[no-any-return]


class GrpcInferenceService(_servicer_base()):  # type: ignore[misc]
    """The KServe v2 / Triton gRPC service over a :class:`ServerState`.

    Implemented: ServerLive, ServerReady, ModelReady, ServerMetadata, ModelMetadata, ModelConfig,
    ModelInfer, ModelStatistics and RepositoryIndex; RepositoryModelLoad/Unload refuse (every model
    is loaded at start). Every other method (streaming, shared memory, trace, logging) answers
    UNIMPLEMENTED, counted in the metrics like every call.
    """

    def __init__(self, state: ServerState) -> None:
        from tritonclient.grpc import model_config_pb2, service_pb2

        self.state = state
        self.pb = service_pb2
        self.config_pb = model_config_pb2
        key = state.config.api_key
        self._key = key.encode() if key else None

    def _authorize(self, context: Any) -> None:
        if self._key is not None and not hmac.compare_digest(
            _given_key(context.invocation_metadata()), self._key
        ):
            raise _Refused("UNAUTHENTICATED", "missing or wrong API key")

    @_rpc("live")
    async def ServerLive(self, request: Any, context: Any) -> Any:
        return self.pb.ServerLiveResponse(live=True)

    @_rpc("ready")
    async def ServerReady(self, request: Any, context: Any) -> Any:
        return self.pb.ServerReadyResponse(ready=not self.state.draining)

    @_rpc("model_ready")
    async def ModelReady(self, request: Any, context: Any) -> Any:
        # As Triton: an unknown model or version is not an error here, just not ready.
        try:
            self.state.model(request.name, request.version or None)
        except ProtocolError:
            return self.pb.ModelReadyResponse(ready=False)
        return self.pb.ModelReadyResponse(ready=not self.state.draining)

    @_rpc("server")
    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        return self._message(self.pb.ServerMetadataResponse(), self.state.server_metadata())

    @_rpc("metadata")
    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        model = self.state.model(request.name, request.version or None)
        tensor = self.pb.ModelMetadataResponse.TensorMetadata
        return self.pb.ModelMetadataResponse(
            name=model.name, versions=[model.version], platform=model.platform,
            inputs=[tensor(name=t.name, datatype=t.datatype, shape=t.shape) for t in model.inputs],
            outputs=[tensor(name=t.name, datatype=t.datatype, shape=t.shape) for t in model.outputs])

    @_rpc("config")
    async def ModelConfig(self, request: Any, context: Any) -> Any:
        model = self.state.model(request.name, request.version or None)
        config = self._message(self.config_pb.ModelConfig(), self.state.model_config(model))
        return self.pb.ModelConfigResponse(config=config)

    @_rpc("statistics")
    async def ModelStatistics(self, request: Any, context: Any) -> Any:
        stats = self.state.model_statistics(request.name, request.version)
        return self._message(self.pb.ModelStatisticsResponse(), stats)

    @_rpc("repository_index")
    async def RepositoryIndex(self, request: Any, context: Any) -> Any:
        index = self.state.repository_index(ready_only=request.ready)
        return self._message(self.pb.RepositoryIndexResponse(), {"models": index})

    @_rpc("repository_load")
    async def RepositoryModelLoad(self, request: Any, context: Any) -> Any:
        self._control("load", request)
        await self.state.load_model(request.model_name)
        return self.pb.RepositoryModelLoadResponse()

    @_rpc("repository_unload")
    async def RepositoryModelUnload(self, request: Any, context: Any) -> Any:
        self._control("unload", request)
        await self.state.unload_model(request.model_name)
        return self.pb.RepositoryModelUnloadResponse()

    def _control(self, action: str, request: Any) -> None:
        try:
            self.state.require_model_control(action)
        except ProtocolError as e:  # UNIMPLEMENTED: Triton's code for an unsupported request
            raise _Refused("UNIMPLEMENTED", e.message) from None
        check_control_parameters(action, request.parameters)

    @_rpc("infer")
    async def ModelInfer(self, request: Any, context: Any) -> Any:
        state = self.state
        deadline = Deadline(state.config.request_timeout_s)
        client_left = context.time_remaining()
        if client_left is not None:
            deadline.shorten(int(client_left * 1e6))
        model = state.model(request.model_name, request.model_version or None)

        async def receive() -> Any:  # the message is already in, within the receive limit
            return request

        # The whole message's size: typed contents (fp32_contents, ...) are as large as raw ones.
        return await state.infer(model, deadline, receive, lambda message: message.ByteSize(),
                                 functools.partial(self._prepare, model),
                                 functools.partial(self._response, model))

    @staticmethod
    def _message(message: Any, doc: Any) -> Any:
        """``doc`` (the JSON form the HTTP front end sends) parsed into the protobuf ``message``."""
        from google.protobuf import json_format

        return json_format.ParseDict(doc, message)

    def _prepare(self, model: Any, request: Any) -> Prepared[InferRequest]:
        parsed = parse_grpc_request(request, allow_nonfinite=self.state.config.allow_nonfinite)
        return prepared_infer(model, parsed)

    def _response(self, model: Any, parsed: InferRequest, outputs: dict[str, np.ndarray]) -> Any:
        names = [o.name for o in parsed.outputs] if parsed.outputs else list(outputs)
        response = self.pb.ModelInferResponse(model_name=model.name, model_version=model.version,
                                              id=parsed.id or "")
        for name in names:
            array = outputs[name]
            array = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
            datatype = next(t.datatype for t in model.outputs if t.name == name)
            response.outputs.add(name=name, datatype=datatype, shape=array.shape)
            response.raw_output_contents.append(array.tobytes())
        return response


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _unimplemented(name: str) -> Callable[..., Awaitable[None]]:
    """A method of the service m2pt-serve does not offer: UNIMPLEMENTED, counted under its name."""

    async def method(self: GrpcInferenceService, request: Any, context: Any) -> None:
        import grpc

        model = getattr(request, "model_name", "") or getattr(request, "name", "")
        self.state.metrics.observe_request(self.state.label(model if isinstance(model, str) else ""),
                                           _snake(name), "UNIMPLEMENTED", None, protocol="grpc")
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{name} is not implemented by m2pt-serve")

    method.__name__ = name
    return method


for _name in dir(GrpcInferenceService):
    if _name[0].isupper() and _name not in vars(GrpcInferenceService):
        setattr(GrpcInferenceService, _name, _unimplemented(_name))


class _Undecodable:
    """A request whose bytes are not the method's protobuf message (refused as INVALID_ARGUMENT)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind


def _parser(message_class: Any) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        from google.protobuf.message import DecodeError

        try:
            return message_class.FromString(data)
        except DecodeError:
            return _Undecodable(message_class.DESCRIPTOR.full_name)

    return parse


def _handlers(servicer: GrpcInferenceService) -> Any:
    """The service's method handlers, as ``add_GRPCInferenceServiceServicer_to_server`` builds
    them, but with a parser that turns undecodable bytes into INVALID_ARGUMENT (gRPC's own would
    answer UNKNOWN with the parser's exception)."""
    import grpc
    from tritonclient.grpc import service_pb2

    service = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    handlers = {}
    for method in service.methods:
        kind = ("stream_stream" if method.client_streaming else "unary_unary")
        make = getattr(grpc, f"{kind}_rpc_method_handler")
        handlers[method.name] = make(
            getattr(servicer, method.name),
            request_deserializer=_parser(getattr(service_pb2, method.input_type.name)),
            response_serializer=lambda message: message.SerializeToString())
    return grpc.method_handlers_generic_handler(service.full_name, handlers)


def _unknown_methods(state: ServerState) -> Any:
    """Calls to methods outside the service (another service, a typo): UNIMPLEMENTED as gRPC
    answers them, but counted in the metrics under endpoint "unknown"."""
    import grpc

    class UnknownMethods(grpc.GenericRpcHandler):
        def service(self, details: Any) -> Any:
            method = str(details.method)[:200]

            async def refuse(request: bytes, context: Any) -> None:
                state.metrics.observe_request("", "unknown", "UNIMPLEMENTED", None, protocol="grpc")
                await context.abort(grpc.StatusCode.UNIMPLEMENTED,
                                    f"method {method} is not served by m2pt-serve")

            return grpc.unary_unary_rpc_method_handler(refuse)

    return UnknownMethods()


def create_grpc_server(state: ServerState, host: str, port: int) -> tuple[Any, int]:
    """A ``grpc.aio`` server for ``state`` bound to ``host:port`` (0: a free port), not started.

    Call inside the event loop that runs the HTTP server; returns the server and its port.
    """
    import grpc

    config = state.config
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", min(config.max_body_bytes, _MAX_GRPC_MESSAGE)),
            ("grpc.max_send_message_length", -1),
            # without this a second server may bind the same port silently (SO_REUSEPORT)
            ("grpc.so_reuseport", 0),
        ],
        maximum_concurrent_rpcs=config.max_queue * max(1, len(state.models)) + _PROBE_SLOTS,
    )
    server.add_generic_rpc_handlers((_handlers(GrpcInferenceService(state)), _unknown_methods(state)))
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError:
        bound = 0
    if not bound:
        raise M2ptError(f"cannot listen on {address} for gRPC: address in use or unavailable "
                        "(--grpc-port 0 picks a free port, --no-grpc turns gRPC off)")
    return server, bound
