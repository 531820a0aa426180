"""DynamicBatcher alone: results go back to the request that sent them, a failing request fails alone,
and batches respect the size cap."""

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
