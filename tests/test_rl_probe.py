"""benchmarks/rl_gsm8k.py probe: every form read off one pass equals scoring that form directly."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from endorm.mathx.data import load_benchmark
from endorm.mathx.generate import PROMPT_TEMPLATES

ROOT = Path(__file__).resolve().parents[1]


def _load_script():
    spec = importlib.util.spec_from_file_location("rl_gsm8k", ROOT / "benchmarks" / "rl_gsm8k.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_probe_matches_direct_scoring(tmp_path, tiny_rm):
    problems = load_benchmark("gsm8k", limit=3, seed=0)
    before, after = tmp_path / "before.jsonl", tmp_path / "after.jsonl"
    long = "Let us add the numbers step by step and check the total twice. The answer is 7."
    before.write_text("".join(json.dumps({"id": p.id, "completions": [long]}) + "\n" for p in problems))
    after.write_text("".join(json.dumps({"id": p.id, "completions": ["The answer is 7."]}) + "\n" for p in problems))
    forms = ["sum", "discounted@0.93", "mean"]
    res = _load_script().probe(str(before), str(after), forms, rm=tiny_rm)
    assert res["n"] == 3 and res["tokens_before"] > res["tokens_after"]
    prompts = [PROMPT_TEMPLATES["short"].format(question=p.question) for p in problems]
    for form in forms:
        agg, _, g = form.partition("@")
        rm = tiny_rm.with_config(aggregation=agg, gamma=float(g or 1.0))
        b = rm.score(prompts, [long] * 3)
        a = rm.score(prompts, ["The answer is 7."] * 3)
        got = res["forms"][form]
        assert got["mean_before"] == pytest.approx(sum(b) / 3, abs=1e-4)
        assert got["mean_after"] == pytest.approx(sum(a) / 3, abs=1e-4)
        assert got["after_preferred"] == pytest.approx(sum(x > y for x, y in zip(a, b, strict=True)) / 3)


def test_compare_and_curves_json_name_their_command(tmp_path, monkeypatch):
    """--json keeps the numbers of a table with the command that wrote them (records/README.md)."""
    mod = _load_script()
    before, after = tmp_path / "before.jsonl", tmp_path / "after.jsonl"
    before.write_text("".join(json.dumps({"id": f"q{k}", "completions": ["long working"], "correct": [k == 0]}) + "\n"
                              for k in range(4)))
    after.write_text("".join(json.dumps({"id": f"q{k}", "completions": ["The answer is 2."], "correct": [k == 3]})
                             + "\n" for k in range(4)))
    out = tmp_path / "records" / "rl" / "compare.json"
    argv = ["compare", "--before", str(before), "--after", f"trained={after}", "--json", str(out)]
    monkeypatch.setattr("sys.argv", ["benchmarks/rl_gsm8k.py", *argv])
    assert mod.main(argv) == 0
    res = json.loads(out.read_text())
    assert res["command"] == "python benchmarks/rl_gsm8k.py " + " ".join(argv)
    t = res["policies"]["trained"]
    assert (t["correct"], t["gained"], t["lost"], t["distinct_completions"]) == (1, 1, 1, 1)
    assert t["mcnemar_p"] == pytest.approx(1.0) and res["policies"]["before"]["correct"] == 1

    run = tmp_path / "run"
    run.mkdir()
    rows = ["step,elapsed_s,reward,kl"] + [f"{s},{2 * s},{s},{0.1 * s}" for s in range(1, 21)]
    (run / "curves.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "records" / "rl" / "curves.json"
    argv = ["curves", "--runs", f"a={run}", "--json", str(out)]
    monkeypatch.setattr("sys.argv", ["benchmarks/rl_gsm8k.py", *argv])
    assert mod.main(argv) == 0
    res = json.loads(out.read_text())
    assert res["command"].endswith(" ".join(argv))
    assert res["runs"]["a"]["steps"] == 20 and res["runs"]["a"]["reward_first10"] == pytest.approx(5.5)
    assert res["runs"]["a"]["reward_last10"] == pytest.approx(15.5)


def test_curve_bins_against_hand_computed_means(tmp_path):
    """--bins: run a's quarter table; s/step is each bin's share of elapsed_s (continuous over resumes)."""
    mod = _load_script()
    run = tmp_path / "run"
    run.mkdir()
    # 6 steps: reward = step, kl = 0.01 * step, 10 s per step except step 4 (a resume with a model load: 40 s)
    elapsed = [10, 20, 30, 70, 80, 90]
    rows = ["step,elapsed_s,reward,kl,peak_rss_mb"] + [
        f"{s},{e},{s},{0.01 * s},{1000 * s}" for s, e in zip(range(1, 7), elapsed, strict=True)]
    (run / "curves.csv").write_text("\n".join(rows) + "\n")
    got = mod.curve_bins(str(run), 3)
    assert [r["steps"] for r in got] == ["1-2", "3-4", "5-6"]
    assert [r["reward"] for r in got] == pytest.approx([1.5, 3.5, 5.5])
    assert [r["kl"] for r in got] == pytest.approx([0.015, 0.035, 0.055])
    assert [r["s_per_step"] for r in got] == pytest.approx([10, 25, 10])
    assert [r["peak_rss_gb"] for r in got] == pytest.approx([2, 4, 6])
    with pytest.raises(ValueError, match="fewer than --bins 7"):
        mod.curve_bins(str(run), 7)


def test_curve_stretches_split_at_the_resumed_checkpoints(tmp_path):
    """--stretches: a call's steps end where the next call resumed (steps logged after its last checkpoint were
    dropped); a call that took no step is left out."""
    mod = _load_script()
    run = tmp_path / "run"
    run.mkdir()
    rows = ["step,elapsed_s,reward,peak_rss_mb"] + [
        f"{s},{e},{r},{m}" for s, e, r, m in [(1, 10, 0, 900), (2, 20, 1, 1100), (3, 50, 0.5, 800), (4, 60, 1, 700)]]
    (run / "curves.csv").write_text("\n".join(rows) + "\n")
    calls = [{"started": "2026-12-06T01:00:00+00:00", "resumed_from": None, "rollout_sampler_used": "float32"},
             {"started": "2026-12-06T02:00:00+00:00", "resumed_from": "runs/x/checkpoint-2",
              "rollout_sampler_used": "bf16", "cpu_bf16": True},
             {"started": "2026-12-06T03:00:00+00:00", "resumed_from": "runs/x/checkpoint-4",
              "rollout_sampler_used": "bf16"}]
    (run / "invocations.jsonl").write_text("".join(json.dumps(c) + "\n" for c in calls))
    got = mod.curve_stretches(str(run))
    assert [(r["steps"], r["sampler"]) for r in got] == [("1-2", "float32"), ("3-4", "bf16")]
    assert [r["cpu_bf16"] for r in got] == [None, True]  # a machine change is visible per call
    assert [r["s_per_step"] for r in got] == pytest.approx([10, 20])
    assert [r["peak_rss_gb"] for r in got] == pytest.approx([1.1, 0.8])
    assert [r["reward_mean"] for r in got] == pytest.approx([0.5, 0.75])
    (run / "invocations.jsonl").unlink()
    with pytest.raises(FileNotFoundError, match="invocations.jsonl"):
        mod.curve_stretches(str(run))


def _run(tmp_path, name: str, lengths: list[float], answered: list[float]):
    run = tmp_path / name
    run.mkdir()
    rows = ["step,completion_length,reward_answered"] + [
        f"{i + 1},{n},{a}" for i, (n, a) in enumerate(zip(lengths, answered, strict=True))]
    (run / "curves.csv").write_text("\n".join(rows) + "\n")
    return str(run)


def test_recommend_rule_on_hand_made_runs(tmp_path):
    """The recommended-recipe rule: a significant loss or a collapsed last quarter (answered < 0.9, or length under
    half the first quarter's) excludes a run; the largest gained - lost wins; a tie goes to the label-free run."""
    mod = _load_script()
    policies = {"before": {"correct": 50},
                "correctness": {"gained": 10, "lost": 4, "mcnemar_p": 0.18},
                "endogenous": {"gained": 12, "lost": 6, "mcnemar_p": 0.24},   # net +6, ties correctness
                "hybrid": {"gained": 30, "lost": 2, "mcnemar_p": 1e-6},       # best, but collapsed (length)
                "short": {"gained": 40, "lost": 1, "mcnemar_p": 1e-9},        # best, but stopped answering
                "worse": {"gained": 1, "lost": 15, "mcnemar_p": 0.001}}       # a significant loss
    cmp_path = tmp_path / "compare.json"
    cmp_path.write_text(json.dumps({"command": "x", "policies": policies}))
    steady, ok = [300.0] * 8, [1.0] * 8
    runs = {"correctness": _run(tmp_path, "b", steady, ok),
            "endogenous": _run(tmp_path, "a", steady, ok),
            "hybrid": _run(tmp_path, "c", [300, 300, 250, 200, 150, 120, 140, 149], ok),  # last 2: 144.5 < 150
            "short": _run(tmp_path, "s", steady, [1, 1, 1, 1, 1, 1, 0.9, 0.85]),         # last 2: 0.875
            "worse": _run(tmp_path, "w", steady, ok)}
    res = mod.recommend(str(cmp_path), runs, steps=8)
    assert {k: v["use"] for k, v in res["runs"].items()} == {
        "correctness": True, "endogenous": True, "hybrid": False, "short": False, "worse": False}
    assert res["runs"]["hybrid"]["length_last_quarter"] == pytest.approx(144.5)
    assert res["pick"] == "endogenous" and res["significant"] is False
    policies["correctness"].update(gained=11, mcnemar_p=0.01)  # now net +7 and significant
    cmp_path.write_text(json.dumps({"command": "x", "policies": policies}))
    res = mod.recommend(str(cmp_path), runs, steps=8)
    assert res["pick"] == "correctness" and res["significant"] is True
    with pytest.raises(ValueError, match="the rule needs 9"):
        mod.recommend(str(cmp_path), runs, steps=9)
    with pytest.raises(ValueError, match="no evaluated policy 'other'"):
        mod.recommend(str(cmp_path), {"other": runs["correctness"]}, steps=8)
    blind = tmp_path / "blind"  # a run without the answered monitor is refused, not waved through
    blind.mkdir()
    (blind / "curves.csv").write_text("step,completion_length\n" + "".join(f"{i},300\n" for i in range(1, 9)))
    with pytest.raises(ValueError, match="no `reward_answered` values in steps 7-8"):
        mod.recommend(str(cmp_path), {"correctness": str(blind)}, steps=8)


def test_recommended_config_is_the_rules_pick_with_four_prompts_per_step():
    """configs/grpo_recommended.yaml follows the committed records: its base is the config of the run the rule picks
    from records/rl/qwen05 (every evaluated 100-step run), and it differs from that config only in the batch layout
    (4 prompts x 4 completions per step) and its output folder."""
    from endorm.cli import parse_config
    from endorm.rl import TrainConfig

    mod = _load_script()
    rec = ROOT / "records/rl/qwen05"
    compared = json.loads((rec / "compare_gsm8k.json").read_text())["policies"]
    runs = {k: str(rec / k) for k in mod.TIE_ORDER if k in compared}
    assert set(runs) >= {"endogenous", "correctness"}
    pick = mod.recommend(str(rec / "compare_gsm8k.json"), runs)["pick"]
    chosen = vars(parse_config(TrainConfig, ["--config", str(ROOT / f"configs/qwen05_grpo_{pick}.yaml")]))
    recommended = vars(parse_config(TrainConfig, ["--config", str(ROOT / "configs/grpo_recommended.yaml")]))
    assert {k for k in chosen if chosen[k] != recommended[k]} == {"gradient_accumulation_steps", "output_dir"}
    per_step = recommended["per_device_train_batch_size"] * recommended["gradient_accumulation_steps"]
    assert per_step // recommended["num_generations"] == 4
