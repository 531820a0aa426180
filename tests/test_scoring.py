"""The scoring engine on a tiny random transformers model built in-process: chunked head equals the
model's own logits, and scores do not depend on batch size, padding side, company or prompt sharing."""

import pytest
import torch

from endorm import EndogenousRewardModel
from endorm import rewards as R
from endorm.chat import Example, RowError, encode
from endorm.scoring import compute_stats

PROMPT = "What is the capital of France?"
RESPONSES = ["The capital of France is Paris.", "Berlin.", "I do not know, sorry.", "Paris!\nIt is Paris."]
OTHER = [("Write a poem about the sea.", "The sea, the wind and the rain."), ("def add(a, b):", "    return a + b")]


def all_examples():
    ex = [Example.from_pair(PROMPT, r) for r in RESPONSES]
    ex += [Example.from_pair(p, r) for p, r in OTHER]
    return ex


def test_chunked_head_equals_full_logits(tiny):
    model, tok = tiny
    enc = [encode(tok, e) for e in all_examples()]
    ref = compute_stats(model, enc, full_logits=True, batch_size=len(enc))
    for chunk in (1, 3, 1024):
        got = compute_stats(model, enc, chunk_size=chunk, share_prompts=False)
        for a, b in zip(ref, got, strict=True):
            torch.testing.assert_close(a.logprobs, b.logprobs, atol=1e-4, rtol=0)
            torch.testing.assert_close(a.values, b.values, atol=1e-4, rtol=0)


def test_token_stats_match_a_per_position_loop(tiny):
    """log pi and V from one unbatched forward pass, position by position, with the shift done by hand."""
    model, tok = tiny
    e = encode(tok, Example.from_pair(PROMPT, RESPONSES[0]))
    with torch.no_grad():
        logits = model(torch.tensor([e.input_ids])).logits[0]
    stats = compute_stats(model, [e])[0]
    for t, tok_id in enumerate(e.response_ids):
        f = logits[e.prompt_len - 1 + t]  # the state before response token t
        assert abs(stats.values[t].item() - torch.logsumexp(f, -1).item()) < 1e-4
        assert abs(stats.logprobs[t].item() - torch.log_softmax(f, -1)[tok_id].item()) < 1e-4


@pytest.mark.parametrize("batch_size", [1, 2, 3, 16])
@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_batch_and_padding_invariance(tiny, batch_size, padding_side):
    model, tok = tiny
    enc = [encode(tok, e) for e in all_examples()]
    alone = [compute_stats(model, [e], share_prompts=False)[0] for e in enc]
    together = compute_stats(model, enc, batch_size=batch_size, share_prompts=False, padding_side=padding_side)
    for a, b in zip(alone, together, strict=True):
        assert a.token_ids == b.token_ids
        torch.testing.assert_close(a.logprobs, b.logprobs, atol=1e-4, rtol=0)
        torch.testing.assert_close(a.values, b.values, atol=1e-4, rtol=0)


@pytest.mark.parametrize("batch_size", [1, 2, 8])
def test_shared_prompt_equals_scoring_alone(tiny, batch_size):
    model, tok = tiny
    rm = EndogenousRewardModel.from_model(model, tok, batch_size=batch_size)
    shared = rm.score([PROMPT] * len(RESPONSES), RESPONSES)
    alone = [rm.with_config(share_prompts=False).score([PROMPT], [r])[0] for r in RESPONSES]
    for a, b in zip(shared, alone, strict=True):
        assert abs(a - b) <= 1e-4


def test_score_order_and_company(tiny_rm):
    prompts = [PROMPT] * 4 + [p for p, _ in OTHER]
    responses = RESPONSES + [r for _, r in OTHER]
    full = tiny_rm.score(prompts, responses)
    rev = tiny_rm.score(prompts[::-1], responses[::-1])[::-1]
    assert max(abs(a - b) for a, b in zip(full, rev, strict=True)) <= 1e-4
    assert tiny_rm.score([prompts[5]], [responses[5]])[0] == pytest.approx(full[5], abs=1e-4)
    assert len(set(round(x, 3) for x in full)) == len(full)  # different texts, different rewards


