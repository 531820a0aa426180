"""The server under pressure, in process on the tiny model, with the model thread held by a gate so that every
state (computing, queued, parsing, encoding) is reached on purpose, not by timing: a full queue answers 503
with Retry-After; a request past its deadline answers 503 (never computed if its batch had not started); a
client that disconnects takes its rows out before the model sees them; the event loop stays free (/health
answers) while a request is parsed, encoded or rendered; a body nested 100k deep is 422; an internal error
is 500 with an id and no internals, and is logged; the docs are behind the key; a request cancelled at
shutdown is 503. Every wait is bounded, so a regression fails instead of hanging."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time

import httpx
import pytest
from fastapi.testclient import TestClient

import endorm.serve.app as app_module
from endorm.io import row_to_example
from endorm.serve.app import ServeSettings, create_app

ROWS = [{"prompt": f"Question {i}: what is {i} plus {i}?", "response": f"It is {2 * i}." + " ok" * (i % 4)}
        for i in range(12)]
TOL = 1e-4
BOUND_S = 20.0  # no single wait in these tests may take longer: a regression fails instead of hanging


def direct(rm, rows):
    return rm.score_examples([row_to_example(r, where=i) for i, r in enumerate(rows)])


class Gate:
    """Holds the model thread (the batcher's ``process``) until opened, and records what reached the model."""

    def __init__(self, batcher):
        self.real, self.seen = batcher.process, []
        self.entered, self.opened = threading.Event(), threading.Event()
        batcher.process = self

    def __call__(self, items):
        self.seen.append(len(items))
        self.entered.set()
        self.opened.wait(BOUND_S)
        return self.real(items)


class StageGate:
    """Wraps a function the request thread calls; its first call blocks until opened (bounded)."""

    def __init__(self, fn):
        self.fn, self.calls, self.errors = fn, 0, []
        self.entered, self.opened, self.left = threading.Event(), threading.Event(), threading.Event()

    def __call__(self, *a, **kw):
        if not self.entered.is_set():
            self.entered.set()
            self.opened.wait(5)  # bounded: if this ran on the event loop, the loop is stuck here for 5 s
            self.left.set()
        try:
            return self.fn(*a, **kw)
        except BaseException as e:  # recorded: in a request thread whose client left, nobody else sees it
            self.errors.append(f"call {self.calls}: {type(e).__name__}: {e}")
            raise
        finally:
            self.calls += 1


async def until(cond, bound_s: float = BOUND_S) -> None:
    t0 = time.perf_counter()
    while not cond():
        if time.perf_counter() - t0 > bound_s:
            raise AssertionError(f"condition not reached within {bound_s} s")
        await asyncio.sleep(0.01)


class RawRequest:
    """One POST driven through the ASGI interface by hand, so the test decides when the client disconnects."""

    def __init__(self, app, path: str, payload: dict, headers: dict[str, str] | None = None):
        self.app, self.body = app, json.dumps(payload).encode()
        hdrs = {"content-type": "application/json", "content-length": str(len(self.body)), **(headers or {})}
        self.scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                      "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
                      "root_path": "", "headers": [(k.encode(), v.encode()) for k, v in hdrs.items()],
                      "client": ("127.0.0.1", 5000), "server": ("test", 80)}
        self.sent_body = False
        self.disconnect = asyncio.Event()
        self.status: int | None = None
        self.response = b""

    async def receive(self):
        if not self.sent_body:
            self.sent_body = True
            return {"type": "http.request", "body": self.body, "more_body": False}
        await self.disconnect.wait()  # as uvicorn does: after the body, receive() blocks until the client goes
        return {"type": "http.disconnect"}

    async def send(self, message):
        if message["type"] == "http.response.start":
            self.status = message["status"]
        elif message["type"] == "http.response.body":
            self.response += message.get("body", b"")

    async def run(self):
        await self.app(self.scope, self.receive, self.send)


def client_of(app) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test", timeout=BOUND_S)


