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
    main = next(c for c in rows[0] if c.startswith("reward_") and c not in
                ("reward_std", "reward_answered", "reward_distinct_answers"))
    for r in rows:
        assert r["reward"] != "" and float(r["completion_length"]) > 0 and r["entropy"] != ""
        # the weight-0 monitors are logged but do not enter the reward
        assert 0 <= float(r["reward_answered"]) <= 1 and 0 < float(r["reward_distinct_answers"]) <= 1
        assert float(r["reward"]) == pytest.approx(float(r[main]), rel=1e-4, abs=1e-4)
        assert float(r["peak_rss_mb"]) > 10
        if beta > 0:
            assert r["kl"] != ""
    assert (tmp_path / reward / "curves.png").stat().st_size > 1000
    # completions.jsonl holds each step's samples, and their rewards average to the curve's reward
    done = [json.loads(line) for line in open(tmp_path / reward / "completions.jsonl")]
    assert [d["step"] for d in done] == [1] * 4 + [2] * 4
    name = main.removeprefix("reward_")
    for r in rows:
        mine = [d for d in done if d["step"] == int(r["step"])]
        assert all(d["prompt"] and isinstance(d["completion"], str) for d in mine)
        assert sum(d["rewards"][name] for d in mine) / 4 == pytest.approx(float(r["reward"]), rel=1e-4, abs=1e-4)
        assert {"answered", "distinct_answers"} <= mine[0]["rewards"].keys()
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


def test_yaml_base_chain_applies_the_files_own_values_last(tmp_path):
    from endorm.cli import parse_config

    (tmp_path / "common").mkdir()
    (tmp_path / "common" / "b.yaml").write_text("reward: correctness\nbeta: 0.1\nmax_steps: 7\n")
    (tmp_path / "a.yaml").write_text("base: common/b.yaml\nreward: endogenous\naggregation: sum\n")
    (tmp_path / "c.yaml").write_text("base: a.yaml\nformat_gate: true\n")
    cfg = parse_config(TrainConfig, ["--config", str(tmp_path / "c.yaml"), "--max_steps", "9"])
    assert (cfg.reward, cfg.aggregation, cfg.beta, cfg.format_gate, cfg.max_steps) == (
        "endogenous", "sum", 0.1, True, 9)


def test_qwen05_run_configs_differ_only_in_the_reward():
    """Runs a/b/c/c' of the RL issue share every setting but the reward (each starts from b via ``base:``), and
    the hybrid's weight is the rule's lambda recomputed from the committed best-of-N scores."""
    from pathlib import Path

    from endorm.cli import parse_config
    from endorm.mathx.bestofn import hybrid_lambda
    from endorm.mathx.selection import dev_test_split

    root = Path(__file__).resolve().parents[1]
    runs = {r: vars(parse_config(TrainConfig, ["--config", str(root / "configs" / f"qwen05_grpo_{r}.yaml")]))
            for r in ("correctness", "endogenous", "gated", "hybrid")}
    differ = {k for k in runs["correctness"] if len({repr(c[k]) for c in runs.values()}) > 1}
    assert differ == {"reward", "aggregation", "format_gate", "endogenous_weight", "output_dir"}
    assert (runs["gated"]["reward"], runs["gated"]["aggregation"], runs["gated"]["format_gate"]) == (
        "endogenous", "sum", True)
    assert runs["correctness"]["max_completion_length"] == 448 and runs["correctness"]["beta"] == 0.01
    hybrid = runs["hybrid"]
    assert (hybrid["reward"], hybrid["aggregation"], hybrid["format_gate"]) == ("correctness", "sum", False)
    scores = root / "records/bestofn/n8-gsm8k200/qwen2.5-coder-0.5b-instruct/gsm8k.scores.jsonl"
    recs = [json.loads(line) for line in scores.read_text().splitlines() if line.strip()]
    split = dev_test_split([r["id"] for r in recs], seed=0)
    lam = hybrid_lambda(recs, "sum", [i for i, half in split.items() if half == "dev"])
    assert hybrid["endogenous_weight"] == pytest.approx(lam, abs=5e-5)


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


class _Crash(RuntimeError):
    pass


