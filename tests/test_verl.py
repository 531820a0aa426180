"""The verl adapter against verl's documented interface, with verl itself faked minimally: a DataProto-like
object holding ``batch`` (prompts left padded, responses right padded, attention_mask) and
``non_tensor_batch``. Rewards are checked against direct scoring with the tiny model, in process and
through the reward server (FastAPI TestClient)."""

from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from endorm.integrations.verl import (
    EndormRewardManager,
    EndormScorer,
    align_token_rewards,
    compute_score,
    compute_score_batch,
)
from endorm.serve.app import create_app

PAIRS = [
    ("What is the capital of France?", "The capital of France is Paris."),
    ("Write a poem about the sea.", "The sea, the wind and the rain."),
    ("What is 6 times 7?", "The answer is 42."),
]


@dataclass
class FakeDataProto:
    """Only what a reward manager touches: batch tensors, non-tensor arrays and len()."""

    batch: dict
    non_tensor_batch: dict = field(default_factory=dict)

    def __len__(self):
        return self.batch["responses"].shape[0]


def make_batch(tok, pairs, resp_len=24, raw=False, empty_last=False):
    pad = tok.pad_token_id
    p_ids = [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
             for p, _ in pairs]
    p_ids = [tok(t, add_special_tokens=False)["input_ids"] for t in p_ids]
    r_ids = [tok(r, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for _, r in pairs]
    if empty_last:
        r_ids[-1] = [tok.eos_token_id]
    P = max(map(len, p_ids))
    prompts = torch.tensor([[pad] * (P - len(x)) + x for x in p_ids])
    responses = torch.tensor([x + [pad] * (resp_len - len(x)) for x in r_ids])
    mask = torch.tensor([[0] * (P - len(p)) + [1] * len(p) + [1] * len(r) + [0] * (resp_len - len(r))
                         for p, r in zip(p_ids, r_ids, strict=True)])
    nt = {"data_source": np.array(["toy"] * len(pairs), dtype=object)}
    if raw:
        nt["raw_prompt"] = np.array([[{"role": "user", "content": p}] for p, _ in pairs] + [None], dtype=object)[:-1]
    return FakeDataProto({"prompts": prompts, "responses": responses, "attention_mask": mask}, nt), r_ids


@pytest.mark.parametrize("raw", [False, True])
def test_reward_manager_token_level(tiny_rm, raw):
    # per-token r_t need the paper's undiscounted sum (docs/SERVING.md); the default form is tested below
    tiny_rm = tiny_rm.with_config(aggregation="sum", gamma=1.0)
    tok = tiny_rm.tokenizer
    data, r_ids = make_batch(tok, PAIRS, raw=raw)
    mgr = EndormRewardManager(tok, num_examine=0, rm=tiny_rm)
    out = mgr(data, return_dict=True)
    reward = out["reward_tensor"]
    assert reward.shape == data.batch["responses"].shape and reward.dtype == torch.float32
    for i, (p, r) in enumerate(PAIRS):
        ref = tiny_rm.token_rewards(p, r)
        n = len(r_ids[i])
        assert ref.token_ids == r_ids[i]  # same tokenizer: endorm's tokens are the policy's tokens
        assert reward[i, :n].tolist() == pytest.approx(ref.rewards, abs=1e-4)
        assert torch.all(reward[i, n:] == 0)
        assert out["reward_extra_info"]["endorm_reward"][i] == pytest.approx(ref.total, abs=1e-4)


@pytest.mark.parametrize("server", [False, True])
def test_reward_manager_default_form_spreads_discounted_terms(tiny_rm, server):
    assert tiny_rm.config.aggregation == "discounted"  # the default form, gamma^(t-1) r_t per token
    g = tiny_rm.config.gamma
    tok = tiny_rm.tokenizer
    data, r_ids = make_batch(tok, PAIRS)
    if server:
        with TestClient(create_app(tiny_rm)) as client:
            reward = EndormRewardManager(tok, client=client)(data)
    else:
        reward = EndormRewardManager(tok, num_examine=0, rm=tiny_rm)(data)
    for i, (p, r) in enumerate(PAIRS):
        n = len(r_ids[i])
        ref = tiny_rm.token_rewards(p, r)
        assert reward[i, :n].tolist() == pytest.approx([g**t * x for t, x in enumerate(ref.rewards)], abs=1e-4)
        assert reward[i, :n].sum().item() == pytest.approx(tiny_rm.score([p], [r])[0], abs=1e-3)
        assert torch.all(reward[i, n:] == 0)


def test_reward_manager_contrast_puts_the_outcome_last(tiny_rm):
    rm = tiny_rm.with_config(contrast="prompt")
    tok = tiny_rm.tokenizer
    data, r_ids = make_batch(tok, PAIRS)
    reward = EndormRewardManager(tok, num_examine=0, rm=rm)(data)
    for i, (p, r) in enumerate(PAIRS):
        n = len(r_ids[i])
        assert reward[i, n - 1].item() == pytest.approx(rm.score([p], [r])[0], abs=1e-4)
        assert torch.all(reward[i, : n - 1] == 0) and torch.all(reward[i, n:] == 0)


def test_reward_manager_outcome_only_and_via_server(tiny_rm):
    tok = tiny_rm.tokenizer
    data, r_ids = make_batch(tok, PAIRS, empty_last=True)
    with TestClient(create_app(tiny_rm)) as client:
        mgr = EndormRewardManager(tok, rm=None, client=client, token_level=False, empty_reward=-7.0)
        reward = mgr(data)
        served_tokens = EndormRewardManager(tok, client=client)(data)
    ref = tiny_rm.score([p for p, _ in PAIRS[:2]], [r for _, r in PAIRS[:2]])
    for i in range(2):
        n = len(r_ids[i])
        assert reward[i, n - 1].item() == pytest.approx(ref[i], abs=1e-4)
        assert torch.count_nonzero(reward[i]).item() == 1
        assert served_tokens[i].sum().item() == pytest.approx(ref[i], abs=1e-3)
    assert reward[2, 0].item() == -7.0  # the EOS-only response is not scored


def test_rm_scores_pass_through(tiny_rm):
    data, _ = make_batch(tiny_rm.tokenizer, PAIRS)
    data.batch["rm_scores"] = torch.ones(3, 24)
    assert EndormRewardManager(tiny_rm.tokenizer, rm=tiny_rm)(data) is data.batch["rm_scores"]


def test_align_token_rewards_preserves_sum_and_position():
    # reward-model tokens "Pa|ris|.|<e>" onto policy tokens "P|aris|.<e>"
    got = align_token_rewards(["Pa", "ris", ".", "<e>"], [1.0, 2.0, 4.0, 8.0], ["P", "aris", ".<e>"])
    assert got == [0.0, 3.0, 12.0]
    # characters past the policy text land on its last token
    assert align_token_rewards(["ab", "cd", "<eot>"], [1.0, 1.0, 5.0], ["a", "bcd"]) == [0.0, 7.0]
    with pytest.raises(ValueError):
        align_token_rewards(["a"], [1.0], [])


def test_compute_score_functions(tiny_rm, monkeypatch):
    import endorm.integrations.verl as V

    monkeypatch.setattr(V, "_scorer", lambda *a: EndormScorer(rm=tiny_rm))
    ref = tiny_rm.score([p for p, _ in PAIRS], [r for _, r in PAIRS])
    got = compute_score("toy", PAIRS[0][1], "unused", {"question": PAIRS[0][0]}, prompt_key="question")
    assert got == pytest.approx(ref[0], abs=1e-4)
    chat = [{"role": "user", "content": PAIRS[1][0]}]
    assert compute_score("toy", PAIRS[1][1], None, {"prompt": chat}) == pytest.approx(ref[1], abs=1e-4)
    batch = compute_score_batch(["toy"] * 3, [r for _, r in PAIRS], [None] * 3, [{"prompt": p} for p, _ in PAIRS])
    assert batch == pytest.approx(ref, abs=1e-4)
    with pytest.raises(ValueError, match="extra_info has no 'prompt'"):
        compute_score("toy", "x", None, {"question": "q"})