def test_full_queue_is_503_with_retry_after(tiny_rm):
    app = create_app(tiny_rm, ServeSettings(max_rows=4, max_queue_rows=7, max_batch_rows=4, max_wait_ms=0))
    gate = Gate(app.state.batcher)
    load = app.state.load

    async def go():
        async with client_of(app) as c:
            def post(rows):
                return asyncio.wait_for(c.post("/score", json={"rows": rows}), BOUND_S)

            a = asyncio.create_task(post(ROWS[:4]))
            await until(gate.entered.is_set)  # A's 4 rows are being computed
            b = asyncio.create_task(post(ROWS[4:6]))  # 6 of 7 rows: admitted, queued
            await until(lambda: load.admitted_rows == 6)
            too_big = await post(ROWS[6:8])  # 8 > 7: refused
            d = asyncio.create_task(post(ROWS[8:9]))  # 7 of 7: admitted
            await until(lambda: load.admitted_rows == 7)
            full = await asyncio.wait_for(c.post("/score", content=b"{not json",
                                                 headers={"content-type": "application/json"}), BOUND_S)
            health = (await c.get("/health")).json()
            gate.opened.set()
            ra, rb, rd = await asyncio.wait_for(asyncio.gather(a, b, d), BOUND_S)
            after = await post(ROWS[6:8])
            return too_big, full, health, (ra, rb, rd), after

    too_big, full, health, answered, after = asyncio.run(go())
    for r in (too_big, full):
        assert r.status_code == 503, r.text
        assert "the queue is full" in r.json()["detail"] and int(r.headers["retry-after"]) >= 1
    assert "this request's 2 would pass the limit of 7" in too_big.json()["detail"]
    assert "7 rows waiting, limit 7" in full.json()["detail"]  # full: refused before its body is even parsed
    assert health["queued_rows"] == 7 and health["refused_queue_full"] == 2 and health["max_queue_rows"] == 7
    for r, rows in zip(answered, (ROWS[:4], ROWS[4:6], ROWS[8:9]), strict=True):
        assert r.status_code == 200 and r.json()["rewards"] == pytest.approx(direct(tiny_rm, rows), abs=TOL)
    # a refusal is temporary: once the queue drains, the same request is served
    assert after.status_code == 200 and after.json()["rewards"] == pytest.approx(direct(tiny_rm, ROWS[6:8]), abs=TOL)
    assert sorted(gate.seen) == [2, 3, 4]  # A; B with D; the retry. The refused requests never reached the model


def test_deadline_is_503_and_a_queued_request_is_never_computed(tiny_rm):
    app = create_app(tiny_rm, ServeSettings(request_timeout_s=1.0, max_batch_rows=2, max_wait_ms=0))
    gate = Gate(app.state.batcher)

    async def go():
        async with client_of(app) as c:
            a = asyncio.create_task(c.post("/score", json={"rows": ROWS[:2]}))
            await until(gate.entered.is_set)  # A is computing (held), B queues behind it
            b = asyncio.create_task(c.post("/score", json={"rows": ROWS[2:5]}))
            t0 = time.perf_counter()
            ra, rb = await asyncio.wait_for(asyncio.gather(a, b), BOUND_S)  # both past the deadline, gate closed
            waited = time.perf_counter() - t0
            gate.opened.set()
            await until(lambda: app.state.batcher.stats.batches == 1)  # A's batch finished (its answer discarded)
            rc = await asyncio.wait_for(c.post("/score", json={"rows": ROWS[5:6]}), BOUND_S)
            return ra, rb, waited, rc, (await c.get("/health")).json()

    ra, rb, waited, rc, health = asyncio.run(go())
    assert waited < 10
    assert ra.status_code == 503 and "computed too late" in ra.json()["detail"], ra.text
    assert rb.status_code == 503 and "never computed" in rb.json()["detail"], rb.text
    assert "--request-timeout-s 1 s" in rb.json()["detail"] and int(rb.headers["retry-after"]) >= 1
    assert rc.status_code == 200 and rc.json()["rewards"] == pytest.approx(direct(tiny_rm, ROWS[5:6]), abs=TOL)
    assert gate.seen == [2, 1]  # B's 3 rows never reached the model
    assert health["expired"] == 2 and health["dropped_rows"] == 3 and health["queued_rows"] == 0


