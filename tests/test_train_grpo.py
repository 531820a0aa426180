"""A two-step GRPO run (TRL) on a tiny random model built in-process, for each reward family."""

from __future__ import annotations

import csv
import json

import pytest

pytest.importorskip("trl", reason="endorm[rl] extra (trl, datasets) not installed")

from endorm import EndogenousRewardModel  # noqa: E402
from endorm.rl.config import TrainConfig  # noqa: E402
from endorm.testing import tiny_model_and_tokenizer  # noqa: E402

GSM_ROWS = [
    {"question": "What is 6 times 7?", "answer": "6*7=42\n#### 42"},
    {"question": "What is 2 plus 3?", "answer": "2+3=5\n#### 5"},
    {"question": "Tom has 4 apples and eats 1. How many are left?", "answer": "4-1=3\n#### 3"},
    {"question": "What is 10 minus 7?", "answer": "10-7=3\n#### 3"},
]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    model, tok = tiny_model_and_tokenizer(seed=0)
    d = tmp_path_factory.mktemp("tiny")
    model.save_pretrained(d)
    tok.save_pretrained(d)
    data = d / "gsm8k_tiny.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in GSM_ROWS))
    return d, data


def _cfg(tmp_path, data, reward, beta=0.01):
    return TrainConfig(
        reward=reward, dataset=str(data), output_dir=str(tmp_path / reward), max_steps=2, beta=beta,
        num_generations=2, per_device_train_batch_size=4, max_completion_length=8, learning_rate=1e-4,
        save_steps=1000, seed=0, prompt_template="plain",
    )


@pytest.mark.parametrize("reward,beta", [("endogenous", 0.01), ("neg_entropy", 0.0)])
def test_two_step_grpo_run(tiny_dir, tmp_path, reward, beta):
    import torch
    from transformers import AutoModelForCausalLM

    from endorm.rl.trainer import train

    model_dir, data = tiny_dir
    cfg = _cfg(tmp_path, data, reward, beta)
    rm = None
    if reward in ("endogenous", "neg_entropy"):
        m, t = tiny_model_and_tokenizer(seed=0)
        rm = EndogenousRewardModel.from_model(m, t)
    final = train(cfg, model_path=str(model_dir), reward_model=rm)
    rows = list(csv.DictReader(open(tmp_path / reward / "curves.csv")))
    assert [int(r["step"]) for r in rows] == [1, 2]
    for r in rows:
        assert r["reward"] != "" and float(r["completion_length"]) > 0 and r["entropy"] != ""
        if beta > 0:
            assert r["kl"] != ""
    assert (tmp_path / reward / "curves.png").stat().st_size > 1000
    # the saved policy loads and differs from the start (lr 1e-4 moves a random model measurably)
    before = AutoModelForCausalLM.from_pretrained(model_dir)
    after = AutoModelForCausalLM.from_pretrained(final)
    diffs = [(a - b).abs().max().item() for a, b in zip(after.parameters(), before.parameters(), strict=True)]
    assert max(diffs) > 0 and all(torch.isfinite(torch.tensor(diffs)))


def test_config_validation():
    with pytest.raises(ValueError, match="num_generations"):
        TrainConfig(num_generations=3, per_device_train_batch_size=4)
    with pytest.raises(ValueError, match="reward"):
        TrainConfig(reward="nonsense")
    with pytest.raises(ValueError, match="beta"):
        TrainConfig(beta=-1.0)


def test_yaml_config_parses_through_cli(tmp_path):
    from endorm.cli import parse_config

    y = tmp_path / "t.yaml"
    y.write_text("reward: majority\nbeta: 0.1\nmax_steps: 7\n")
    cfg = parse_config(TrainConfig, ["--config", str(y), "--max_steps", "9"])
    assert (cfg.reward, cfg.beta, cfg.max_steps) == ("majority", 0.1, 9)
    assert TrainConfig().beta == 0.01  # the paper's KL coefficient is the default


def test_curve_logger_resume_drops_relogged_steps(tmp_path):
    from types import SimpleNamespace

    from endorm.rl.logging import CurveLogger, read_curves

    log = CurveLogger(tmp_path, plot_every=0)
    log.on_train_begin(None, SimpleNamespace(global_step=0), None)
    for step in (1, 2, 3):
        log.on_log(None, SimpleNamespace(global_step=step), None, logs={"reward": float(step), "kl": 0.1})
    # resumed from the checkpoint at step 2: step 3 is logged again
    again = CurveLogger(tmp_path, plot_every=0)
    again.on_train_begin(None, SimpleNamespace(global_step=2), None)
    again.on_log(None, SimpleNamespace(global_step=3), None, logs={"reward": 30.0, "kl": 0.2})
    cols = read_curves(tmp_path / "curves.csv")
    assert cols["step"] == [1.0, 2.0, 3.0] and cols["reward"] == [1.0, 2.0, 30.0]


@pytest.mark.parametrize("on", [False, True])
def test_grpo_config_checkpointing_under_the_current_name(tmp_path, on):
    import warnings

    from endorm.rl.trainer import build_grpo_config

    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # a deprecated TrainingArguments name would raise here
        args = build_grpo_config(TrainConfig(output_dir=str(tmp_path), gradient_checkpointing=on, device="cpu"))
    assert args.gradient_checkpointing is on
