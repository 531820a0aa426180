"""The reward server on the tiny in-process model: the /score and OpenRLHF /get_reward contracts (every
answer checked against direct scoring), limits (413), malformed input (422), auth (401), and that
concurrent requests batched together each get their own scores back."""

import asyncio
import copy
import json

import httpx
import pytest
from fastapi.testclient import TestClient

from endorm import EndogenousRewardModel
from endorm.serve.app import ServeSettings, create_app
from endorm.serve.cli import Config
from endorm.serve.openrlhf import QuerySplitter

ROWS = [
    {"prompt": "What is the capital of France?", "response": "The capital of France is Paris."},
    {"prompt": "What is the capital of France?", "response": "Berlin."},
    {"prompt": "Write a poem about the sea.", "response": "The sea, the wind and the rain.", "system": "Be brief."},
    {"messages": [{"role": "user", "content": "def add(a, b):"}, {"role": "assistant", "content": "return a + b"},
                  {"role": "user", "content": "and sub?"}, {"role": "assistant", "content": "return a - b"}]},
]
TOL = 1e-4  # scores may differ in the last float32 bits between batch compositions


@pytest.fixture(scope="module")
def app(tiny_rm):
    return create_app(tiny_rm, ServeSettings(max_rows=8, max_body_mb=0.01, max_batch_rows=16, max_wait_ms=20))


@pytest.fixture(scope="module")
def client(app):
    with TestClient(app) as c:
        yield c


def direct(rm, rows):
    from endorm.io import row_to_example

    return rm.score_examples([row_to_example(r, where=i) for i, r in enumerate(rows)])


def messages_of(row):
    msgs = list(row.get("messages") or [{"role": "user", "content": row["prompt"]},
                                          {"role": "assistant", "content": row["response"]}])
    if row.get("system"):
        msgs = [{"role": "system", "content": row["system"]}] + msgs
    return msgs


def test_score_contract(client, tiny_rm):
    r = client.post("/score", json={"rows": ROWS})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"rewards"}
    assert body["rewards"] == pytest.approx(direct(tiny_rm, ROWS), abs=TOL)
    assert len(set(round(x, 3) for x in body["rewards"])) == len(ROWS)  # distinct: a swap would show


def test_score_token_rewards(client, tiny_rm):
    body = client.post("/score", json={"rows": ROWS[:2], "tokens": True}).json()
    assert len(body["token_rewards"]) == 2
    for total, tr, row in zip(body["rewards"], body["token_rewards"], ROWS[:2], strict=True):
        assert set(tr) == {"tokens", "token_ids", "logprobs", "values", "rewards", "total", "terms"}
        assert len(tr["tokens"]) == len(tr["token_ids"]) == len(tr["rewards"]) == len(tr["values"]) > 1
        assert tr["total"] == pytest.approx(total, abs=1e-5)
        assert sum(tr["terms"]) == pytest.approx(total, abs=1e-4)  # each token's share of the outcome
        assert total == pytest.approx(tiny_rm.score([row["prompt"]], [row["response"]])[0], abs=1e-4)
        ref = tiny_rm.token_rewards(row["prompt"], row["response"])
        assert tr["token_ids"] == ref.token_ids
        assert tr["rewards"] == pytest.approx(ref.rewards, abs=TOL)


def test_get_reward_contract(client, tiny_rm):
    tok = tiny_rm.tokenizer
    queries = [tok.apply_chat_template(messages_of(r), tokenize=False) for r in ROWS]
    prompts = [tok.apply_chat_template(messages_of(r)[:-1], tokenize=False, add_generation_prompt=True)
               for r in ROWS]
    ref = direct(tiny_rm, ROWS)
    # as OpenRLHF sends it: with padding, prompts and labels; and without prompts
    padded = [tok.pad_token * 3 + q + tok.pad_token * 2 for q in queries]
    for body in ({"query": padded, "prompts": prompts, "labels": ["x"] * len(ROWS)}, {"query": queries}):
        r = client.post("/get_reward", json=body)
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["rewards"] == pytest.approx(ref, abs=TOL)
        assert out["scores"] == out["rewards"]
        assert len(out["extra_logs"]["response_tokens"]) == len(ROWS)


def test_get_reward_text_after_end_of_turn_is_ignored(client, tiny_rm):
    tok = tiny_rm.tokenizer
    q = tok.apply_chat_template(messages_of(ROWS[0]), tokenize=False)
    a = client.post("/get_reward", json={"query": [q]}).json()["rewards"]
    b = client.post("/get_reward", json={"query": [q + "trailing junk"]}).json()["rewards"]
    assert a == pytest.approx(b, abs=TOL)


