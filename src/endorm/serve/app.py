"""The endorm reward server (FastAPI): OpenRLHF's remote reward-model contract and endorm's own rows.

Endpoints
- ``POST /get_reward``: OpenRLHF's ``--remote_rm_url`` contract. ``{"query": [...], "prompts": [...],
  "labels": [...]}`` -> ``{"rewards": [...], "scores": [...], "extra_logs": {...}}``; ``query`` is the
  prompt + response rendered with the chat template (see ``endorm.serve.openrlhf``); labels are accepted
  and unused (the endogenous reward needs no reference).
- ``POST /score``: ``{"rows": [<row as in endorm score>], "tokens": false}`` -> ``{"rewards": [...]}``
  (+ ``"token_rewards"``: one ``TokenRewards`` dict per row when ``tokens`` is true).
- ``GET /health``: liveness, load and batching counters (no auth, so a load balancer can probe it).

A request goes through one pipeline: auth (401), the body read with a byte cap (413), then in one request
thread (never on the event loop, so ``/health`` and other requests stay answered while a big body is
parsed) the JSON parse and field checks (422 naming the row and field; 422 for a body nested too deeply;
413 over ``max_rows``), admission against ``max_queue_rows`` (503 + ``Retry-After`` when full), the
chat-template encoding (request thread), the shared ``DynamicBatcher`` (model thread), and the rendering
of the answer (request thread). From the moment its body is read, the request is raced against its
client's disconnect (the ASGI ``receive`` returns ``http.disconnect``): a client that leaves takes its
rows out of the queue before they reach the model. A request not answered ``request_timeout_s`` after
it arrived gets 503 + ``Retry-After`` (its rows are never computed if their batch had not started).
Shutdown, like overload, is 503. An unexpected error is logged with an id and answered 500 with that id
only, never the exception text.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import secrets
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import JSONResponse, Response
from starlette.requests import ClientDisconnect

from endorm.chat import Encoded, RowError
from endorm.io import row_to_example
from endorm.reward_model import EndogenousRewardModel
from endorm.scoring import TokenStats
from endorm.serve.batcher import DeadlineExceeded, DynamicBatcher, ShuttingDown
from endorm.serve.openrlhf import QuerySplitter

log = logging.getLogger(__name__)

CLIENT_GONE = 499  # nginx's "client closed request": logged, never received by anyone


@dataclass
class ServeSettings:
    """Limits and batching of the server (also flags of ``endorm serve``)."""

    api_key: str | None = field(
        default=None,
        metadata={"help": "require 'Authorization: Bearer KEY' (default: env ENDORM_API_KEY; unset = no auth)"},
    )
    max_body_mb: float = field(default=16.0, metadata={"help": "largest request body in MiB (else 413)"})
    max_rows: int = field(default=1024, metadata={"help": "most rows (or queries) in one request (else 413)"})
    max_batch_rows: int = field(default=64, metadata={"help": "most rows the batcher runs in one model batch"})
    max_wait_ms: float = field(default=5.0, metadata={"help": "how long a request waits for others to batch with"})
    max_queue_rows: int = field(
        default=4096,
        metadata={"help": "most rows admitted and not yet answered (being parsed, encoded, queued or computed); a "
                          "request that would pass it gets 503 with Retry-After. At least --max-rows (default 4096)"},
    )
    request_timeout_s: float = field(
        default=120.0,
        metadata={"help": "a request not answered this long after its body arrived gets 503 with Retry-After (its "
                          "rows are never computed if their batch had not started); keep it below your client's "
                          "timeout (default 120)"},
    )

    def check(self) -> None:
        if (self.max_rows < 1 or self.max_batch_rows < 1 or self.max_body_mb <= 0 or self.max_wait_ms < 0
                or not self.request_timeout_s > 0):
            raise ValueError("--max-rows, --max-batch-rows, --max-body-mb and --request-timeout-s must be positive, "
                             "--max-wait-ms at least 0")
        if self.max_queue_rows < self.max_rows:
            raise ValueError(f"--max-queue-rows ({self.max_queue_rows}) must be at least --max-rows "
                             f"({self.max_rows}), or a full-size request could never be admitted")


def _token_rewards(rm: EndogenousRewardModel, stats: TokenStats,
                   base: TokenStats | None = None) -> tuple[float, dict[str, Any]]:
    tr = rm.token_view(stats, base)
    return tr.total, tr.to_dict()


class HTTPError(Exception):
    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.status, self.detail, self.headers = status, detail, headers


def decode_json(body: bytes) -> Any:
    """The request body as JSON, or 422 saying why not (also for nesting deeper than the parser's recursion
    limit: ``[[[[...`` 100k deep must not surface as a 500)."""
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        msg = f"{e.msg} at line {e.lineno} column {e.colno}" if isinstance(e, json.JSONDecodeError) else str(e)
        raise HTTPError(422, f"malformed JSON body: {msg}") from None
    except RecursionError:
        raise HTTPError(422, "malformed JSON body: nested too deeply") from None


@dataclass
class Job:
    """One request on its way through the pipeline: what its handler parsed, encoded and will render."""

    n_rows: int
    payload: Any  # what parse() returned for encode()
    encoded: list[Encoded] = field(default_factory=list)


@dataclass
class LoadCounters:
    """Admission state and what was refused or dropped (shown by /health)."""

    admitted_rows: int = 0  # admitted and not yet answered: being encoded, queued or computed
    refused_queue_full: int = 0
    expired: int = 0
    client_gone: int = 0
    internal_errors: int = 0


def create_app(
    rm: EndogenousRewardModel, settings: ServeSettings | None = None, model_name: str | None = None
) -> FastAPI:
    """A FastAPI app serving ``rm``. One app owns one model and one batcher."""
    s = settings or ServeSettings()
    s.check()
    max_body = int(s.max_body_mb * 1024 * 1024)

    def process(encoded: list[Encoded]) -> list[TokenStats]:
        return rm.stats_encoded(encoded)

    batcher = DynamicBatcher(process, max_batch_items=s.max_batch_rows, max_wait_ms=s.max_wait_ms)
    # one thread parses, encodes and renders every request: off the event loop, and never two threads on the
    # tokenizer at once; a job still waiting for it when its client leaves is cancelled before it runs
    request_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="endorm-requests")
    load = LoadCounters()
    splitter: list[QuerySplitter] = []  # built on first use: needs a chat template, /score does not
    splitter_lock = threading.Lock()

    @asynccontextmanager
    async def lifespan(app: Any):
        yield
        await batcher.close()

    # with a key, the docs are served behind it (routes below) instead of FastAPI's open ones
    open_docs = not s.api_key
    app = FastAPI(title="endorm reward server", lifespan=lifespan, docs_url="/docs" if open_docs else None,
                  redoc_url="/redoc" if open_docs else None, openapi_url="/openapi.json" if open_docs else None)
    app.state.batcher = batcher
    app.state.rm = rm
    app.state.load = load

    @app.exception_handler(HTTPError)
    async def _http_error(request: Request, e: HTTPError):
        return JSONResponse({"detail": e.detail}, status_code=e.status, headers=e.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, e: Exception):  # a safety net: the pipeline catches its own
        return JSONResponse({"detail": internal_error(e, request)}, status_code=500)

    def internal_error(e: BaseException, request: Request) -> str:
        """Log ``e`` with a fresh id; the client gets the id only (no exception text, no traceback)."""
        eid = secrets.token_hex(6)
        load.internal_errors += 1
        log.error("internal error %s on %s %s", eid, request.method, request.url.path, exc_info=e)
        return f"internal server error (id {eid}; the server log has the details)"

    def check_auth(request: Request) -> None:
        if not s.api_key:
            return
        got = request.headers.get("authorization", "")
        scheme, _, token = got.partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip().encode(), s.api_key.encode()):
            raise HTTPError(401, "missing or wrong API key (send 'Authorization: Bearer <key>')",
                            {"WWW-Authenticate": "Bearer"})

    def retry_after() -> dict[str, str]:
        """Seconds until the admitted rows are done, at the measured throughput (1 to 60 s)."""
        rate = batcher.stats.items_per_s
        wait = load.admitted_rows / rate if rate else 1.0
        return {"Retry-After": str(min(60, max(1, math.ceil(wait))))}

    def overloaded(why: str) -> HTTPError:
        return HTTPError(503, f"{why}; retry later", retry_after())

    async def read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > max_body:
            raise HTTPError(413, f"request body of {declared} bytes exceeds the limit of {max_body} bytes")
        body = bytearray()
        try:
            async for chunk in request.stream():  # counted as it arrives: a lying or absent length cannot bypass it
                body += chunk
                if len(body) > max_body:
                    raise HTTPError(413, f"request body exceeds the limit of {max_body} bytes")
        except ClientDisconnect:  # the client left mid-body: nobody to answer, nothing to log as a server error
            raise HTTPError(400, "the client disconnected before sending the whole body") from None
        return bytes(body)

    def list_field(body: Any, name: str, required: bool = True) -> list[Any] | None:
        if not isinstance(body, dict):
            raise HTTPError(422, f"the body must be a JSON object, got {type(body).__name__}")
        if name not in body or body[name] is None:
            if required:
                raise HTTPError(422, f"field {name!r} is required")
            return None
        v = body[name]
        if not isinstance(v, list):
            raise HTTPError(422, f"field {name!r} must be a list, got {type(v).__name__}")
        if len(v) > s.max_rows:
            raise HTTPError(413, f"field {name!r} has {len(v)} entries; the limit is {s.max_rows} per request")
        return v

    async def in_thread(fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(request_thread, fn, *args)

    async def until_disconnected(request: Request) -> None:
        # the body is read, so the server's receive() now blocks until the client goes (or the answer is sent)
        while (await request.receive())["type"] != "http.disconnect":
            pass

    def to_json(out: dict) -> bytes:
        return json.dumps(out, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()

    async def pipeline(body: bytes, parse: Callable[[Any], Job], encode: Callable[[Job], list[Encoded]],
                       render: Callable[[Job, list[TokenStats]], dict]) -> Response:
        t_arrival = time.perf_counter()
        if load.admitted_rows >= s.max_queue_rows:  # full already: refuse before spending a parse on it
            load.refused_queue_full += 1
            raise overloaded(f"the queue is full ({load.admitted_rows} rows waiting, limit {s.max_queue_rows})")
        held = 1  # a request waiting for its parse holds one row, so parses cannot pile up past the limit
        load.admitted_rows += held
        try:
            job = await in_thread(lambda: parse(decode_json(body)))
            need = max(1, job.n_rows)
            if load.admitted_rows - held + need > s.max_queue_rows:
                load.refused_queue_full += 1
                raise overloaded(f"the queue is full ({load.admitted_rows - held} rows waiting; this request's "
                                 f"{job.n_rows} would pass the limit of {s.max_queue_rows})")
            load.admitted_rows += need - held
            held = need

            def left() -> float:
                t = t_arrival + s.request_timeout_s - time.perf_counter()
                if t <= 0:
                    raise DeadlineExceeded(s.request_timeout_s, False)
                return t

            left()
            job.encoded = await in_thread(encode, job)
            stats = await batcher.submit(job.encoded, timeout=left())
            return Response(await in_thread(lambda: to_json(render(job, stats))), media_type="application/json")
        except DeadlineExceeded as e:
            load.expired += 1
            raise overloaded(f"not answered within --request-timeout-s {s.request_timeout_s:g} s ("
                             f"{'computed too late' if e.started else 'never computed'})") from None
        except ShuttingDown as e:
            raise HTTPError(503, f"{e}; retry later", {"Retry-After": "1"}) from None
        finally:
            load.admitted_rows -= held

    async def handle(request: Request, parse: Callable[[Any], Job], encode: Callable[[Job], list[Encoded]],
                     render: Callable[[Job, list[TokenStats]], dict]):
        check_auth(request)
        body = await read_body(request)
        work = asyncio.ensure_future(pipeline(body, parse, encode, render))
        gone = asyncio.ensure_future(until_disconnected(request))
        try:
            done, _ = await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            # uvicorn cancels the requests still running when --graceful-timeout-s runs out at shutdown;
            # uncaught, Starlette would answer them 500 with a traceback. Answer 503 instead.
            work.cancel()
            raise HTTPError(503, "the server is shutting down (graceful timeout exceeded); retry later",
                            {"Retry-After": "1"}) from None
        finally:
            gone.cancel()
        if work not in done:  # the client left: its rows leave the queue (the batcher drops them)
            work.cancel()
            try:
                await work
            except BaseException:  # noqa: BLE001 - whatever it was, nobody is there to be told
                pass
            load.client_gone += 1
            return Response(status_code=CLIENT_GONE)
        try:
            return work.result()
        except HTTPError:
            raise
        except asyncio.CancelledError:  # a cancellation from below (the batcher's task at shutdown)
            raise HTTPError(503, "the server is shutting down; retry later", {"Retry-After": "1"}) from None
        except RowError as e:  # the model failed on a row (non-finite output): endorm's own message, no internals
            log.error("scoring failed: %s", e)
            raise HTTPError(500, f"scoring failed: {e}") from None
        except Exception as e:  # noqa: BLE001 - a bug or a model failure: logged, answered without internals
            raise HTTPError(500, internal_error(e, request)) from None

    @app.get("/health")
    async def health() -> dict[str, Any]:
        st = batcher.stats
        return {"status": "ok", "model": model_name, "queued": batcher.queued, "queued_rows": load.admitted_rows,
                "computing_rows": batcher.computing,
                "max_queue_rows": s.max_queue_rows, "batches": st.batches, "requests": st.requests,
                "rows": st.items, "max_requests_in_batch": st.max_requests_in_batch,
                "refused_queue_full": load.refused_queue_full, "expired": load.expired,
                "client_gone": load.client_gone, "dropped_rows": st.dropped_items,
                "internal_errors": load.internal_errors, "auth": bool(s.api_key)}

    if not open_docs:
        @app.get("/openapi.json", include_in_schema=False)
        async def openapi(request: Request):
            check_auth(request)
            return JSONResponse(app.openapi())

        @app.get("/docs", include_in_schema=False)
        async def docs(request: Request):
            check_auth(request)
            return get_swagger_ui_html(openapi_url="/openapi.json", title=f"{app.title} - docs")

        @app.get("/redoc", include_in_schema=False)
        async def redoc(request: Request):
            check_auth(request)
            return get_redoc_html(openapi_url="/openapi.json", title=f"{app.title} - ReDoc")

    # ---- /score ----

    def parse_score(body: Any) -> Job:
        rows = list_field(body, "rows")
        tokens = body.get("tokens", False)
        if not isinstance(tokens, bool):
            raise HTTPError(422, f"field 'tokens' must be true or false, got {tokens!r}")
        for i, row in enumerate(rows):
            if not isinstance(row, dict):
                raise HTTPError(422, f"row {i}: must be a JSON object, got {type(row).__name__}")
        return Job(len(rows), (rows, tokens))

    def encode_score(job: Job) -> list[Encoded]:
        encoded = []
        for i, row in enumerate(job.payload[0]):
            try:
                encoded += rm.encode_with_contrast(row_to_example(row, where=i))
            except (RowError, ValueError, TypeError) as e:
                raise HTTPError(422, str(e)) from None
        return encoded

    def render_score(job: Job, all_stats: list[TokenStats]) -> dict:
        stats, base = rm.split_contrast(all_stats, job.n_rows)
        if not job.payload[1]:
            return {"rewards": rm.totals(stats, base)}
        pairs = [_token_rewards(rm, st, None if base is None else base[k]) for k, st in enumerate(stats)]
        return {"rewards": [p[0] for p in pairs], "token_rewards": [p[1] for p in pairs]}

    @app.post("/score")
    async def score(request: Request):
        return await handle(request, parse_score, encode_score, render_score)

    # ---- /get_reward (OpenRLHF) ----

    def parse_get_reward(body: Any) -> Job:
        queries = list_field(body, "query")
        prompts = list_field(body, "prompts", required=False)
        labels = list_field(body, "labels", required=False)
        for name, v in (("prompts", prompts), ("labels", labels)):
            if v is not None and len(v) != len(queries):
                raise HTTPError(422, f"{len(queries)} queries but {len(v)} {name}")
        return Job(len(queries), (queries, prompts))

    def encode_get_reward(job: Job) -> list[Encoded]:
        queries, prompts = job.payload
        with splitter_lock:
            if not splitter:
                try:
                    splitter.append(QuerySplitter(rm.tokenizer))
                except ValueError as e:
                    raise HTTPError(422, str(e)) from None
        encoded = []
        for i, q in enumerate(queries):
            try:
                example = splitter[0].split(q, prompts[i] if prompts is not None else None, row=i)
                encoded += rm.encode_with_contrast(example)
            except (RowError, ValueError, TypeError) as e:
                raise HTTPError(422, str(e)) from None
        return encoded

    def render_get_reward(job: Job, all_stats: list[TokenStats]) -> dict:
        stats, base = rm.split_contrast(all_stats, job.n_rows)
        rewards = rm.totals(stats, base)
        return {"rewards": rewards, "scores": rewards,
                "extra_logs": {"endorm_reward": rewards, "response_tokens": [len(st.token_ids) for st in stats]}}

    @app.post("/get_reward")
    async def get_reward(request: Request):
        return await handle(request, parse_get_reward, encode_get_reward, render_get_reward)

    return app