def _probe(snapshot_at: int, crash_at: int | None = None):
    """A callback that records the state a run's steps start from: the global step at the start of training and
    at the first step, and the parameters, optimizer state and learning rate when ``snapshot_at`` steps are done;
    with ``crash_at``, it stops the run (an exception, like a kill) at the start of that step."""
    import torch
    from transformers import TrainerCallback

    class Probe(TrainerCallback):
        begin_step = first_step = snapshot = None

        def on_train_begin(self, args, state, control, **kw):
            self.begin_step = state.global_step

        def on_step_begin(self, args, state, control, model=None, optimizer=None, lr_scheduler=None, **kw):
            if self.first_step is None:
                self.first_step = state.global_step
            if state.global_step == snapshot_at and self.snapshot is None:
                opt = optimizer.state_dict()
                self.snapshot = {
                    "params": {n: p.detach().clone() for n, p in model.named_parameters()},
                    "opt": {k: {n: v.clone() if torch.is_tensor(v) else v for n, v in s.items()}
                            for k, s in opt["state"].items()},
                    "lr": lr_scheduler.get_last_lr(),
                }
            if crash_at is not None and state.global_step == crash_at:
                raise _Crash(f"stopped at the start of step {crash_at + 1}")

    return Probe()


@pytest.mark.parametrize("max_steps,save_steps,crash_at", [(4, 2, 3), (5, 3, 4)])
def test_resume_starts_at_the_checkpoint(tiny_dir, tmp_path, max_steps, save_steps, crash_at):
    """Killed after step ``crash_at`` with a checkpoint every ``save_steps`` (k = the last one before the kill;
    2 steps per epoch here, so k lies on an epoch boundary in one case and inside the second epoch in the
    other): --resume starts at step k, not 0 (global step; weights, optimizer state and learning rate exactly
    the uninterrupted run's after step k), keeps curve rows 1..k, logs the steps after k again, and the whole
    curve then equals the uninterrupted run's: the resumed run is a replay (it was not before the prompt order
    of later epochs was fixed, ``EpochOrder``)."""
    import torch

    from endorm.rl.trainer import last_checkpoint, train

    model_dir, data = tiny_dir
    k = crash_at // save_steps * save_steps
    common = dict(reward="neg_entropy", dataset=str(data), max_steps=max_steps, beta=0.0, num_generations=2,
                  per_device_train_batch_size=4, max_completion_length=8, learning_rate=1e-3, save_steps=save_steps,
                  save_total_limit=3, seed=0, prompt_template="plain")

    def rm():
        m, t = tiny_model_and_tokenizer(seed=0)
        return EndogenousRewardModel.from_model(m, t)

    def curve(d):
        return [{c: v for c, v in r.items() if c not in ("elapsed_s", "peak_rss_mb")} for r in csv.DictReader(open(d / "curves.csv"))]

    ref = _probe(snapshot_at=k)
    train(TrainConfig(output_dir=str(tmp_path / "ref"), **common), model_path=str(model_dir), reward_model=rm(),
          callbacks=[ref])
    want_curve = curve(tmp_path / "ref")
    assert ref.begin_step == 0 and ref.snapshot is not None
    run = tmp_path / "run"
    first = _probe(snapshot_at=-1, crash_at=crash_at)
    with pytest.raises(_Crash):
        train(TrainConfig(output_dir=str(run), **common), model_path=str(model_dir), reward_model=rm(),
              callbacks=[first])
    assert [int(r["step"]) for r in curve(run)] == list(range(1, crash_at + 1))
    assert last_checkpoint(run).name == f"checkpoint-{k}"
    again = _probe(snapshot_at=k)
    train(TrainConfig(output_dir=str(run), resume=True, **common), model_path=str(model_dir), reward_model=rm(),
          callbacks=[again])
    assert (again.begin_step, again.first_step) == (k, k)  # not step 0
    got, want = again.snapshot, ref.snapshot
    assert got["lr"] == want["lr"]
    assert got["params"].keys() == want["params"].keys()
    assert all(torch.equal(got["params"][n], want["params"][n]) for n in want["params"])
    assert got["opt"].keys() == want["opt"].keys() and len(want["opt"]) > 0
    for key, st in want["opt"].items():
        assert st.keys() == got["opt"][key].keys()
        for n, v in st.items():
            assert torch.equal(got["opt"][key][n], v) if torch.is_tensor(v) else got["opt"][key][n] == v, (key, n)
    rows = curve(run)
    assert [int(r["step"]) for r in rows] == list(range(1, max_steps + 1))
    # the sampled completions replay too, each step's once (the interrupted run's steps after k dropped)
    assert (run / "completions.jsonl").read_text() == (tmp_path / "ref" / "completions.jsonl").read_text()
    assert rows[:k] == want_curve[:k]  # the rows before the checkpoint are kept
    assert rows == want_curve  # and the steps after it replay the uninterrupted run's
    state = json.loads((last_checkpoint(run) / "trainer_state.json").read_text())
    assert state["global_step"] == max_steps  # the Trainer also saves at the last step
    assert [h["step"] for h in state["log_history"] if "reward" in h] == list(range(1, state["global_step"] + 1))


