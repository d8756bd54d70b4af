"""The protocol-neutral serving core that the HTTP and gRPC front ends both adapt.

It holds what a request needs whatever carried it: the models and their batchers, the limits and
the request deadline, the infer pipeline (queue place → payload → parse off the loop → batcher →
answer), the statistics extension's counters, the Prometheus metrics and the descriptions both
protocols give (server metadata, model config, repository index). A front end only turns its wire
format into these calls and their refusals into its status codes; neither imports the other.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import gc
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Generic, TypeVar

import numpy as np

from m2pt_deploy import __version__
from m2pt_deploy.errors import M2ptError
from m2pt_deploy.heap import release_freed_memory
from m2pt_deploy.serving.batching import Draining, DynamicBatcher, RequestTimeout
from m2pt_deploy.serving.metrics import ServingMetrics
from m2pt_deploy.serving.protocol import InferRequest, ProtocolError, validate_request
from m2pt_deploy.serving.runtime import OrtModel, RepositoryLoader
from m2pt_deploy.serving.statistics import BatchRun, ModelStatistics

__all__ = ["EXTENSIONS", "LARGE_PARSE_BYTES", "SERVER_NAME", "Deadline", "Prepared", "ServeConfig",
           "ServerState", "check_control_parameters", "model_feed", "off_loop", "prepared_infer", "trim_soon"]

SERVER_NAME = "m2pt-serve"
# The protocol extensions both front ends implement (Triton's names).
EXTENSIONS = ("binary_tensor_data", "model_configuration", "statistics", "model_repository")


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
P = TypeVar("P")
R = TypeVar("R")
A = TypeVar("A")


class Deadline:
    """The request timeout, counted from the first byte: it covers reading, parsing and decoding."""

    def __init__(self, timeout_s: float) -> None:
        self.start_ns = time.monotonic_ns()
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
        except ProtocolError as e:
            # NOTE a refusal raised through asyncio.wait_for (and off_loop's shield) carries a
            # traceback that forms a reference cycle (its frames hold the task and the future that
            # hold the error), and those frames hold the body and the parsed tensors: only the
            # cycle collector would free them, so three refused 60 MB bodies stacked in RSS. A
            # refusal needs no traceback (it is answered, never logged), so it leaves without one.
            e.__context__ = None
            raise e.with_traceback(None) from None


@dataclasses.dataclass(frozen=True)
class Prepared(Generic[R]):
    """A parsed request: the model's feed, its own timeout (µs) and what the answer needs of it."""

    feed: dict[str, np.ndarray]
    timeout_us: int | None
    request: R


