"""Dynamic batching: coalesce concurrent requests into one model call.

One worker per model takes the oldest request, waits at most ``max_delay_s`` from that
request's arrival for more, stacks up to ``max_batch`` rows and runs them in one call on a
single inference thread. It waits only while another request is on its way (announced by
:meth:`DynamicBatcher.arriving` once its body is read, while it is parsed): a lone client never pays the delay,
and requests that pile up while the model runs are batched at once. The queue is bounded: a full queue refuses at once
(:class:`Overloaded`) rather than growing memory, so overload becomes a 503 the client can
retry, not a slow death.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import dataclasses
import time
from collections.abc import Callable, Iterator, Mapping

import numpy as np

from m2pt_deploy.serving.statistics import BatchRun

__all__ = ["Admission", "Arrival", "DynamicBatcher", "Draining", "Overloaded", "RequestTimeout"]

Feed = Mapping[str, np.ndarray]
RunFn = Callable[[Feed], Mapping[str, np.ndarray]]


class Overloaded(Exception):
    """The queue is full."""


class Draining(Exception):
    """The server is shutting down and takes no new work."""


class RequestTimeout(Exception):
    """The request waited and ran longer than its timeout."""


@dataclasses.dataclass
class _Pending:
    feed: Feed
    rows: int
    future: asyncio.Future[dict[str, np.ndarray]]
    arrived: float
    queued_ns: int  # time.monotonic_ns() when queued, for the statistics' queue duration

    def key(self) -> tuple[object, ...]:
        """Requests stack only when every tensor agrees past the batch dimension."""
        return tuple((k, v.dtype.str, v.shape[1:]) for k, v in self.feed.items())


class Arrival:
    """A request on its way to :meth:`DynamicBatcher.submit`; the worker may wait for it."""

    def __init__(self, batcher: DynamicBatcher) -> None:
        self._batcher = batcher
        self._open = True
        batcher._on_the_way += 1

    def close(self) -> None:
        if self._open:
            self._open = False
            self._batcher._on_the_way -= 1
            self._batcher._wakeup.set()


class Admission:
    """A queue place held by a request whose body is still being read or parsed."""

    def __init__(self, batcher: DynamicBatcher) -> None:
        self._batcher = batcher
        self._open = True
        batcher._admitted += 1

    def close(self) -> None:
        if self._open:
            self._open = False
            self._batcher._admitted -= 1


class DynamicBatcher:
    """Queue + worker for one model; ``max_batch=1`` turns batching off."""

    def __init__(
        self,
        run: RunFn,
        *,
        max_batch: int,
        max_delay_s: float,
        max_queue: int,
        batchable: bool = True,
        on_batch: Callable[[BatchRun], None] | None = None,
    ) -> None:
        """``on_batch`` hears of every model call that returned, on the event loop."""
        if max_batch < 1 or max_queue < 1 or max_delay_s < 0:
            raise ValueError("max_batch and max_queue must be at least 1, max_delay_s >= 0")
        self._run = run
        self.max_batch = max_batch if batchable else 1
        self.max_delay_s = max_delay_s
        self.max_queue = max_queue
        self._on_batch = on_batch
        self._queue: collections.deque[_Pending] = collections.deque()
        self._wakeup = asyncio.Event()
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="infer")
        self._worker: asyncio.Task[None] | None = None
        self._closing = False
        self._busy = False
        self._on_the_way = 0
        self._admitted = 0

    @property
    def depth(self) -> int:
        return len(self._queue)

    def start(self) -> None:
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._work())

    @contextlib.contextmanager
    def admitting(self) -> Iterator[Admission]:
        """Hold a queue place while a request's body is read; refuse at once when none is left.

        Deciding before the body is read keeps a 503 cheap under overload: requests in upload
        count against ``max_queue`` with those already queued, until :meth:`submit` queues them.
        """
        if self._closing:
            raise Draining
        if len(self._queue) + self._admitted >= self.max_queue:
            raise Overloaded
        admission = Admission(self)
        try:
            yield admission
        finally:
            admission.close()

    @contextlib.contextmanager
    def arriving(self) -> Iterator[Arrival]:
        """Announce a request whose body is read, while it is parsed; pass it on to :meth:`submit`.

        Only a fully read body is announced: a stalled upload must never hold a batch back.
        """
        arrival = Arrival(self)
        try:
            yield arrival
        finally:
            arrival.close()

    async def submit(self, feed: Feed, *, timeout_s: float, arrival: Arrival | None = None,
                     admission: Admission | None = None) -> dict[str, np.ndarray]:
        """Queue one request (its rows along the first axis) and wait for its outputs."""
        if admission is not None:
            admission.close()
        if self._closing:
            raise Draining
        if len(self._queue) >= self.max_queue:
            raise Overloaded
        loop = asyncio.get_running_loop()
        rows = next(iter(feed.values())).shape[0]
        pending = _Pending(feed, rows, loop.create_future(), loop.time(), time.monotonic_ns())
        self._queue.append(pending)
        self._wakeup.set()
        if arrival is not None:
            arrival.close()
        try:
            return await asyncio.wait_for(pending.future, timeout_s)
        except TimeoutError:
            raise RequestTimeout from None

    async def close(self) -> None:
        """Take no new work, finish what is queued or running, then stop the worker."""
        self._closing = True
        while self._queue or self._busy:
            await asyncio.sleep(0.01)
        if self._worker is not None:
            self._worker.cancel()
        self._executor.shutdown(wait=True)

    async def _next(self, deadline: float | None) -> _Pending | None:
        loop = asyncio.get_running_loop()
        while not self._queue:
            self._wakeup.clear()
            if deadline is not None and self._on_the_way == 0:
                return None
            if deadline is None:
                await self._wakeup.wait()
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                return None
        return self._queue.popleft()

    async def _collect(self) -> list[_Pending]:
        first = await self._next(None)
        assert first is not None
        batch, rows, key = [first], first.rows, first.key()
        deadline = first.arrived + self.max_delay_s
        while rows < self.max_batch:
            item = await self._next(deadline)
            if item is None:
                break
            if rows + item.rows > self.max_batch or item.key() != key:
                self._queue.appendleft(item)
                break
            batch.append(item)
            rows += item.rows
        return [p for p in batch if not p.future.done()]

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            if not batch:
                continue
            self._busy = True
            try:
                outputs, started, input_ns, infer_ns = await loop.run_in_executor(
                    self._executor, self._run_stacked, batch)
                split = time.monotonic_ns()
                self._deliver(batch, outputs)
                if self._on_batch is not None:
                    self._on_batch(BatchRun(
                        sum(p.rows for p in batch), tuple(started - p.queued_ns for p in batch),
                        input_ns, infer_ns, time.monotonic_ns() - split))
            except Exception as e:  # a model failure fails this batch, not the server
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(e)
            finally:
                self._busy = False

    def _run_stacked(self, batch: list[_Pending]) -> tuple[Mapping[str, np.ndarray], int, int, int]:
        """The outputs, when the call started, and how long stacking and the model took (ns)."""
        started = time.monotonic_ns()
        if len(batch) == 1:
            feed = batch[0].feed
        else:
            feed = {k: np.concatenate([p.feed[k] for p in batch]) for k in batch[0].feed}
        stacked = time.monotonic_ns()
        outputs = self._run(feed)
        return outputs, started, stacked - started, time.monotonic_ns() - stacked

    def _deliver(self, batch: list[_Pending], outputs: Mapping[str, np.ndarray]) -> None:
        if len(batch) == 1:
            if not batch[0].future.done():
                batch[0].future.set_result(dict(outputs))
            return
        total = sum(p.rows for p in batch)
        for name, value in outputs.items():
            if value.shape[:1] != (total,):
                raise RuntimeError(f"output {name} has shape {value.shape} for a batch of {total}")
        start = 0
        for p in batch:
            part = {k: v[start:start + p.rows] for k, v in outputs.items()}
            start += p.rows
            if not p.future.done():
                p.future.set_result(part)
