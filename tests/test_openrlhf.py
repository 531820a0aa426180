"""`endorm serve` against OpenRLHF's own remote reward client: openrlhf 0.11.2's ``SingleTurnAgentExecutor``
(``openrlhf.utils.agent``, installed by scripts/install-integrations without its pinned dependencies), which
posts ``{"query", "prompts", "labels"}`` to ``--remote_rm_url`` and reads ``rewards``, then ``scores`` and
``extra_logs``. The server is the real CLI as a subprocess on the tiny model. Generation, which OpenRLHF
does in vLLM (not installable here), is a scripted engine with vLLM's ``generate`` shape; everything from the
decoded query to the reward fields OpenRLHF keeps is OpenRLHF's code. Rewards are checked against direct
scoring with the same model."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from openrlhf.utils.agent import SingleTurnAgentExecutor

from endorm.io import row_to_example

CHATS = [
    ([{"role": "user", "content": "What is the capital of France?"}], "The capital of France is Paris."),
    ([{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Name a prime number."}],
     "Seven."),
    ([{"role": "user", "content": "What is 6 times 7?"}], "The answer is 42."),
]


class ScriptedEngine:
    """vLLM's ``generate(prompt_token_ids, sampling_params, multi_modal_data)`` shape: the response for a
    prompt comes from a script; ``eos=False`` ends it without the end-of-turn token (hit the length limit)."""

    def __init__(self, tok, script: dict[str, str], eos: bool = True):
        self.tok, self.script, self.eos = tok, script, eos

    async def generate(self, prompt_token_ids, sampling_params, multi_modal_data=None):
        text = self.script[self.tok.decode(prompt_token_ids, skip_special_tokens=False)]
        ids = self.tok(text, add_special_tokens=False)["input_ids"] + ([self.tok.eos_token_id] if self.eos else [])
        out = SimpleNamespace(token_ids=ids, text=text, finish_reason="stop" if self.eos else "length", logprobs=None)
        return SimpleNamespace(outputs=[out])


def _render(tok, msgs):
    # what OpenRLHF's --apply_chat_template makes of a dataset row
    return tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)


def _run(executor, tok, chats, eos=True):
    prompts = [_render(tok, m) for m, _ in chats]
    engine = ScriptedEngine(tok, {p: r for p, (_, r) in zip(prompts, chats, strict=True)}, eos=eos)
    params = SimpleNamespace(max_tokens=64, logprobs=None)

    async def go():
        return await asyncio.gather(*(executor.execute(p, f"label-{i}", params, max_length=512, hf_tokenizer=tok,
                                                       llm_engine=engine) for i, p in enumerate(prompts)))

    return asyncio.run(asyncio.wait_for(go(), timeout=120))


def _reference(rm, chats):
    rows = [{"messages": m + [{"role": "assistant", "content": r}]} for m, r in chats]
    return rm.score_examples([row_to_example(r, where=i) for i, r in enumerate(rows)])


@pytest.mark.parametrize("endpoints", [1, 2])
def test_single_turn_executor_reads_endorm_rewards(tiny_rm, served_tiny, endpoints):
    url = f"{served_tiny}/get_reward"
    executor = SingleTurnAgentExecutor(url if endpoints == 1 else [url, url])  # a list: OpenRLHF shards/rotates
    tok = tiny_rm.tokenizer
    outs = _run(executor, tok, CHATS)
    ref = _reference(tiny_rm, CHATS)
    for out, r, (_msgs, resp) in zip(outs, ref, CHATS, strict=True):
        # OpenRLHF keeps the response's fields as the server sent them: lists for its one-query request
        assert out["reward"] == pytest.approx([r], abs=1e-4)
        assert out["scores"] == pytest.approx([r], abs=1e-4)
        assert out["extra_logs"]["endorm_reward"] == pytest.approx([r], abs=1e-4)
        n_resp = len(tok(resp, add_special_tokens=False)["input_ids"])
        assert out["extra_logs"]["response_tokens"] == [n_resp + 1]  # endorm scores the end-of-turn token too
        assert not out["truncated"]


def test_truncated_response_is_scored_as_ended(tiny_rm, served_tiny):
    executor = SingleTurnAgentExecutor(f"{served_tiny}/get_reward")
    outs = _run(executor, tiny_rm.tokenizer, CHATS[:1], eos=False)
    assert outs[0]["truncated"]
    assert outs[0]["reward"] == pytest.approx(_reference(tiny_rm, CHATS[:1]), abs=1e-4)


def test_foreign_query_leaves_the_reward_unset(tiny_rm, served_tiny):
    """A prompt not rendered with the chat template gets 422; OpenRLHF's client retries it (5 times, 1 s
    apart), then logs the failure and leaves reward and scores None: the 422's reason is only in its log."""
    executor = SingleTurnAgentExecutor(f"{served_tiny}/get_reward")
    tok = tiny_rm.tokenizer
    prompt = "### Human: Name a prime number.\n### Assistant:"
    engine = ScriptedEngine(tok, {prompt: " Seven."})

    async def go():
        return await executor.execute(prompt, None, SimpleNamespace(max_tokens=16, logprobs=None), 256, tok, engine)

    out = asyncio.run(asyncio.wait_for(go(), timeout=60))
    assert out["reward"] is None and out["scores"] is None and out["extra_logs"] == {}
