"""Contract of the TRL reward function (endorm.integrations.trl) and of the RL baselines' rewards."""

from __future__ import annotations

import pytest

from endorm import EndogenousRewardModel
from endorm.integrations.trl import EndogenousRewardFunction, endogenous_reward
from endorm.rl.rewards import (
    CorrectnessReward,
    MajorityVoteReward,
    make_reward_func,
    masked_token_entropy,
)
from endorm.testing import tiny_model_and_tokenizer

PROMPTS = ["What is the capital of France?", "What is the capital of France?", "Write a short poem about the sea."]
COMPLETIONS = ["The capital of France is Paris.", "Berlin.", "The wind and the rain."]


@pytest.fixture(scope="module")
def rm():
    model, tok = tiny_model_and_tokenizer(seed=0)
    return EndogenousRewardModel.from_model(model, tok)


def test_standard_format_equals_score(rm):
    fn = EndogenousRewardFunction(rm)
    out = fn(prompts=PROMPTS, completions=COMPLETIONS, completion_ids=[[1]] * 3, trainer_state=None)
    assert isinstance(out, list) and all(isinstance(x, float) for x in out)
    assert out == pytest.approx(rm.score(PROMPTS, COMPLETIONS), abs=1e-5)
    assert len(set(round(x, 4) for x in out)) == 3  # different texts, different rewards


def test_conversational_format_equals_score(rm):
    fn = EndogenousRewardFunction(rm)
    prompts = [[{"role": "user", "content": p}] for p in PROMPTS]
    comps = [[{"role": "assistant", "content": c}] for c in COMPLETIONS]
    out = fn(prompts, comps, answer=["x", "y", "z"], log_metric=lambda *a: None, log_extra=lambda *a: None)
    assert out == pytest.approx(rm.score(PROMPTS, COMPLETIONS), abs=1e-5)


def test_system_column_and_scale(rm):
    fn = EndogenousRewardFunction(rm, scale=2.0)
    systems = ["Be concise.", None, "You are a poet."]
    out = fn(PROMPTS, COMPLETIONS, system=systems)
    assert out == pytest.approx([2 * s for s in rm.score(PROMPTS, COMPLETIONS, systems=systems)], abs=1e-5)
    assert out != pytest.approx([2 * s for s in rm.score(PROMPTS, COMPLETIONS)], abs=1e-5)


def test_bad_input_is_named(rm):
    fn = EndogenousRewardFunction(rm)
    with pytest.raises(ValueError, match="2 prompts but 1"):
        fn(PROMPTS[:2], COMPLETIONS[:1])
    with pytest.raises(ValueError, match="row 0"):
        fn([[{"role": "user", "content": "hi"}]], [[{"role": "user", "content": "not assistant"}]])
    assert fn([], []) == []


def test_module_instance_is_lazy_and_named():
    # importable as `trl grpo --reward_funcs endorm.integrations.trl.endogenous_reward`; nothing loaded yet
    assert endogenous_reward._rm is None
    assert endogenous_reward.__name__ == "endogenous_reward"
    from trl.trainer.utils import get_callable_name

    assert get_callable_name(endogenous_reward) == "endogenous_reward"
    # resolved the way `trl grpo --reward_funcs a.b.c` does it (trl/scripts/grpo.py)
    import importlib

    module_path, name = "endorm.integrations.trl.endogenous_reward".rsplit(".", 1)
    assert getattr(importlib.import_module(module_path), name) is endogenous_reward


def test_baseline_rewards(rm):
    fn = EndogenousRewardFunction(rm)
    ml = make_reward_func("mean_logprob", fn)(PROMPTS, COMPLETIONS)
    toks = [rm.token_rewards(p, c) for p, c in zip(PROMPTS, COMPLETIONS, strict=True)]
    assert ml == pytest.approx([sum(t.logprobs) / len(t.logprobs) for t in toks], abs=1e-4)
    ne = make_reward_func("neg_entropy", fn)(PROMPTS, COMPLETIONS)
    assert all(x < 0 for x in ne) and len(ne) == 3
    assert make_reward_func("endogenous", fn) is fn
    with pytest.raises(ValueError, match="unknown reward"):
        make_reward_func("bogus", fn)


def test_masked_token_entropy_uniform_and_peaked():
    import math

    import torch

    logits = torch.zeros(2, 3, 4)
    logits[1, :, 0] = 100.0  # all mass on one token: entropy 0
    mask = torch.tensor([[True, True, False], [True, True, True]])
    ent = masked_token_entropy(logits, mask)
    assert ent[0].item() == pytest.approx(math.log(4), abs=1e-5)
    assert ent[1].item() == pytest.approx(0.0, abs=1e-5)


def test_majority_and_correctness():
    prompts = ["q1"] * 4 + ["q2"] * 2
    comps = ["so 5", "answer \\boxed{5}", "it is 7", "no idea", "#### 3", "#### 4"]
    maj = MajorityVoteReward()(prompts, comps)
    assert maj[:4] == [1.0, 1.0, 0.0, 0.0]
    assert sum(maj[4:]) == 1.0  # a tie: one of the two answers is the mode
    conv = [[{"role": "assistant", "content": c}] for c in comps]
    corr = CorrectnessReward()(prompts, conv, answer=["5", "5", "5", "5", "4", "4"])
    assert corr == [1.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    with pytest.raises(ValueError, match="answer"):
        CorrectnessReward()(prompts, comps)