def test_completion_log_rows_and_resume(tmp_path):
    from endorm.rl.logging import CompletionLog, completion_rows

    msgs = [[{"role": "user", "content": "Q1"}]] * 2
    comps = [[{"role": "assistant", "content": "A"}], [{"role": "assistant", "content": "B"}]]
    rows = completion_rows(3, msgs, comps, {"correctness": [1.0, float("nan")]}, [0.5, -0.5])
    assert rows[0] == {"step": 3, "prompt": "Q1", "completion": "A", "rewards": {"correctness": 1.0}, "advantage": 0.5}
    assert rows[1]["rewards"]["correctness"] is None and rows[1]["completion"] == "B"
    with pytest.raises(ValueError, match="step 3: 2 completions but {'correctness': 1}"):
        completion_rows(3, msgs, comps, {"correctness": [1.0]}, [0.5, -0.5])
    path = tmp_path / "completions.jsonl"
    log = CompletionLog(path)
    for step in (1, 2, 3):
        log.append(completion_rows(step, msgs, comps, {"r": [0.0, 1.0]}, [0.0, 0.0]))
    again = CompletionLog(path)  # resumed from checkpoint-1: steps 2 and 3 are redone
    again.append(completion_rows(2, msgs, comps, {"r": [7.0, 7.0]}, [0.0, 0.0]))
    got = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(g["step"], g["rewards"]["r"]) for g in got] == [(1, 0.0), (1, 1.0), (2, 7.0), (2, 7.0)]


def test_epoch_order_matches_trl_and_survives_a_restart():
    """Epoch e's order is TRL's (e+1)-th draw, whether the sampler ran through epochs 0..e-1 or was just built."""
    from trl.trainer.utils import RepeatSampler

    from endorm.rl.trainer import EpochOrder

    data = list(range(10))
    plain = RepeatSampler(data, mini_repeat_count=2, batch_size=2, seed=3)
    trl_orders = [list(plain) for _ in range(3)]
    assert trl_orders[0] != trl_orders[1]
    ours = EpochOrder(RepeatSampler(data, mini_repeat_count=2, batch_size=2, seed=3))
    orders = []
    for e in range(3):
        ours.set_epoch(e)
        orders.append(list(ours))
    assert orders == trl_orders
    fresh = EpochOrder(RepeatSampler(data, mini_repeat_count=2, batch_size=2, seed=3))
    fresh.set_epoch(2)  # a resume into the third epoch
    assert list(fresh) == trl_orders[2] and len(fresh) == len(plain)


def test_monitors_on_hand_made_groups():
    from endorm.rl.rewards import AnsweredMonitor, DistinctAnswersMonitor

    prompts = ["p"] * 4 + ["q"] * 4
    comps = ["The answer is 4.", "so \\boxed{4}", "It is 4.0", "no idea",
             "\\boxed{1}", "\\boxed{2}", "\\boxed{3}", "\\boxed{3}"]
    assert AnsweredMonitor()(prompts, comps) == [1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0]
    # group p: answers 4, 4, 4.0 (normalised to 4), none -> 2 distinct of 4; group q: 1, 2, 3 -> 3 of 4
    assert DistinctAnswersMonitor()(prompts, comps) == [0.5] * 4 + [0.75] * 4