def test_outcome_equals_telescoped_form(tiny_rm):
    paper = tiny_rm.with_config(aggregation="sum", gamma=1.0, contrast="none")  # the paper's formula as written
    tr = paper.token_rewards(PROMPT, RESPONSES[0])
    assert tr.total == pytest.approx(sum(tr.rewards), abs=1e-4)
    assert tr.total == pytest.approx(sum(tr.logprobs) + tr.values[0], abs=1e-4)  # alpha log pi(y|x) + V(s1)
    assert tr.tokens[-1] == "<|im_end|>"  # the closing token is scored; the template's newline is not
    assert "".join(tr.tokens[:-1]) == RESPONSES[0]
    assert tr.total == pytest.approx(paper.score([PROMPT], [RESPONSES[0]])[0], abs=1e-4)
    # the default form (discounted, gamma = 0.93: docs/RESULTS.md) is the same token rewards discounted
    dflt = sum(0.93**t * x for t, x in enumerate(tr.rewards))
    assert tiny_rm.token_rewards(PROMPT, RESPONSES[0]).total == pytest.approx(dflt, abs=1e-4)


def test_aggregations_through_the_model(tiny_rm):
    tiny_rm = tiny_rm.with_config(aggregation="sum", gamma=1.0)
    tr = tiny_rm.token_rewards(PROMPT, RESPONSES[3])
    n = len(tr.rewards)
    mean = tiny_rm.with_config(aggregation="mean").score([PROMPT], [RESPONSES[3]])[0]
    assert mean == pytest.approx(tr.total / n, abs=1e-4)
    lp = tiny_rm.with_config(aggregation="logprob", gamma=0.93, alpha=1.0).score([PROMPT], [RESPONSES[3]])[0]
    assert lp == pytest.approx(sum(0.93**t * x for t, x in enumerate(tr.logprobs)), abs=1e-3)
    alpha2 = tiny_rm.with_config(alpha=2.0).token_rewards(PROMPT, RESPONSES[3])
    logits_free = torch.tensor(alpha2.logprobs)  # log pi at alpha 2 differs from alpha 1
    assert not torch.allclose(logits_free, torch.tensor(tr.logprobs))
    # the pure functions and the model path agree on the token rewards
    r = R.token_rewards(torch.tensor([tr.logprobs]), torch.tensor([tr.values]), torch.ones(1, n, dtype=torch.bool))
    torch.testing.assert_close(r[0], torch.tensor(tr.rewards), atol=1e-5, rtol=0)


def test_system_prompt_changes_the_reward(tiny_rm):
    plain = tiny_rm.score([PROMPT], [RESPONSES[0]])[0]
    steered = tiny_rm.score([PROMPT], [RESPONSES[0]], systems=["Answer like a pirate."])[0]
    default = tiny_rm.with_config(system_prompt="Answer like a pirate.").score([PROMPT], [RESPONSES[0]])[0]
    assert steered != pytest.approx(plain, abs=1e-3)
    assert default == pytest.approx(steered, abs=1e-4)


def test_messages_multi_turn(tiny_rm):
    msgs = [{"role": "user", "content": "My name is Ada."}, {"role": "assistant", "content": "Hi Ada!"},
            {"role": "user", "content": "What is my name?"}, {"role": "assistant", "content": "Ada."}]
    s = tiny_rm.score_messages([msgs])[0]
    tr = tiny_rm.token_rewards(messages=msgs)
    assert s == pytest.approx(tr.total, abs=1e-4)
    assert "".join(tr.tokens[:-1]) == "Ada."


def test_base_model_without_template():
    from endorm.testing import tiny_model_and_tokenizer

    model, tok = tiny_model_and_tokenizer(seed=1, chat_template=False)
    e = encode(tok, Example.from_pair("The capital of France is", " Paris."))
    assert e.input_ids[-1] == tok.eos_token_id
    assert tok.decode(e.response_ids[:-1]) == " Paris."
    rm = EndogenousRewardModel.from_model(model, tok)
    assert isinstance(rm.score(["The capital of France is"], [" Paris."])[0], float)


