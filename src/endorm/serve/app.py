"""The endorm reward server (FastAPI): OpenRLHF's remote reward-model contract and endorm's own rows.

Endpoints
- ``POST /get_reward``: OpenRLHF's ``--remote_rm_url`` contract. ``{"query": [...], "prompts": [...],
  "labels": [...]}`` -> ``{"rewards": [...], "scores": [...], "extra_logs": {...}}``; ``query`` is the
  prompt + response rendered with the chat template (see ``endorm.serve.openrlhf``); labels are accepted
  and unused (the endogenous reward needs no reference).
- ``POST /score``: ``{"rows": [<row as in endorm score>], "tokens": false}`` -> ``{"rewards": [...]}``
  (+ ``"token_rewards"``: one ``TokenRewards`` dict per row when ``tokens`` is true).
- ``GET /health``: liveness plus batching counters (no auth, so a load balancer can probe it).

Every row is validated and tokenised in the request handler, so bad input is answered with 422 naming
the row and field before any model work; only valid rows reach the shared ``DynamicBatcher``. Request
bodies are read with a byte cap (413), the number of rows is capped (413), and with an API key set every
scoring endpoint needs ``Authorization: Bearer <key>`` (401). A request still waiting for the model when
the server shuts down is answered 503 (``ShuttingDown``), never left hanging.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.requests import ClientDisconnect

from endorm.chat import Encoded, RowError
from endorm.io import row_to_example
from endorm.reward_model import EndogenousRewardModel
from endorm.scoring import TokenStats
from endorm.serve.batcher import DynamicBatcher, ShuttingDown
from endorm.serve.openrlhf import QuerySplitter

log = logging.getLogger(__name__)


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


def _token_rewards(rm: EndogenousRewardModel, stats: TokenStats,
                   base: TokenStats | None = None) -> tuple[float, dict[str, Any]]:
    tr = rm.token_view(stats, base)
    return tr.total, tr.to_dict()


class HTTPError(Exception):
    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.status, self.detail, self.headers = status, detail, headers


def create_app(
    rm: EndogenousRewardModel, settings: ServeSettings | None = None, model_name: str | None = None
) -> FastAPI:
    """A FastAPI app serving ``rm``. One app owns one model and one batcher."""
    s = settings or ServeSettings()
    max_body = int(s.max_body_mb * 1024 * 1024)

    def process(encoded: list[Encoded]) -> list[TokenStats]:
        return rm.stats_encoded(encoded)

    batcher = DynamicBatcher(process, max_batch_items=s.max_batch_rows, max_wait_ms=s.max_wait_ms)
    splitter: list[QuerySplitter] = []  # built on first use: needs a chat template, /score does not

    @asynccontextmanager
    async def lifespan(app: Any):
        yield
        await batcher.close()

    app = FastAPI(title="endorm reward server", lifespan=lifespan)
    app.state.batcher = batcher
    app.state.rm = rm

    @app.exception_handler(HTTPError)
    async def _http_error(request: Request, e: HTTPError):
        return JSONResponse({"detail": e.detail}, status_code=e.status, headers=e.headers)

    def check_auth(request: Request) -> None:
        if not s.api_key:
            return
        got = request.headers.get("authorization", "")
        scheme, _, token = got.partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip().encode(), s.api_key.encode()):
            raise HTTPError(401, "missing or wrong API key (send 'Authorization: Bearer <key>')",
                            {"WWW-Authenticate": "Bearer"})

    async def read_json(request: Request) -> Any:
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
        try:
            return json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            msg = f"{e.msg} at line {e.lineno} column {e.colno}" if isinstance(e, json.JSONDecodeError) else str(e)
            raise HTTPError(422, f"malformed JSON body: {msg}") from None

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

    async def score_encoded(encoded: list[Encoded]) -> list[TokenStats]:
        try:
            return await batcher.submit(encoded)
        except ShuttingDown as e:
            raise HTTPError(503, f"{e}; retry later", {"Retry-After": "1"}) from None
        except asyncio.CancelledError:
            # uvicorn cancels the requests still running when --graceful-timeout-s runs out at shutdown;
            # uncaught, Starlette would answer them 500 with a traceback. Answer 503 instead.
            raise HTTPError(503, "the server is shutting down (graceful timeout exceeded); retry later",
                            {"Retry-After": "1"}) from None
        except Exception as e:  # noqa: BLE001 - a model failure is the server's fault: 500 with the reason
            log.exception("scoring failed")
            raise HTTPError(500, f"scoring failed: {type(e).__name__}: {e}") from None

    @app.get("/health")
    async def health() -> dict[str, Any]:
        st = batcher.stats
        return {"status": "ok", "model": model_name, "queued": batcher.queued, "batches": st.batches,
                "requests": st.requests, "rows": st.items, "max_requests_in_batch": st.max_requests_in_batch,
                "auth": bool(s.api_key)}

    @app.post("/score")
    async def score(request: Request) -> dict[str, Any]:
        check_auth(request)
        body = await read_json(request)
        rows = list_field(body, "rows")
        tokens = body.get("tokens", False)
        if not isinstance(tokens, bool):
            raise HTTPError(422, f"field 'tokens' must be true or false, got {tokens!r}")
        encoded = []
        for i, row in enumerate(rows):
            if not isinstance(row, dict):
                raise HTTPError(422, f"row {i}: must be a JSON object, got {type(row).__name__}")
            try:
                encoded += rm.encode_with_contrast(row_to_example(row, where=i))
            except (RowError, ValueError, TypeError) as e:
                raise HTTPError(422, str(e)) from None
        stats, base = rm.split_contrast(await score_encoded(encoded), len(rows))
        if not tokens:
            return {"rewards": rm.totals(stats, base)}
        pairs = [_token_rewards(rm, st, None if base is None else base[k]) for k, st in enumerate(stats)]
        return {"rewards": [p[0] for p in pairs], "token_rewards": [p[1] for p in pairs]}

    @app.post("/get_reward")
    async def get_reward(request: Request) -> dict[str, Any]:
        check_auth(request)
        body = await read_json(request)
        queries = list_field(body, "query")
        prompts = list_field(body, "prompts", required=False)
        labels = list_field(body, "labels", required=False)
        for name, v in (("prompts", prompts), ("labels", labels)):
            if v is not None and len(v) != len(queries):
                raise HTTPError(422, f"{len(queries)} queries but {len(v)} {name}")
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
        stats, base = rm.split_contrast(await score_encoded(encoded), len(queries))
        rewards = rm.totals(stats, base)
        return {
            "rewards": rewards,
            "scores": rewards,
            "extra_logs": {"endorm_reward": rewards, "response_tokens": [len(st.token_ids) for st in stats]},
        }

    return app