def test_disconnected_client_never_reaches_the_model(tiny_rm):
    app = create_app(tiny_rm, ServeSettings(max_batch_rows=2, max_wait_ms=0))
    gate = Gate(app.state.batcher)
    batcher = app.state.batcher

    async def go():
        async with client_of(app) as c:
            a = asyncio.create_task(c.post("/score", json={"rows": ROWS[:2]}))
            await until(gate.entered.is_set)
            gone = RawRequest(app, "/score", {"rows": ROWS[2:5]})
            task = asyncio.create_task(gone.run())
            await until(lambda: batcher.queued == 1)  # queued behind A
            gone.disconnect.set()  # the client closes the connection
            await asyncio.wait_for(task, BOUND_S)  # its handler returns without waiting for the model
            gate.opened.set()
            ra = await asyncio.wait_for(a, BOUND_S)
            rc = await asyncio.wait_for(c.post("/score", json={"rows": ROWS[5:6]}), BOUND_S)  # after the gone one
            return gone, ra, rc, (await c.get("/health")).json()

    gone, ra, rc, health = asyncio.run(go())
    assert gone.status == 499  # nginx's "client closed request"; nobody receives it
    assert ra.status_code == 200 and rc.status_code == 200
    assert rc.json()["rewards"] == pytest.approx(direct(tiny_rm, ROWS[5:6]), abs=TOL)
    assert gate.seen == [2, 1]  # A, then C: the gone client's 3 rows never reached the model
    assert health["client_gone"] == 1 and health["dropped_rows"] == 3 and health["rows"] == 3
    assert health["queued_rows"] == 0


@pytest.mark.parametrize("stage", ["parse", "encode", "render"])
def test_event_loop_is_free_while_a_request_is_worked_on(tiny_rm, monkeypatch, stage):
    """/health answers while a request's parse, encoding or rendering is held in the request thread: that work
    is off the event loop (on it, /health could only answer after the 5 s hold). For parse and encode, the
    request is the issue's 1,024 rows, and its client then leaves: none of its rows reaches the model."""
    app = create_app(tiny_rm, ServeSettings(max_rows=1024))
    gate = Gate(app.state.batcher)
    gate.opened.set()
    if stage == "parse":
        held = StageGate(app_module.decode_json)
        monkeypatch.setattr(app_module, "decode_json", held)
    elif stage == "encode":
        held = StageGate(tiny_rm.encode_with_contrast)
        monkeypatch.setattr(tiny_rm, "encode_with_contrast", held)
    else:
        held = StageGate(tiny_rm.totals)
        monkeypatch.setattr(tiny_rm, "totals", held)
    rows = [ROWS[k % len(ROWS)] for k in range(1024 if stage != "render" else 2)]

    async def go():
        async with client_of(app) as c:
            req = RawRequest(app, "/score", {"rows": rows})
            task = asyncio.create_task(req.run())
            await until(held.entered.is_set)
            t0 = time.perf_counter()
            health = await asyncio.wait_for(c.get("/health"), BOUND_S)
            latency = time.perf_counter() - t0
            still_held = not held.left.is_set()
            if stage != "render":
                req.disconnect.set()
            held.opened.set()
            await asyncio.wait_for(task, BOUND_S)
            # a cancelled encode still finishes in the request thread: wait for it, so that it cannot share the
            # (session-wide) tokenizer with the next test's request thread. Not a speed bound: 1,024 encodes
            # take well under 1 s here, but this is only the wait for the thread to be done
            await until(lambda: held.calls == (len(rows) if stage == "encode" else 1) or held.errors, 120.0)
            return health, latency, still_held, req

    health, latency, still_held, req = asyncio.run(go())
    assert not held.errors, held.errors  # the held work itself failed (it would otherwise be lost silently)
    assert health.status_code == 200 and still_held, "/health waited for the request's work: it ran on the loop"
    assert latency < 1.0, latency
    if stage == "render":
        assert req.status == 200 and json.loads(req.response)["rewards"] == pytest.approx(
            direct(tiny_rm, rows), abs=TOL)
    else:
        assert req.status == 499 and gate.seen == []


@pytest.mark.parametrize("body", [b"[" * 100_000 + b"]" * 100_000, b'{"rows": ' + b"[" * 100_000,
                                  b'{"query": ' + b'{"a": ' * 50_000 + b"1" + b"}" * 50_001])
