"""Run (c)'s recipes against collapse: the format gate (RENT) and the hybrid correctness + lambda * endogenous."""

from __future__ import annotations

import json

import pytest

from endorm import EndogenousRewardModel
from endorm.rl.config import TrainConfig
from endorm.rl.rewards import FormatGate, gate_unanswered


def naive_gate(rewards, answered, groups):
    out = list(rewards)
    for idx in groups:
        answered_idx = [i for i in idx if answered[i]]
        if not answered_idx:
            continue
        low = min(rewards[i] for i in idx)
        for i in idx:
            if not answered[i]:
                out[i] = low
    return out


def test_gate_by_hand():
    # group 0: the unanswered completion had the highest reward and drops to the group's lowest (-2)
    # group 1: nobody answered: left alone; group 2: the unanswered one was already lowest: unchanged
    rewards = [3.0, -2.0, 1.0, 5.0, 4.0, 0.5, -7.0]
    answered = [False, True, True, False, False, True, False]
    groups = [[0, 1, 2], [3, 4], [5, 6]]
    assert gate_unanswered(rewards, answered, groups) == [-2.0, -2.0, 1.0, 5.0, 4.0, 0.5, -7.0]


def test_gate_matches_a_naive_loop():
    import random

    rng = random.Random(0)
    for _ in range(200):
        n, g = rng.randint(1, 12), rng.randint(1, 4)
        rewards = [rng.uniform(-10, 10) for _ in range(n)]
        answered = [rng.random() < 0.5 for _ in range(n)]
        ids = list(range(n))
        rng.shuffle(ids)
        groups = [ids[i::g] for i in range(g) if ids[i::g]]
        got = gate_unanswered(rewards, answered, groups)
        assert got == naive_gate(rewards, answered, groups)
        for idx in groups:  # an unanswered completion never beats an answered one of its group
            if any(answered[i] for i in idx):
                top_unanswered = max((got[i] for i in idx if not answered[i]), default=None)
                if top_unanswered is not None:
                    assert top_unanswered <= min(got[i] for i in idx if answered[i])


def test_format_gate_wraps_a_reward_function():
    inner = lambda prompts, completions, **kw: [float(len(c)) for c in completions]  # noqa: E731
    inner.__name__ = "length"
    gate = FormatGate(inner)
    prompts = ["p", "p", "q", "q"]
    completions = ["a long text without any answer at all", "so \\boxed{4}", "x", "The answer is 7."]
    got = gate(prompts, completions)
    assert gate.__name__ == "length"  # TRL logs rewards/<name>/mean
    assert got == [12.0, 12.0, 1.0, 16.0]  # "x" has no answer but was already its group's lowest


def test_config_checks():
    with pytest.raises(ValueError, match="endogenous_weight"):
        TrainConfig(reward="endogenous", endogenous_weight=0.1)
    with pytest.raises(ValueError, match="endogenous_weight"):
        TrainConfig(reward="correctness", endogenous_weight=-1.0)


def test_hybrid_and_gate_reach_the_trainer(tmp_path, tiny, tiny_model_dir):
    """build_trainer: correctness (gated) + lambda * endogenous through TRL's reward_weights, monitors at 0."""
    pytest.importorskip("trl")
    from endorm.rl.trainer import build_trainer

    model, tok = tiny
    data = tmp_path / "gsm.jsonl"
    data.write_text(json.dumps({"question": "What is 6 times 7?", "answer": "6*7=42\n#### 42"}) + "\n")
    cfg = TrainConfig(reward="correctness", endogenous_weight=0.25, format_gate=True, dataset=str(data),
                      output_dir=str(tmp_path / "run"), prompt_template="plain", device="cpu", max_steps=1,
                      num_generations=2, per_device_train_batch_size=2, aggregation="sum", gamma=1.0)
    rm = EndogenousRewardModel.from_model(model, tok, aggregation="sum", gamma=1.0)
    trainer = build_trainer(cfg, model_path=str(tiny_model_dir), reward_model=rm)
    names = [getattr(f, "__name__", "") for f in trainer.reward_funcs]
    assert names[:2] == ["correctness", "endogenous_reward"]
    assert list(trainer.args.reward_weights) == [1.0, 0.25] + [0.0] * (len(names) - 2)
    prompts = [[{"role": "user", "content": "What is 6 times 7?"}]] * 3
    completions = [[{"role": "assistant", "content": t}] for t in ("\\boxed{42}", "\\boxed{41}", "no idea")]
    correct = trainer.reward_funcs[0](prompts, completions, answer=["42"] * 3)
    assert correct == [1.0, 0.0, 0.0]  # the unanswered one is gated to the group's lowest (0)
    endo = trainer.reward_funcs[1](prompts, completions)
    want = rm.score(["What is 6 times 7?"] * 3, ["\\boxed{42}", "\\boxed{41}", "no idea"])
    assert endo == pytest.approx([float(w) for w in want], abs=1e-4)