class ServerState:
    """Models, their batchers, statistics and metrics, and the draining flag: one per server,
    shared by both front ends."""

    def __init__(self, models: Mapping[str, OrtModel], config: ServeConfig, *,
                 loader: RepositoryLoader | None = None) -> None:
        """``loader``: explicit model control over its repository (load / unload by name);
        without one, the models are fixed at start (Triton's ``--model-control-mode none``)."""
        self.config = config
        self.loader = loader
        self.metrics = ServingMetrics()
        self.draining = False
        self.models: dict[str, OrtModel] = {}
        self.statistics: dict[str, ModelStatistics] = {}
        self.batchers: dict[str, DynamicBatcher] = {}
        self._control = asyncio.Lock()  # one load or unload at a time
        for model in models.values():
            self._add(model)

    def _add(self, model: OrtModel) -> DynamicBatcher:
        config, name = self.config, model.name
        # bound to this model's counters: a replaced model's last batches never count for its successor
        statistics = ModelStatistics(name, model.version)
        batcher = DynamicBatcher(
            model.run, max_batch=min(config.max_batch, model.max_batch or config.max_batch),
            max_delay_s=config.max_delay_ms / 1000, max_queue=config.max_queue,
            batchable=model.batchable, on_batch=functools.partial(self._batch_done, name, statistics))
        self.models[name], self.batchers[name], self.statistics[name] = model, batcher, statistics
        self.metrics.track_queue(name, functools.partial(getattr, batcher, "depth"))
        return batcher

    async def load_model(self, name: str) -> None:
        """Load (or reload, picking up a new version) ``name`` from the repository; requests in
        flight on the replaced model finish on it. Refused unless model control is explicit."""
        loader = self.require_model_control("load")
        if self.draining:
            raise Draining
        async with self._control:
            if name not in loader.names():
                raise ProtocolError(f"no model '{name}' in the repository; it holds "
                                    f"{', '.join(loader.names()) or 'none'}", status=404)
            try:  # ONNX Runtime takes seconds to build a session: off the loop, probes still answer
                model = await asyncio.get_running_loop().run_in_executor(None, loader, name)
            except M2ptError as e:
                raise ProtocolError(f"failed to load '{name}': {e}") from None
            old = self.batchers.get(name)
            self._add(model).start()
            if old is not None:
                await old.close()

    async def unload_model(self, name: str) -> None:
        """Stop serving ``name``: new requests get 404, queued ones finish. Refused unless model
        control is explicit; unloading a model that is not loaded does nothing, as in Triton."""
        loader = self.require_model_control("unload")
        async with self._control:
            if name not in self.models and name not in loader.names():
                raise ProtocolError(f"no model '{name}' in the repository", status=404)
            batcher = self.batchers.pop(name, None)
            self.models.pop(name, None)
            self.statistics.pop(name, None)
            if batcher is not None:
                self.metrics.forget(name)
                await batcher.close()

    def require_model_control(self, action: str) -> RepositoryLoader:
        """The repository loader, or the refusal (400) when model control is not explicit."""
        if self.loader is None:
            raise ProtocolError(f"explicit model {action} is not supported: m2pt-serve loaded every model "
                                "at start (Triton's --model-control-mode none); start it with "
                                "--model-control-mode explicit to load and unload models")
        return self.loader

    def _batch_done(self, name: str, statistics: ModelStatistics, run: BatchRun) -> None:
        self.metrics.observe_batch(name, run.rows)
        statistics.batch_done(run)

    def model(self, name: str, version: str | None = None) -> OrtModel:
        model = self.models.get(name)
        if model is None:
            raise ProtocolError(f"unknown model '{name}'; serving {', '.join(sorted(self.models)) or 'none'}",
                                status=404)
        if version not in (None, model.version):
            raise ProtocolError(f"model '{name}' has no version {version!r}; serving version "
                                f"{model.version}", status=404)
        return model

    def label(self, name: str) -> str:
        """The metrics' model label: a served model's name, else empty (a bounded label set)."""
        return name if name in self.models else ""

    async def infer(self, model: OrtModel, deadline: Deadline, receive: Callable[[], Awaitable[P]],
                    size: Callable[[P], int], prepare: Callable[[P], Prepared[R]],
                    answer: Callable[[R, dict[str, np.ndarray]], A]) -> A:
        """One inference, whichever protocol carried it, counted in the model's statistics.

        The queue place is decided before ``receive`` reads the payload (so a full queue refuses
        before a byte of the body is read); the batcher hears of the request only once its payload
        is in (a stalled upload holds no batch back); ``prepare`` (parse and check) runs off the
        loop when the payload is large; ``answer`` encodes the outputs for the wire.
        """
        batcher, statistics = self.batchers[model.name], self.statistics[model.name]
        received, ok = 0, False
        try:
            with batcher.admitting() as admission:
                payload = await receive()
                received = size(payload)
                with batcher.arriving() as arrival:
                    prepared = await deadline.within(off_loop(received, functools.partial(prepare, payload)))
                    deadline.shorten(prepared.timeout_us)
                    outputs = await batcher.submit(prepared.feed, timeout_s=deadline.remaining(),
                                                   arrival=arrival, admission=admission)
            result = answer(prepared.request, outputs)
            ok = True
            return result
        except Draining:
            if self.draining or self.batchers.get(model.name) is batcher:
                raise
            raise ProtocolError(f"model '{model.name}' was unloaded or reloaded while this request "
                                "arrived; send it again", status=503) from None
        finally:
            statistics.request_done(time.monotonic_ns() - deadline.start_ns, ok=ok)
            if received >= LARGE_PARSE_BYTES:
                trim_soon()

    def server_metadata(self) -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": __version__, "extensions": list(EXTENSIONS)}

    def model_config(self, model: OrtModel) -> dict[str, Any]:
        """Triton's model configuration, in its JSON form (gRPC parses it into ``ModelConfig``)."""
        batcher = self.batchers[model.name]
        batched = model.batchable

        def tensors(specs: Any) -> list[dict[str, Any]]:
            return [{"name": t.name, "data_type": f"TYPE_{t.datatype}",
                     "dims": list(t.shape[1:] if batched else t.shape)} for t in specs]

        return {
            "name": model.name, "platform": model.platform,
            "max_batch_size": batcher.max_batch if batched else 0,
            "input": tensors(model.inputs), "output": tensors(model.outputs),
            "dynamic_batching": {"max_queue_delay_microseconds": int(batcher.max_delay_s * 1e6)},
        }

    def model_statistics(self, name: str = "", version: str = "") -> dict[str, Any]:
        """The statistics extension's answer: every model for an empty ``name``, else that one."""
        if not name:
            return {"model_stats": [s.to_dict() for _, s in sorted(self.statistics.items())]}
        model = self.model(name, version or None)
        return {"model_stats": [self.statistics[model.name].to_dict()]}

    def repository_index(self, *, ready_only: bool = False) -> list[dict[str, str]]:
        """The repository extension's index: every model found, with its state (and, as Triton
        writes it, a reason only when there is one)."""
        names = set(self.models) | set(self.loader.names() if self.loader else ())
        index = []
        for name in sorted(names):
            model = self.models.get(name)
            if model is not None and not self.draining:
                index.append({"name": name, "version": model.version, "state": "READY"})
            elif not ready_only:
                reason = "server is shutting down" if model is not None else "unloaded"
                entry = {"name": name, "version": model.version} if model is not None else {"name": name}
                index.append({**entry, "state": "UNAVAILABLE", "reason": reason})
        return index


def check_control_parameters(action: str, names: Iterable[str]) -> None:
    """Refuse a load's config override and model files (Triton's ``config`` and ``file:...``
    parameters): a model is loaded only as the repository holds it. Others (tritonclient sends
    ``unload_dependents``; no model here has dependents) change nothing."""
    unsupported = sorted(n for n in names if n == "config" or n.startswith("file:"))
    if unsupported:
        raise ProtocolError(f"model {action} parameter {unsupported[0]!r} is not supported (no config "
                            "overrides or model files); write the model into the repository and load "
                            "it by name")


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


def prepared_infer(model: OrtModel, parsed: InferRequest) -> Prepared[InferRequest]:
    """A parsed KServe v2 request (either protocol) checked against ``model``."""
    return Prepared(model_feed(model, parsed), parsed.timeout_us, parsed)


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
        loop.run_in_executor(None, _collect_and_trim)


def _collect_and_trim() -> None:
    # Whatever a large request left in reference cycles (see Deadline.within) is freed first: the
    # cycle collector counts allocations, so on a quiet server it may not run for a long time,
    # and malloc_trim alone then hands back nothing (219 MB of 384 MB stayed 20 s after three
    # refused 60 MB bodies).
    gc.collect()
    release_freed_memory()


def _then_trim(work: Callable[[], T]) -> T:
    try:
        return work()
    finally:
        release_freed_memory()
