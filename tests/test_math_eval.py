"""Math data loaders (real shared sets), pass@k / Wilson interval, generation and the math-eval command."""

from __future__ import annotations

import json
import math

import pytest

from endorm.mathx.data import BENCHMARKS, load_benchmark, select_subset
from endorm.mathx.generate import build_prompt, generate_texts, pass_at_k, wilson_interval
from endorm.mathx.grading import extract_boxed, is_equiv
from endorm.paths import shared_data_dir

EXPECTED_SIZES = {"gsm8k": 1319, "gsm8k-train": 7473, "math500": 500, "aime24": 30, "amc23": 40,
                  "minerva": 272, "olympiadbench": 675}


@pytest.mark.parametrize("name", list(BENCHMARKS))
def test_loaders_read_every_row(name):
    probs = load_benchmark(name)
    assert len(probs) == EXPECTED_SIZES[name]
    assert all(p.question.strip() and p.answer.strip() for p in probs)


def test_loader_field_mapping():
    assert load_benchmark("gsm8k")[0].answer == "18"  # after '####'
    assert load_benchmark("amc23")[0].answer == "27"  # float 27.0 in the file
    assert load_benchmark("minerva")[0].answer == "1.6"  # boxed in the solution
    ob = load_benchmark("olympiadbench")
    assert ob[1].answer == "\\frac{1}{2 n+2}"  # $...$ stripped from final_answer[0]
    # MATH-500: the boxed answer of every reference solution matches the answer field
    rows = [json.loads(x) for x in (shared_data_dir() / "math/math500.jsonl").read_text().splitlines()]
    assert all(is_equiv(extract_boxed(r["solution"]), p.answer) for r, p in zip(rows, load_benchmark("math500"),
                                                                                   strict=True))


def test_subset_is_seeded_and_stable():
    a = load_benchmark("gsm8k", limit=20, seed=0)
    b = load_benchmark("gsm8k", limit=20, seed=0)
    c = load_benchmark("gsm8k", limit=20, seed=1)
    assert [p.id for p in a] == [p.id for p in b] and [p.question for p in a] != [p.question for p in c]
    assert select_subset([1, 2, 3], 2, None) == [1, 2]


def test_bad_rows_are_named(tmp_path):
    f = tmp_path / "gsm8k_bad.jsonl"
    f.write_text('{"question": "q", "answer": "#### 1"}\n{"question": "q2", "answer": "no marker"}\n')
    with pytest.raises(ValueError, match=r"gsm8k_bad.jsonl:2: field 'answer'"):
        load_benchmark(str(f))
    with pytest.raises(ValueError, match="unknown benchmark"):
        load_benchmark("nope")


def test_pass_at_k_and_wilson():
    assert pass_at_k(10, 0, 1) == 0.0
    assert pass_at_k(10, 10, 5) == 1.0
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 2) == pytest.approx(1 - 3 / 6)
    with pytest.raises(ValueError):
        pass_at_k(2, 1, 4)
    lo, hi = wilson_interval(0, 100)
    assert lo == 0.0 and 0.03 < hi < 0.04
    lo, hi = wilson_interval(50, 100)
    assert lo == pytest.approx(0.404, abs=1e-3) and hi == pytest.approx(0.596, abs=1e-3)
    assert math.isclose(sum(wilson_interval(5, 10)), 1.0)


def test_pass_at_k_table_takes_k_from_the_cells():
    from endorm.mathx.cli import common_pass_at_k, format_table

    cell = {"n": 2, "correct": 1, "accuracy": 0.5}
    summary = {"a": {"gsm8k": {**cell, "pass@1": 0.5, "pass@2": 0.75, "pass@4": 1.0}},
               "b": {"gsm8k": {**cell, "pass@1": 0.5, "pass@2": 0.5}}}
    # a folder holding an N = 4 run and an N = 2 run: the only pass@k both hold is pass@2
    assert common_pass_at_k(summary, ["gsm8k"]) == 2
    assert common_pass_at_k({"a": {"gsm8k": cell}}, ["gsm8k"]) is None  # one sample: no pass@k table
    # an earlier single-sample run of another benchmark in the folder does not hide this run's table
    assert common_pass_at_k({"a": {"gsm8k": summary["a"]["gsm8k"], "amc23": cell}}, ["gsm8k"]) == 4
    # a cell without the metric prints "-", never its accuracy under the pass@k label
    lines = format_table({"a": {"gsm8k": {**cell, "pass@4": 1.0}}, "b": {"gsm8k": cell}}, ["gsm8k"], metric="pass@4")
    assert lines.splitlines()[1].split()[1:] == ["100.0", "100.0"]
    assert lines.splitlines()[2].split()[1] == "-"