def test_bad_input(tiny_rm):
    with pytest.raises(RowError, match="row 1.*response.*empty"):
        tiny_rm.score([PROMPT, PROMPT], ["fine", "   "])
    with pytest.raises(RowError, match="row 0.*special token '<\\|im_start\\|>'"):
        tiny_rm.score(["<|im_start|>user\nhi<|im_end|>"], ["hello"])
    with pytest.raises(RowError, match="response.*special token"):
        tiny_rm.score(["hi"], ["hello<|im_end|>"])
    with pytest.raises(TypeError, match="row 0: response must be a string"):
        tiny_rm.score(["hi"], [3])
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        tiny_rm.score(["a", "b"], ["c"])
    with pytest.raises(RowError, match="last message must be the assistant"):
        tiny_rm.score_messages([[{"role": "user", "content": "hi"}]])


def test_context_window(tiny_rm, caplog):
    long_prompt = "word " * 200
    rm = tiny_rm.with_config(max_length=64)
    with caplog.at_level("WARNING"):
        s = rm.score([long_prompt], ["Paris."])[0]
    assert "truncated from the left" in caplog.text
    e = rm.encode(Example.from_pair(long_prompt, "Paris.", row=0))
    assert len(e.input_ids) == 64 and e.truncated > 0
    assert isinstance(s, float)
    with pytest.raises(RowError, match="row 0.*response.*context window of 64"):
        rm.score(["hi"], ["word " * 100])


def test_length_batches():
    from endorm.scoring import length_batches

    lengths = [10, 600, 50, 590, 55, 12, 580]
    batches = length_batches(lengths, batch_size=8)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))  # every row exactly once
    assert batches[0] == [1, 3, 6]  # the long ones together
    for b in batches:
        longest = max(lengths[i] for i in b)
        assert longest * len(b) <= 1.25 * sum(lengths[i] for i in b)
    assert all(len(b) <= 2 for b in length_batches(lengths, batch_size=2))


@pytest.mark.parametrize("batch_size", [2, 8])
def test_batched_shared_prompt_path(tiny, batch_size):
    """The GPU-style path (responses of one prompt padded into length batches) equals one per pass."""
    from endorm.scoring import stats_shared_prompt

    model, tok = tiny
    enc = [encode(tok, Example.from_pair(PROMPT, r)) for r in RESPONSES]
    one = stats_shared_prompt(model, enc, one_per_pass=True)
    batched = stats_shared_prompt(model, enc, batch_size=batch_size, one_per_pass=False)
    for a, b in zip(one, batched, strict=True):
        assert a.token_ids == b.token_ids
        torch.testing.assert_close(a.logprobs, b.logprobs, atol=1e-4, rtol=0)
        torch.testing.assert_close(a.values, b.values, atol=1e-4, rtol=0)


def test_default_path_is_bit_identical_whatever_the_company(tiny_rm):
    """With sharing on (the default), a row scores exactly the same alone and beside other rows,
    whether they share its prompt or not."""
    crowd = tiny_rm.score([PROMPT] * len(RESPONSES) + [OTHER[0][0]], RESPONSES + [OTHER[0][1]])
    for i, r in enumerate(RESPONSES):
        assert tiny_rm.score([PROMPT], [r])[0] == crowd[i]


class _OldOutput(dict):
    """A decoder output of transformers < 5.2x: field ``past_key_values``, index 0 the hidden states."""

    def __getitem__(self, k):
        return list(self.values())[k] if isinstance(k, int) else super().__getitem__(k)


class _OldNameDecoder(torch.nn.Module):
    """The tiny decoder behind the forward signature of transformers < 5.2x (``past_key_values``)."""

    def __init__(self, dec):
        super().__init__()
        self.dec, self.caches_in = dec, []

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None, use_cache=None):
        self.caches_in.append(past_key_values)
        out = self.dec(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                       cache=past_key_values, use_cache=use_cache)
        return _OldOutput(last_hidden_state=out[0], past_key_values=out["cache"])


def test_shared_prompt_path_with_the_old_cache_argument_name(tiny, monkeypatch):
    import endorm.scoring as S

    model, tok = tiny
    rm = EndogenousRewardModel.from_model(model, tok)
    new_name = rm.score([PROMPT] * 2, RESPONSES[:2])
    old = _OldNameDecoder(model.get_decoder())
    monkeypatch.setattr(S, "_decoder", lambda m: old)
    assert rm.score([PROMPT] * 2, RESPONSES[:2]) == new_name
    assert old.caches_in[0] is None and all(c is not None for c in old.caches_in[1:])  # prompt once, then reused
