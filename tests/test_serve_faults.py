"""Faults of the reward server: `endorm serve` runs as a subprocess on the tiny model (127.0.0.1, a free
port) and must survive a client that disconnects mid-body, one that disconnects while waiting for its
answer, one that disconnects while its request is queued behind another (its rows are never computed),
and one whose request times out (after each: alive, /health's queued count back to 0, a probe
answered correctly), then a SIGTERM while a burst of requests is in flight (each ends as 200 with correct
rewards, 503 or a connection error; nothing wrong, nothing hangs; the process exits within a bound).
The phases are benchmarks/serve_load.py's, which runs them after its full load test. In process: a
batcher that stops fails its pending requests with ShuttingDown, which the app answers with 503."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import secrets
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

_path = Path(__file__).resolve().parents[1] / "benchmarks" / "serve_load.py"
_spec = importlib.util.spec_from_file_location("serve_load", _path)
sl = importlib.util.module_from_spec(_spec)
sys.modules["serve_load"] = sl
_spec.loader.exec_module(sl)

ROWS = [
    {"prompt": "What is 2 + 3?", "response": "2 + 3 = 5. The answer is 5."},
    {"prompt": "Name a prime number.", "response": "Seven is prime.", "system": "Answer briefly."},
    {"prompt": "Explain photosynthesis.", "response": "Plants turn light, water and CO2 into sugar and oxygen. " * 6},
    {"prompt": "Count to five.", "response": "one two three four five"},
] + [{"prompt": f"Question {k}: how many apples are left if you eat {k} of {k + 9}?",
      "response": f"You start with {k + 9} apples and eat {k}, so {9} are left. " * (1 + k % 4)}
     for k in range(40)]


@pytest.fixture(scope="module")
def server(tiny_model_dir, tiny_rm, tmp_path_factory):
    from endorm.io import row_to_example

    port, key = sl.free_port(), secrets.token_hex(8)
    log = tmp_path_factory.mktemp("serve-faults") / "server.log"
    cmd = [sys.executable, "-m", "endorm", "serve", "--model", str(tiny_model_dir), "--host", "127.0.0.1",
           "--port", str(port), "--max-batch-rows", "8", "--max-wait-ms", "5", "--graceful-timeout-s", "10",
           "--log-level", "warning"]
    with open(log, "wb") as f:
        proc = subprocess.Popen(cmd, env={**os.environ, "ENDORM_API_KEY": key}, stdout=subprocess.DEVNULL, stderr=f)
    try:
        import httpx

        t0 = time.monotonic()
        while time.monotonic() - t0 < 300:  # bounded; generous: imports (torch) are slow on a busy machine
            assert proc.poll() is None, log.read_text()[-2000:]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        else:
            pytest.fail("the server did not come up within 300 s")
        tok = tiny_rm.tokenizer
        queries = [None if "system" in r else tok.apply_chat_template(
            [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["response"]}],
            tokenize=False) for r in ROWS]
        ref = tiny_rm.score_examples([row_to_example(r, where=i) for i, r in enumerate(ROWS)])
        yield {"proc": proc, "port": port, "key": key, "url": f"http://127.0.0.1:{port}", "log": log,
               "traffic": sl.Traffic(ROWS, queries, ref)}
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


BIG = list(range(2, len(ROWS)))  # 42 rows: several batches of 8
PROBE = [0, 1]  # one with a system prompt


def _run(coro, bound_s: float = 60):
    return asyncio.run(asyncio.wait_for(coro, timeout=bound_s))


@pytest.mark.parametrize("body_share", [0.5, 1.0], ids=["mid-body", "waiting-for-answer"])
def test_client_disconnects(server, body_share):
    s = server
    res = _run(sl.fault_disconnect(s["url"], s["port"], s["key"], s["proc"], s["traffic"], BIG, PROBE,
                                   body_share, 0.1, 30))
    assert res["pass"], res


def test_disconnect_while_queued_is_never_computed(server):
    """Through the real uvicorn: a request queued behind a 168-row blocker whose client closes the connection
    is dropped; the model computes the blocker's rows and none of the gone request's."""
    s = server
    res = _run(sl.fault_disconnect_queued(s["url"], s["port"], s["key"], s["proc"], s["traffic"], BIG * 4,
                                          [2, 3, 4], PROBE, 30))
    assert res["gone_was_queued"] and res["blocker_answered_correctly"], res
    assert res["health_delta"] == {"client_gone": 1, "dropped_rows": 3, "rows": len(BIG) * 4}, res["health_delta"]
    assert res["pass"], res


def test_client_timeout(server):
    s = server
    res = _run(sl.fault_client_timeout(s["url"], s["key"], s["proc"], s["traffic"], BIG, PROBE, 0.01, 30))
    assert res["timed_out"], res
    assert res["pass"], res


def test_sigterm_under_load(server):
    """Last: it stops the server."""
    s = server
    burst = [([i], s["traffic"].queries[i] is not None and k % 2 == 1) for k, i in enumerate(range(2, len(ROWS)))]
    res = _run(sl.fault_sigterm(s["url"], s["key"], s["proc"], s["traffic"], burst, 30, 30), bound_s=100)
    assert res["wrong"] == 0 and not res["other"] and res["client_hung"] == 0, res
    assert res["finished_ok"] + res["failed_503"] + res["failed_connection"] == len(burst), res
    assert res["exit_code"] is not None and res["exit_s"] < 30, res
    assert all(o in ("connection_error", "503") for o in res["late_requests"]), res
    assert res["pass"], res
    assert "Traceback" not in s["log"].read_text(errors="replace"), s["log"].read_text()[-3000:]


# ---- in process: the batcher never leaves a request waiting -------------------------------------------

def test_close_fails_pending_with_shutting_down():
    from endorm.serve.batcher import DynamicBatcher, ShuttingDown

    gate = threading.Event()

    def slow(items):
        gate.wait(10)
        return items

    async def go():
        b = DynamicBatcher(slow, max_batch_items=2, max_wait_ms=0)
        tasks = [asyncio.create_task(b.submit([k, k])) for k in range(4)]  # one running, three queued
        await asyncio.sleep(0.2)
        await asyncio.wait_for(b.close(), timeout=5)
        gate.set()
        return await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), timeout=5)

    got = asyncio.run(go())
    assert all(isinstance(g, ShuttingDown) for g in got), got


def test_close_while_gathering_fails_the_held_request():
    """The worker holds a request while it waits for company; close() then must still answer it
    (it used to be dropped: its caller waited forever)."""
    from endorm.serve.batcher import DynamicBatcher, ShuttingDown

    async def go():
        b = DynamicBatcher(lambda items: items, max_batch_items=64, max_wait_ms=5000)
        t = asyncio.create_task(b.submit([1]))
        await asyncio.sleep(0.2)  # popped from the queue, waiting up to 5 s for more
        assert b.queued == 0
        await asyncio.wait_for(b.close(), timeout=5)
        return await asyncio.wait_for(asyncio.gather(t, return_exceptions=True), timeout=5)

    (got,) = asyncio.run(go())
    assert isinstance(got, ShuttingDown), got


def test_dead_worker_fails_pending_and_restarts():
    from endorm.serve.batcher import DynamicBatcher, ShuttingDown

    async def go():
        b = DynamicBatcher(lambda items: items, max_batch_items=4, max_wait_ms=50)
        real = b._run_batch
        calls = []

        async def broken(loop, batch):
            calls.append(len(batch))
            if len(calls) == 1:
                raise RuntimeError("bug in the worker")
            return await real(loop, batch)

        b._run_batch = broken
        first = await asyncio.wait_for(asyncio.gather(b.submit([1]), b.submit([2]), return_exceptions=True), 5)
        again = await asyncio.wait_for(b.submit([3]), 5)  # a new worker
        await b.close()
        return first, again

    first, again = asyncio.run(go())
    assert all(isinstance(g, ShuttingDown) for g in first), first
    assert again == [3]


def test_shutting_down_is_503(tiny_rm):
    from fastapi.testclient import TestClient

    from endorm.serve.app import create_app
    from endorm.serve.batcher import ShuttingDown

    app = create_app(tiny_rm)

    async def refuse(items, timeout=None):
        raise ShuttingDown("the server is shutting down")

    app.state.batcher.submit = refuse
    with TestClient(app) as c:
        r = c.post("/score", json={"rows": ROWS[:1]})
    assert r.status_code == 503, r.text
    assert "shutting down" in r.json()["detail"] and r.headers.get("retry-after") == "1"


# a request cancelled by uvicorn at shutdown is 503: tests/test_serve_backpressure.py cancels the real task


def test_idle_keep_alive_connection_is_still_open_after_6_s(served_tiny):
    """A client that reuses an idle connection after 6 s is answered (uvicorn's default closed it at 5 s, the
    same moment httpx's pool expires it: the race that lost one request in the 10-minute soak)."""
    import socket
    import time
    from urllib.parse import urlsplit

    u = urlsplit(served_tiny)
    request = f"GET /health HTTP/1.1\r\nHost: {u.hostname}:{u.port}\r\nConnection: keep-alive\r\n\r\n".encode()

    def exchange(sock: socket.socket) -> bytes:
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                return data
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = int(next(h.split(b":")[1] for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")))
        while len(body) < length:
            body += sock.recv(4096)
        return head

    with socket.create_connection((u.hostname, u.port), timeout=30) as sock:
        assert exchange(sock).startswith(b"HTTP/1.1 200")
        time.sleep(6.0)
        assert exchange(sock).startswith(b"HTTP/1.1 200")
