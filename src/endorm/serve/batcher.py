"""Dynamic batching: concurrent requests are gathered for a few milliseconds and run as one batch.

One worker task owns the model. It waits for a request, then keeps collecting requests until
``max_wait_ms`` has passed or ``max_batch_items`` items are queued, runs the whole batch in a single
worker thread (so the event loop keeps accepting requests meanwhile), and hands each request back
exactly its own slice of the results, by position. While a batch runs, new requests queue up and form
the next batch, so under load batches grow without any waiting.

A request is never lost: each one carries its own future, which always gets a result or an error. If a
batch fails as a whole, each request in it is retried alone, so one bad request cannot fail the others.
When the worker stops for any reason (``close()`` at shutdown, or an unexpected error), every request
still queued, carried over or running is failed with ``ShuttingDown`` (the server answers 503), so no
caller waits forever.

A caller that stops waiting (its task is cancelled, e.g. because its HTTP client disconnected, or its
``timeout`` passes) takes its request out: if its batch has not started, its items are never computed
(counted in ``stats.dropped_requests``/``dropped_items``); if it has, the result is discarded. A timeout
raises ``DeadlineExceeded``, which says whether the work had started.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


class ShuttingDown(RuntimeError):
    """The batcher stopped before this request was answered (the server is shutting down)."""


class DeadlineExceeded(TimeoutError):
    """``submit``'s timeout passed; ``started`` says whether its batch was already running (its work is
    then discarded) or not (then it was never computed)."""

    def __init__(self, timeout: float, started: bool):
        where = "while its batch was computed" if started else "before its batch started (never computed)"
        super().__init__(f"not answered within {timeout:.3g} s: the deadline passed {where}")
        self.started = started


@dataclass
class _Pending:
    items: list[Any]
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)
    started: bool = False


@dataclass
class BatchStats:
    batches: int = 0
    requests: int = 0
    items: int = 0
    max_requests_in_batch: int = 0
    errors: int = 0
    dropped_requests: int = 0  # callers that left (cancelled or timed out) before their batch started
    dropped_items: int = 0  # ... and their items, never computed
    busy_s: float = 0.0  # time spent in process(): items / busy_s is the measured throughput

    @property
    def items_per_s(self) -> float | None:
        return self.items / self.busy_s if self.busy_s > 0 and self.items else None


class DynamicBatcher:
    """``await submit(items)`` -> ``process(items)`` of exactly those items, computed in a shared batch.

    ``process`` maps a list of items to a list of results of the same length (it runs in a thread).
    """

    def __init__(
        self,
        process: Callable[[list[Any]], Sequence[Any]],
        max_batch_items: int = 64,
        max_wait_ms: float = 5.0,
    ):
        if max_batch_items < 1 or max_wait_ms < 0:
            raise ValueError("max_batch_items must be >= 1 and max_wait_ms >= 0")
        self.process = process
        self.max_batch_items = max_batch_items
        self.max_wait = max_wait_ms / 1000.0
        self.stats = BatchStats()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="endorm-model")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[_Pending] | None = None
        self._task: asyncio.Task | None = None
        self._carry: _Pending | None = None
        self._inflight: list[_Pending] = []

    @property
    def queued(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    @property
    def computing(self) -> int:
        """Items of the batch being computed now (0 while the worker gathers or waits)."""
        return sum(len(p.items) for p in self._inflight if p.started and not p.future.done())

    def _ensure_running(self) -> None:
        # started lazily in the serving loop; a new loop (e.g. a second test client) gets a new worker
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._task is None or self._task.done():
            self._loop = loop
            self._queue = asyncio.Queue()
            self._task = loop.create_task(self._run(), name="endorm-batcher")

    async def submit(self, items: list[Any], timeout: float | None = None) -> list[Any]:
        """``process`` of ``items``; ``DeadlineExceeded`` if not answered within ``timeout`` seconds."""
        if not items:
            return []
        self._ensure_running()
        assert self._queue is not None
        p = _Pending(list(items), asyncio.get_running_loop().create_future())
        self._queue.put_nowait(p)  # unbounded here: the server bounds what it admits
        try:
            done, _ = await asyncio.wait({p.future}, timeout=timeout)  # a timeout leaves the future pending
        except asyncio.CancelledError:
            self._drop(p)
            raise
        if not done:
            started = p.started
            self._drop(p)
            raise DeadlineExceeded(timeout or 0.0, started)
        return p.future.result()

    def _drop(self, p: _Pending) -> None:
        """The caller stopped waiting: its request must not be computed (if not started) nor answered."""
        if p.future.done():
            return
        p.future.cancel()
        if not p.started:
            self.stats.dropped_requests += 1
            self.stats.dropped_items += len(p.items)
        p.items = []  # a dropped request holds no memory while it waits to be skipped

    async def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._fail_pending(ShuttingDown("the server is shutting down"))
        self._task = None

    def _fail_pending(self, error: BaseException) -> None:
        """Nothing queued, carried over or running is left unanswered."""
        left = list(self._inflight) + ([self._carry] if self._carry is not None else [])
        if self._queue is not None:
            while not self._queue.empty():
                left.append(self._queue.get_nowait())
        for p in left:
            if not p.future.done():
                p.future.set_exception(error)
        self._carry, self._inflight = None, []

    async def _gather(self) -> list[_Pending]:
        """The next batch: the carried-over request or the next queued one, plus whatever arrives in time."""
        assert self._queue is not None
        if self._carry is not None:
            first, self._carry = self._carry, None
        else:
            first = await self._queue.get()
        while first.future.done():  # its caller left: skip it
            first = await self._queue.get()
        batch, n = [first], len(first.items)
        self._inflight = batch  # from now on the batch is the worker's: close() must see it, even mid-gather
        deadline = first.enqueued + self.max_wait  # a request waits at most max_wait for company
        while n < self.max_batch_items:
            if self._queue.empty():
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                try:
                    nxt = await asyncio.wait_for(self._queue.get(), timeout=left)
                except asyncio.TimeoutError:
                    break
            else:
                nxt = self._queue.get_nowait()
            if nxt.future.done():
                continue
            if n + len(nxt.items) > self.max_batch_items:
                self._carry = nxt  # too big to join: it opens the next batch, ahead of later arrivals
                break
            batch.append(nxt)
            n += len(nxt.items)
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        self._carry = None
        try:
            while True:
                await self._run_batch(loop, await self._gather())
                self._inflight = []  # answered (or failed) by _run_batch
        except asyncio.CancelledError:
            self._fail_pending(ShuttingDown("the server is shutting down"))
            raise
        except BaseException as e:  # the worker died: fail its requests; the next submit starts a new one
            log.exception("the batching worker stopped")
            self._fail_pending(ShuttingDown(f"the batching worker stopped: {type(e).__name__}: {e}"))
            raise

    async def _run_batch(self, loop: asyncio.AbstractEventLoop, batch: list[_Pending]) -> None:
        live = [p for p in batch if not p.future.done()]  # a client that went away was cancelled
        if not live:
            return
        for p in live:
            p.started = True
        flat = [it for p in live for it in p.items]
        t0 = time.perf_counter()
        try:
            results = await loop.run_in_executor(self._executor, self._checked, flat)
        except Exception as e:  # noqa: BLE001 - retried per request below
            if len(live) == 1:
                self.stats.errors += 1
                if not live[0].future.done():
                    live[0].future.set_exception(e)
                return
            log.warning("a batch of %d requests failed (%s); retrying each alone", len(live), e)
            for p in live:
                await self._run_batch(loop, [p])
            return
        self.stats.busy_s += time.perf_counter() - t0
        self.stats.batches += 1
        self.stats.requests += len(live)
        self.stats.items += len(flat)
        self.stats.max_requests_in_batch = max(self.stats.max_requests_in_batch, len(live))
        pos = 0
        for p in live:
            mine = results[pos : pos + len(p.items)]
            pos += len(p.items)
            if not p.future.done():
                p.future.set_result(mine)

    def _checked(self, items: list[Any]) -> list[Any]:
        out = list(self.process(items))
        if len(out) != len(items):
            raise RuntimeError(f"process returned {len(out)} results for {len(items)} items")
        return out