def test_generation_and_math_eval_cli(tmp_path, capsys):
    from endorm.cli import main
    from endorm.testing import tiny_model_and_tokenizer

    model, tok = tiny_model_and_tokenizer(seed=0)
    prompt = build_prompt(tok, "What is 2+2?", "boxed")
    assert prompt.startswith("<|im_start|>user\n") and prompt.endswith("<|im_start|>assistant\n")
    greedy = generate_texts(model, tok, [prompt, prompt], max_new_tokens=5)
    assert len(greedy) == 2 and greedy[0] == greedy[1]  # greedy is deterministic
    sampled = generate_texts(model, tok, [prompt], max_new_tokens=5, temperature=1.0, num_samples=3)
    assert len(sampled[0]) == 3
    with pytest.raises(ValueError, match="temperature"):
        generate_texts(model, tok, [prompt], num_samples=2)

    model.save_pretrained(tmp_path / "tiny")
    tok.save_pretrained(tmp_path / "tiny")
    out = tmp_path / "eval"
    rc = main(["math-eval", "--models", str(tmp_path / "tiny"), "--benchmarks", "gsm8k,amc23", "--limit", "3",
               "--max_new_tokens", "4", "--output_dir", str(out), "--temperature", "1.0", "--num_samples", "3"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "GSM8K" in printed and "AMC" in printed and "Avg." in printed
    # with N > 1 the headline accuracy is labelled as the first sample's, not mistaken for a best-of-N figure
    assert printed.count("(first sample of each problem)") == 2 and "accuracy of the first sample" in printed
    # N = 3 has pass@1 and pass@2; the second table is pass@2 and its label says so (it once printed "pass@1:")
    assert "\npass@2:\n" in printed and "pass@1:" not in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["tiny"]["gsm8k"]["n"] == 3 and "pass@2" in summary["tiny"]["gsm8k"]
    # a second model into the same folder joins the summary instead of replacing it
    model.save_pretrained(tmp_path / "tiny2")
    tok.save_pretrained(tmp_path / "tiny2")
    assert main(["math-eval", "--models", str(tmp_path / "tiny2"), "--benchmarks", "gsm8k", "--limit", "2",
                 "--max_new_tokens", "4", "--output_dir", str(out)]) == 0
    both = json.loads((out / "summary.json").read_text())
    assert both["tiny"] == summary["tiny"] and both["tiny2"]["gsm8k"]["n"] == 2
    # resuming a finished file adds this invocation's seconds to the earlier total instead of replacing it
    first = both["tiny2"]["gsm8k"]
    assert first["seconds"] == first["seconds_this_run"]
    assert main(["math-eval", "--models", str(tmp_path / "tiny2"), "--benchmarks", "gsm8k", "--limit", "2",
                 "--max_new_tokens", "4", "--output_dir", str(out)]) == 0
    again = json.loads((out / "summary.json").read_text())["tiny2"]["gsm8k"]
    assert again["n"] == 2 and again["seconds"] == pytest.approx(first["seconds"] + again["seconds_this_run"], abs=0.11)
    rows = (out / "tiny" / "gsm8k.jsonl").read_text().splitlines()
    assert len(rows) == 3 and len(json.loads(rows[0])["completions"]) == 3
    for r in map(json.loads, rows):  # each completion's verdict and the grader that gave it
        assert len(r["correct"]) == len(r["graders"]) == 3
        assert set(r["graders"]) <= {"math-verify", "fallback", "none"}
