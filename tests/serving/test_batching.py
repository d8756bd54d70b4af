"""DynamicBatcher on its own: coalescing, limits, overload, timeout, drain. No clocks asserted."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from m2pt_deploy.serving.batching import Draining, DynamicBatcher, Overloaded, RequestTimeout


class Model:
    """Doubles its input; records each call's batch; can be held to keep the worker busy."""

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.release = threading.Event()
        self.release.set()
        self.entered = threading.Event()

    def __call__(self, feed):
        self.entered.set()
        self.release.wait(timeout=10)
        x = feed["x"]
        self.calls.append(x.shape[0])
        return {"y": x * 2, "rows": np.arange(x.shape[0])}


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


def request(i: int, rows: int = 1, width: int = 4) -> dict[str, np.ndarray]:
    return {"x": np.full((rows, width), float(i), np.float32)}


async def _wait(event: threading.Event) -> None:
    while not event.is_set():
        await asyncio.sleep(0.005)


def test_concurrent_requests_are_coalesced_and_answered_with_their_own_rows():
    model = Model()

    async def main():
        model.release.clear()
        batcher = DynamicBatcher(model, max_batch=8, max_delay_s=0.05, max_queue=64)
        batcher.start()
        # hold the worker on a first request so the next twelve queue up together
        first = asyncio.ensure_future(batcher.submit(request(100), timeout_s=20))
        await _wait(model.entered)
        rest = [asyncio.ensure_future(batcher.submit(request(i, rows=1 + i % 2), timeout_s=20))
                for i in range(12)]
        await asyncio.sleep(0.05)
        model.release.set()
        results = await asyncio.gather(first, *rest)
        await batcher.close()
        return results

    results = run(main())
    for i, out in enumerate(results[1:]):
        assert out["y"].shape == (1 + i % 2, 4)
        np.testing.assert_array_equal(out["y"], np.full((1 + i % 2, 4), 2.0 * i))
    assert model.calls[0] == 1
    assert all(c <= 8 for c in model.calls)
    assert sum(model.calls) == 1 + sum(1 + i % 2 for i in range(12))
    assert max(model.calls) >= 6, model.calls


def test_max_batch_one_runs_every_request_alone():
    model = Model()

    async def main():
        batcher = DynamicBatcher(model, max_batch=1, max_delay_s=0.05, max_queue=64)
        batcher.start()
        out = await asyncio.gather(*(batcher.submit(request(i), timeout_s=20) for i in range(6)))
        await batcher.close()
        return out

    out = run(main())
    assert model.calls == [1] * 6
    assert [float(o["y"][0, 0]) for o in out] == [2.0 * i for i in range(6)]


def test_a_request_larger_than_max_batch_runs_alone_and_shapes_never_mix():
    model = Model()

    async def main():
        model.release.clear()
        batcher = DynamicBatcher(model, max_batch=4, max_delay_s=0.02, max_queue=64)
        batcher.start()
        first = asyncio.ensure_future(batcher.submit(request(0), timeout_s=20))
        await _wait(model.entered)
        big = asyncio.ensure_future(batcher.submit(request(1, rows=6), timeout_s=20))
        narrow = asyncio.ensure_future(batcher.submit(request(2, width=4), timeout_s=20))
        wide = asyncio.ensure_future(batcher.submit(request(3, width=5), timeout_s=20))
        await asyncio.sleep(0.02)
        model.release.set()
        results = await asyncio.gather(first, big, narrow, wide)
        await batcher.close()
        return results

    _, big, narrow, wide = run(main())
    assert big["y"].shape == (6, 4) and narrow["y"].shape == (1, 4) and wide["y"].shape == (1, 5)
    assert 6 in model.calls
    assert len(model.calls) == 4


def test_full_queue_refuses_instead_of_growing():
    model = Model()

    async def main():
        model.release.clear()
        batcher = DynamicBatcher(model, max_batch=1, max_delay_s=0, max_queue=2)
        batcher.start()
        running = asyncio.ensure_future(batcher.submit(request(0), timeout_s=20))
        await _wait(model.entered)
        queued = [asyncio.ensure_future(batcher.submit(request(i), timeout_s=20)) for i in (1, 2)]
        await asyncio.sleep(0)
        assert batcher.depth == 2
        with pytest.raises(Overloaded):
            await batcher.submit(request(3), timeout_s=20)
        model.release.set()
        done = await asyncio.gather(running, *queued)
        await batcher.close()
        return done

    assert [float(o["y"][0, 0]) for o in run(main())] == [0.0, 2.0, 4.0]


