"""DynamicBatcher alone: results go back to the request that sent them, a failing request fails alone,
batches respect the size cap, and a caller that leaves (cancelled or timed out) before its batch
starts is never computed."""

import asyncio

import pytest

from endorm.serve.batcher import DynamicBatcher


def run(coro):
    return asyncio.run(coro)


def test_each_request_gets_its_own_results_in_order():
    sizes = []

    def process(items):
        sizes.append(len(items))
        return [x * 10 for x in items]

    async def go():
        b = DynamicBatcher(process, max_batch_items=7, max_wait_ms=30)
        reqs = [list(range(100 * k, 100 * k + 1 + k % 3)) for k in range(40)]
        outs = await asyncio.gather(*(b.submit(r) for r in reqs))
        await b.close()
        return reqs, outs, b.stats

    reqs, outs, st = run(go())
    for r, o in zip(reqs, outs, strict=True):
        assert o == [x * 10 for x in r]
    assert max(sizes) <= 7 and st.max_requests_in_batch > 1 and st.batches < 40
    assert st.items == sum(map(len, reqs))


def test_a_failing_request_fails_alone():
    def process(items):
        if any(x < 0 for x in items):
            raise ValueError("negative")
        return [x + 1 for x in items]

    async def go():
        b = DynamicBatcher(process, max_batch_items=64, max_wait_ms=30)
        res = await asyncio.gather(b.submit([1, 2]), b.submit([-1]), b.submit([5]), return_exceptions=True)
        await b.close()
        return res

    ok1, bad, ok2 = run(go())
    assert ok1 == [2, 3] and ok2 == [6]
    assert isinstance(bad, ValueError)


def test_oversized_request_runs_alone_and_nothing_is_lost():
    seen = []

    def process(items):
        seen.append(list(items))
        return items

    async def go():
        b = DynamicBatcher(process, max_batch_items=4, max_wait_ms=20)
        res = await asyncio.gather(b.submit([1]), b.submit(list(range(10, 20))), b.submit([2]), b.submit([3]))
        await b.close()
        return res

    res = run(go())
    assert res == [[1], list(range(10, 20)), [2], [3]]
    assert list(range(10, 20)) in seen  # the big one was not split or merged


def test_bad_settings():
    with pytest.raises(ValueError):
        DynamicBatcher(lambda x: x, max_batch_items=0)


def test_close_answers_running_and_queued_requests():
    import time

    def process(items):
        time.sleep(0.3)
        return items

    async def go():
        b = DynamicBatcher(process, max_batch_items=1, max_wait_ms=0)
        tasks = [asyncio.ensure_future(b.submit([k])) for k in range(3)]
        await asyncio.sleep(0.1)  # the first is running, the others queued
        await b.close()
        return await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), timeout=5)

    res = run(go())
    assert len(res) == 3 and all(isinstance(r, RuntimeError) and "shutting down" in str(r) for r in res)


def test_a_caller_that_leaves_is_never_computed():
    """A request whose caller is cancelled, or whose timeout passes, before its batch starts never reaches
    ``process``; one whose batch is running gets DeadlineExceeded(started=True) and its result is discarded."""
    import threading

    from endorm.serve.batcher import DeadlineExceeded

    gate, seen = threading.Event(), []

    def process(items):
        seen.append(list(items))
        gate.wait(10)
        return items

    async def go():
        b = DynamicBatcher(process, max_batch_items=2, max_wait_ms=0)
        running = asyncio.ensure_future(b.submit([1, 2], timeout=0.3))
        await asyncio.sleep(0.1)  # [1, 2] is on the model
        cancelled = asyncio.ensure_future(b.submit([3]))
        expiring = asyncio.ensure_future(b.submit([4], timeout=0.2))
        await asyncio.sleep(0.05)
        cancelled.cancel()
        res = await asyncio.wait_for(asyncio.gather(running, cancelled, expiring, return_exceptions=True), 5)
        gate.set()
        later = await asyncio.wait_for(b.submit([5]), 5)
        await b.close()
        return res, later, b.stats

    (running, cancelled, expiring), later, st = run(go())
    assert isinstance(running, DeadlineExceeded) and running.started
    assert isinstance(cancelled, asyncio.CancelledError)
    assert isinstance(expiring, DeadlineExceeded) and not expiring.started and "never computed" in str(expiring)
    assert later == [5]
    assert seen == [[1, 2], [5]]  # 3 and 4 never reached the model
    assert st.dropped_requests == 2 and st.dropped_items == 2