def test_deep_nesting_is_422(tiny_rm, body):
    with TestClient(create_app(tiny_rm)) as c:
        for path in ("/score", "/get_reward"):
            r = c.post(path, content=body, headers={"content-type": "application/json"})
            assert r.status_code == 422, r.text[:300]
            assert r.json()["detail"] == "malformed JSON body: nested too deeply"
        assert c.get("/health").json()["rows"] == 0


@pytest.mark.parametrize("where", ["model", "encoding"])
def test_internal_error_is_500_without_internals_and_logged(tiny_rm, monkeypatch, caplog, where):
    secret = "secret-internal-detail /srv/model.bin at 0xdeadbeef"
    app = create_app(tiny_rm)

    def boom(*a, **kw):
        raise RuntimeError(secret)

    if where == "model":
        app.state.batcher.process = boom
    else:
        monkeypatch.setattr(tiny_rm, "encode_with_contrast", boom)
    with caplog.at_level(logging.ERROR, logger="endorm.serve.app"), TestClient(app) as c:
        r = c.post("/score", json={"rows": ROWS[:2]})
        health = c.get("/health").json()
    assert r.status_code == 500
    detail = r.json()["detail"]
    assert detail.startswith("internal server error (id ")
    for leak in ("secret", "RuntimeError", "Traceback", "0xdeadbeef", "File "):
        assert leak not in r.text
    eid = detail.split("(id ")[1].split(";")[0]
    logged = [rec for rec in caplog.records if eid in rec.getMessage()]
    assert logged and logged[0].exc_info and secret in str(logged[0].exc_info[1])
    assert health["internal_errors"] == 1


def test_docs_need_the_key_when_one_is_set(tiny_rm):
    with TestClient(create_app(tiny_rm, ServeSettings(api_key="s3cret"))) as c:
        for path in ("/docs", "/redoc", "/openapi.json"):
            r = c.get(path)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", (path, r.text[:200])
            assert c.get(path, headers={"Authorization": "Bearer nope"}).status_code == 401
            assert c.get(path, headers={"Authorization": "Bearer s3cret"}).status_code == 200
        spec = c.get("/openapi.json", headers={"Authorization": "Bearer s3cret"}).json()
        assert "/score" in spec["paths"] and "/get_reward" in spec["paths"]
        assert c.get("/health").status_code == 200  # the probe stays open
    with TestClient(create_app(tiny_rm)) as c:  # no key: FastAPI's open docs
        assert c.get("/docs").status_code == 200 and c.get("/openapi.json").status_code == 200


def test_cancelled_at_shutdown_is_503(tiny_rm):
    """uvicorn cancels the requests still running when --graceful-timeout-s runs out: 503, not a 500, and a
    request that was only queued is never computed."""
    app = create_app(tiny_rm, ServeSettings(max_batch_rows=2, max_wait_ms=0))
    gate = Gate(app.state.batcher)

    async def go():
        async with client_of(app) as c:
            a = asyncio.create_task(c.post("/score", json={"rows": ROWS[:2]}))
            await until(gate.entered.is_set)
            queued = RawRequest(app, "/score", {"rows": ROWS[2:4]})
            task = asyncio.create_task(queued.run())
            await until(lambda: app.state.batcher.queued == 1)
            task.cancel(msg="Task cancelled, timeout graceful shutdown exceeded")  # what uvicorn does
            await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), BOUND_S)
            gate.opened.set()
            await asyncio.wait_for(a, BOUND_S)
            return queued

    queued = asyncio.run(go())
    assert queued.status == 503, queued.response
    assert "graceful timeout" in json.loads(queued.response)["detail"]
    assert gate.seen == [2]


def test_queue_smaller_than_a_request_is_refused_at_start(tiny_rm):
    with pytest.raises(ValueError, match="--max-queue-rows .* must be at least --max-rows"):
        create_app(tiny_rm, ServeSettings(max_rows=64, max_queue_rows=32))
    with pytest.raises(ValueError, match="must be positive"):
        create_app(tiny_rm, ServeSettings(request_timeout_s=0))