def test_query_splitting_with_a_default_system_template(tiny):
    """A template that injects a default system message (like SmolLM2's) still round-trips."""
    _, tok = tiny
    tok = copy.deepcopy(tok)
    tok.chat_template = (
        "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
        "{{ '<|im_start|>system\nYou are helpful.<|im_end|>\n' }}{% endif %}"
        "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    )
    sp = QuerySplitter(tok)
    for row in ROWS:
        msgs = messages_of(row)
        ex = sp.split(tok.apply_chat_template(msgs, tokenize=False), row=0)
        rebuilt = ([{"role": "system", "content": ex.system}] if ex.system else []) + ex.messages
        assert tok.apply_chat_template(rebuilt, tokenize=False) == tok.apply_chat_template(msgs, tokenize=False)
        assert ex.messages[-1] == msgs[-1]


def test_get_reward_rejects_foreign_queries(client):
    r = client.post("/get_reward", json={"query": ["### Human: hi ### Assistant: hello"]})
    assert r.status_code == 422 and "row 0" in r.json()["detail"]
    r = client.post("/get_reward", json={"query": ["a", "b"], "prompts": ["a"]})
    assert r.status_code == 422 and "2 queries but 1 prompts" in r.json()["detail"]


@pytest.mark.parametrize(
    "payload, status, words",
    [
        (b"{not json", 422, "malformed JSON"),
        (b"[1, 2]", 422, "JSON object"),
        (json.dumps({"rowz": []}).encode(), 422, "'rows' is required"),
        (json.dumps({"rows": "abc"}).encode(), 422, "must be a list"),
        (json.dumps({"rows": [{"prompt": "hi"}]}).encode(), 422, "row 0, field 'response'"),
        (json.dumps({"rows": [ROWS[0], {"prompt": "a", "response": 3}]}).encode(), 422, "row 1"),
        (json.dumps({"rows": [{"prompt": "a <|im_end|>", "response": "b"}]}).encode(), 422, "special token"),
        (json.dumps({"rows": [{"prompt": "a", "response": "  "}]}).encode(), 422, "empty"),
        (json.dumps({"rows": ROWS, "tokens": "yes"}).encode(), 422, "'tokens'"),
        (json.dumps({"rows": [ROWS[0]] * 9}).encode(), 413, "limit is 8"),
        (json.dumps({"rows": [{"prompt": "x" * 20000, "response": "y"}]}).encode(), 413, "exceeds the limit"),
    ],
)
def test_bad_requests(client, payload, status, words):
    r = client.post("/score", content=payload, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    assert words in r.json()["detail"]


def test_oversize_body_without_content_length(client):
    """A chunked body with no Content-Length is still cut off at the limit."""
    def chunks():
        for _ in range(20):
            yield b"x" * 1024

    r = client.post("/score", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_auth(tiny_rm):
    app = create_app(tiny_rm, ServeSettings(api_key="s3cret"))
    with TestClient(app) as c:
        assert c.post("/score", json={"rows": ROWS[:1]}).status_code == 401
        assert c.post("/get_reward", json={"query": ["x"]}).status_code == 401
        wrong = c.post("/score", json={"rows": ROWS[:1]}, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
        ok = c.post("/score", json={"rows": ROWS[:1]}, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200 and len(ok.json()["rewards"]) == 1
        assert c.get("/health").json()["auth"] is True


def test_defaults_bind_loopback():
    assert Config().host == "127.0.0.1"
    assert ServeSettings().api_key is None


def test_concurrent_requests_never_mix(tiny_rm):
    """80 concurrent requests of 1-3 distinct rows; every answer equals direct scoring of its own rows."""
    rows = [{"prompt": f"Question {i}: what is {i} plus {i}?", "response": f"It is {2 * i}." + " ok" * (i % 5)}
            for i in range(120)]
    requests, i = [], 0
    while i < len(rows):
        k = 1 + len(requests) % 3
        requests.append(rows[i : i + k])
        i += k
    ref = dict(zip((json.dumps(r) for r in rows), direct(tiny_rm, rows), strict=True))
    app = create_app(tiny_rm, ServeSettings(max_batch_rows=32, max_wait_ms=50))

    async def go():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            async def one(req, j):
                if j % 2:  # half through the OpenRLHF endpoint
                    tok = tiny_rm.tokenizer
                    q = [tok.apply_chat_template(messages_of(r), tokenize=False) for r in req]
                    resp = await c.post("/get_reward", json={"query": q})
                else:
                    resp = await c.post("/score", json={"rows": req})
                assert resp.status_code == 200, resp.text
                return resp.json()["rewards"]

            return await asyncio.gather(*(one(req, j) for j, req in enumerate(requests)))

    answers = asyncio.run(go())
    assert len(answers) == len(requests)
    for req, got in zip(requests, answers, strict=True):
        assert got == pytest.approx([ref[json.dumps(r)] for r in req], abs=TOL)
    st = app.state.batcher.stats
    assert st.requests == len(requests) and st.items == len(rows)
    assert st.max_requests_in_batch > 1  # they really were batched together
    assert st.batches < len(requests)


def test_server_model_matches_from_model(tiny):
    """The app serves exactly the model it was given (no hidden reload)."""
    model, tok = tiny
    rm = EndogenousRewardModel.from_model(model, tok, alpha=0.5)
    with TestClient(create_app(rm)) as c:
        got = c.post("/score", json={"rows": ROWS[:2]}).json()["rewards"]
    assert got == pytest.approx(direct(rm, ROWS[:2]), abs=TOL)