def test_timed_out_requests_are_dropped_before_they_run():
    model = Model()

    async def main():
        model.release.clear()
        batcher = DynamicBatcher(model, max_batch=1, max_delay_s=0, max_queue=8)
        batcher.start()
        running = asyncio.ensure_future(batcher.submit(request(0), timeout_s=20))
        await _wait(model.entered)
        with pytest.raises(RequestTimeout):
            await batcher.submit(request(1), timeout_s=0.05)
        model.release.set()
        await running
        after = await batcher.submit(request(2), timeout_s=20)
        await batcher.close()
        return after

    after = run(main())
    assert float(after["y"][0, 0]) == 4.0
    assert model.calls == [1, 1]


def test_close_finishes_queued_work_and_then_refuses():
    model = Model()

    async def main():
        model.release.clear()
        batcher = DynamicBatcher(model, max_batch=2, max_delay_s=0, max_queue=8)
        batcher.start()
        pending = [asyncio.ensure_future(batcher.submit(request(i), timeout_s=20)) for i in range(5)]
        await _wait(model.entered)
        closing = asyncio.ensure_future(batcher.close())
        await asyncio.sleep(0.01)
        with pytest.raises(Draining):
            await batcher.submit(request(9), timeout_s=20)
        model.release.set()
        await closing
        return await asyncio.gather(*pending)

    assert [float(o["y"][0, 0]) for o in run(main())] == [2.0 * i for i in range(5)]


def test_a_failing_model_fails_its_batch_only():
    calls = []

    def flaky(feed):
        calls.append(feed["x"].shape[0])
        if len(calls) == 1:
            raise RuntimeError("boom")
        return {"y": feed["x"]}

    async def main():
        batcher = DynamicBatcher(flaky, max_batch=1, max_delay_s=0, max_queue=8)
        batcher.start()
        with pytest.raises(RuntimeError, match="boom"):
            await batcher.submit(request(0), timeout_s=20)
        out = await batcher.submit(request(1), timeout_s=20)
        await batcher.close()
        return out

    assert float(run(main())["y"][0, 0]) == 1.0


def test_batch_observer_sees_each_calls_rows_and_timings():
    seen: list = []

    async def main():
        batcher = DynamicBatcher(Model(), max_batch=8, max_delay_s=0, max_queue=8, on_batch=seen.append)
        batcher.start()
        await batcher.submit(request(0, rows=3), timeout_s=20)
        await batcher.close()

    run(main())
    (call,) = seen
    assert call.rows == 3 and len(call.queue_ns) == 1
    assert min(call.queue_ns[0], call.input_ns, call.infer_ns, call.output_ns) >= 0


def test_a_lone_request_does_not_wait_out_the_batching_window():
    model = Model()

    async def main():
        batcher = DynamicBatcher(model, max_batch=8, max_delay_s=60, max_queue=8)
        batcher.start()
        # nothing else is on its way, so the 60 s window must not be waited out
        out = await batcher.submit(request(1), timeout_s=10)
        await batcher.close()
        return out

    assert float(run(main())["y"][0, 0]) == 2.0
    assert model.calls == [1]


def test_the_worker_waits_for_an_announced_request_and_batches_it():
    model = Model()

    async def main():
        batcher = DynamicBatcher(model, max_batch=8, max_delay_s=30, max_queue=8)
        batcher.start()
        with batcher.arriving() as late:
            first = asyncio.ensure_future(batcher.submit(request(1), timeout_s=20))
            await asyncio.sleep(0.05)
            assert model.calls == [] and not first.done()
            second = await batcher.submit(request(2), timeout_s=20, arrival=late)
        results = [await first, second]
        await batcher.close()
        return results

    first, second = run(main())
    assert model.calls == [2]
    assert float(first["y"][0, 0]) == 2.0 and float(second["y"][0, 0]) == 4.0


def test_an_announced_request_that_fails_to_arrive_releases_the_worker():
    model = Model()

    async def main():
        batcher = DynamicBatcher(model, max_batch=8, max_delay_s=60, max_queue=8)
        batcher.start()
        with batcher.arriving():
            first = asyncio.ensure_future(batcher.submit(request(1), timeout_s=10))
            await asyncio.sleep(0.05)
            assert not first.done()
        out = await first
        await batcher.close()
        return out

    assert float(run(main())["y"][0, 0]) == 2.0
