"""`endorm eval --scaling`: the scaling table's figures equal what the per-example records give by hand."""

import json
import math
import random

import pytest

from endorm.cli import main
from endorm.eval import scaling as S
from endorm.eval.cli import Config, command_line, run
from endorm.stats_file import StatsReader
from endorm.testing import tiny_model_and_tokenizer

WORDS = ("the capital of France is Paris so we add six and seven to get the answer step by step "
         "I cannot help with that but here is a short poem about the sea wind and rain").split()


def _text(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 40))) + "."


# chat (alpacaeval) and safety (xstest) prompts; seeded random responses of 2-40 words, so prompts differ in
# accuracy, the responses in length, and the discount changes rankings
_rng = random.Random(0)
ROWS = [{"id": k, "subset": "alpacaeval" if k < 5 else "xstest-should-respond", "prompt": f"Question {k}: {_text(_rng)}",
         "chosen": [_text(_rng) for _ in range(3)], "rejected": [_text(_rng) for _ in range(3)]} for k in range(10)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Three runs of two tiny models of different size: the small one with endorm and two judges in one run;
    the larger one with endorm and a judge in two runs."""
    tmp = tmp_path_factory.mktemp("scaling")
    data = tmp / "rmb.json"
    data.write_text(json.dumps(ROWS))
    small = tiny_model_and_tokenizer(seed=0)
    large = tiny_model_and_tokenizer(seed=1, hidden_size=64, intermediate_size=128, num_hidden_layers=3)
    spec = [("small", small, "endorm,genrm-pointwise,verifier"), ("large-endorm", large, "endorm"),
            ("large-judge", large, "genrm-pointwise")]
    for name, (model, tok), methods in spec:
        c = Config(benchmark="rm-bench", data=str(data), method=methods, model=name.split("-")[0],
                   output_dir=str(tmp / name), progress=False, plot=False, items_per_batch=4)
        assert run(c, model, tok) == 0
    sizes = {"small": sum(p.numel() for p in small[0].parameters()),
             "large": sum(p.numel() for p in large[0].parameters())}
    return tmp, sizes


def _outcome(lp: list[float], v: list[float], gamma: float) -> float:
    """sum_t gamma^(t-1) (log pi_t + V(s_t) - V(s_t+1)), V after the last token = 0 (alpha = 1)."""
    nxt = v[1:] + [0.0]
    return sum(gamma**t * (lp[t] + v[t] - nxt[t]) for t in range(len(lp)))


def _by_hand(recs: list[dict], margins, lengths: dict) -> dict:
    """Per domain: mean and s.e. of the prompts' accuracies; shorter wins pooled, s.e. clustered by prompt.
    ``margins(record)`` -> [(i, j, score_i - score_j)]."""
    out = {}
    for dom in ("chat", "safety"):
        accs = [sum(m > 0 for _, _, m in margins(r)) / 9 for r in recs if r["domain"] == dom]
        m = sum(accs) / len(accs)
        se = math.sqrt(sum((a - m) ** 2 for a in accs) / (len(accs) - 1) / len(accs))
        out[dom] = (100 * m, 100 * se, len(accs))
    out["avg"] = ((out["chat"][0] + out["safety"][0]) / 2, math.hypot(out["chat"][1], out["safety"][1]) / 2)
    counts = []
    for r in recs:
        n = lengths[r["id"]]
        decided = [(i, j, m) for i, j, m in margins(r) if n[i] != n[j] and m != 0 and not math.isnan(m)]
        counts.append((sum((m > 0) == (n[i] < n[j]) for i, j, m in decided), len(decided)))
    counts = [c for c in counts if c[1]]
    tot = sum(d for _, d in counts)
    p = sum(w for w, _ in counts) / tot
    se = math.sqrt(len(counts) / (len(counts) - 1) * sum((w - p * d) ** 2 for w, d in counts)) / tot
    out["shorter"] = (100 * p, 100 * se, tot)
    return out


def _records(run_dir, method: str) -> list[dict]:
    recs = [json.loads(x) for x in (run_dir / "examples.jsonl").read_text().splitlines()]
    return [r for r in recs if r["method"] == method]


def _judge_margins(r: dict) -> list[tuple]:
    return [(i, j, math.nan if m is None else m) for i, j, m in r["margins"]]


def _endorm_by_hand(run_dir, gamma: float):
    """The endorm records, their margins under the form of discount ``gamma`` recomputed from the kept
    per-token arrays, and their responses' token counts."""
    reader = StatsReader(run_dir / "token_stats.f32")
    recs = _records(run_dir, "endorm")

    def margins(r):
        s = []
        for ref in r["token_stats"]["plain"]:
            lp, v = reader.get(ref, r.get("token_stats_id"))
            s.append(_outcome(lp.tolist(), v.tolist(), gamma))
        return [(i, j, s[i] - s[j]) for i, j, _ in r["margins"]]

    lengths = {r["id"]: [ref[1] for ref in r["token_stats"]["plain"]] for r in recs}
    return recs, margins, lengths


def _check(row: dict, hand: dict, n: int = 5) -> None:
    for dom in ("chat", "safety"):
        assert row["domains"][dom]["acc"] == pytest.approx(hand[dom][0], abs=1e-9)
        assert row["domains"][dom]["se"] == pytest.approx(hand[dom][1], abs=1e-9)
        assert row["domains"][dom]["n"] == hand[dom][2] == n
    assert (row["avg"], row["avg_se"]) == pytest.approx(hand["avg"], abs=1e-9)
    assert (row["shorter_wins"], row["shorter_wins_se"]) == pytest.approx(hand["shorter"][:2], abs=1e-9)
    assert row["n_decided_unequal_length"] == hand["shorter"][2]


def test_scaling_table_equals_the_records_by_hand(runs):
    tmp, sizes = runs
    out = tmp / "scaling"
    argv = ["eval", "--scaling", ",".join(str(tmp / n) for n in ("small", "large-endorm", "large-judge")),
            "--output-dir", str(out)]
    assert main(argv) == 0
    doc = json.loads((out / "scaling.json").read_text())
    assert doc["command"].startswith("endorm eval --output-dir") and "--scaling" in doc["command"]
    rows = {(r["model"], r["row"]): r for r in doc["rows"]}
    assert [(r["model"], r["row"]) for r in doc["rows"]] == [
        ("small", "sum"), ("small", "discounted@0.93"), ("small", "best judge"),
        ("large", "sum"), ("large", "discounted@0.93"), ("large", "best judge")]  # by size, then form
    assert rows[("small", "sum")]["params"] == sizes["small"] < rows[("large", "sum")]["params"] == sizes["large"]

    for model, run_dir in (("small", tmp / "small"), ("large", tmp / "large-endorm")):
        for form, gamma in (("sum", 1.0), ("discounted@0.93", 0.93)):
            _check(rows[(model, form)], _by_hand(*_endorm_by_hand(run_dir, gamma)))
    # the runs' own endorm method scored with the default form: results.json agrees with the default row
    res = json.loads((tmp / "small" / "results.json").read_text())
    assert res["model_params"] == sizes["small"] and res["settings"]["model_params"] == sizes["small"]
    assert res["command"].startswith("endorm eval --method endorm,genrm-pointwise,verifier --data ")
    dflt = res["methods"]["endorm"]["domains"]
    for dom in ("chat", "safety"):
        assert rows[("small", "discounted@0.93")]["domains"][dom]["acc"] == pytest.approx(dflt[dom]["avg"])
        assert rows[("small", "discounted@0.93")]["domains"][dom]["se"] == pytest.approx(dflt[dom]["se"])

    # judges: the best by avg (ties: pointwise first); lengths from the same model's endorm records, which
    # for "large" are in another run
    _, _, small_len = _endorm_by_hand(tmp / "small", 1.0)
    hands = {j: _by_hand(_records(tmp / "small", j), _judge_margins, small_len) for j in ("genrm-pointwise", "verifier")}
    best = max(hands, key=lambda j: (hands[j]["avg"][0], j == "genrm-pointwise"))
    assert rows[("small", "best judge")]["method"] == best
    _check(rows[("small", "best judge")], hands[best])
    _, _, large_len = _endorm_by_hand(tmp / "large-endorm", 1.0)
    judge = _records(tmp / "large-judge", "genrm-pointwise")
    assert rows[("large", "best judge")]["method"] == "genrm-pointwise"
    _check(rows[("large", "best judge")], _by_hand(judge, _judge_margins, large_len))

    table = (out / "scaling.md").read_text()
    r = rows[("large", "discounted@0.93")]
    assert f"| large | {S.params_label(sizes['large'])} | discounted@0.93 (endorm's default) | " in table
    assert f"{r['domains']['chat']['acc']:.1f} ± {r['domains']['chat']['se']:.1f}" in table
    assert f"{r['shorter_wins']:.1f} ± {r['shorter_wins_se']:.1f}" in table
    assert "| paper: Qwen2.5-7B-Instruct | 7.61B | EndoRM (its Table 1) | 84.7 | 91.2 | 88.0 | — |" in table
    assert (out / "scaling.png").stat().st_size > 5000


def test_paired_table_equals_the_per_prompt_differences_by_hand(runs):
    tmp, _ = runs
    out = tmp / "scaling"  # written by the test above; write again so this test stands alone
    assert main(["eval", "--scaling", ",".join(str(tmp / n) for n in ("small", "large-endorm", "large-judge")),
                 "--output-dir", str(out), "--plot", "false"]) == 0
    doc = json.loads((out / "scaling.json").read_text())
    paired = {(p["model"], p["form"]): p for p in doc["paired_vs_default"]}
    assert list(paired) == [("small", "sum"), ("small", "genrm-pointwise"), ("small", "verifier"),
                            ("large", "sum"), ("large", "genrm-pointwise")]
    for model, run_dir, judge_dir in (("small", tmp / "small", tmp / "small"),
                                      ("large", tmp / "large-endorm", tmp / "large-judge")):
        recs, margins, _ = _endorm_by_hand(run_dir, 0.93)
        base = {r["id"]: (r["domain"], sum(m > 0 for _, _, m in margins(r)) / 9) for r in recs}
        _, sum_margins, _ = _endorm_by_hand(run_dir, 1.0)
        forms = {"sum": {r["id"]: sum(m > 0 for _, _, m in sum_margins(r)) / 9 for r in recs}}
        for j in ("genrm-pointwise", "verifier"):
            jr = _records(judge_dir, j)
            if jr:
                forms[j] = {r["id"]: sum(m > 0 for _, _, m in _judge_margins(r)) / 9 for r in jr}
        for form, acc in forms.items():
            diffs = {d: [100 * (acc[i] - a) for i, (dom, a) in base.items() if dom == d] for d in ("chat", "safety")}
            means = [sum(v) / len(v) for v in diffs.values()]
            ses = [math.sqrt(sum((x - mu) ** 2 for x in v) / (len(v) - 1) / len(v)) for v, mu in
                   zip(diffs.values(), means, strict=True)]
            p = paired[(model, form)]
            assert p["minus_default"] == pytest.approx(sum(means) / 2, abs=1e-9)
            assert p["minus_default_se"] == pytest.approx(math.hypot(*ses) / 2, abs=1e-9)
            assert p["minus_default"] == pytest.approx(p["avg"] - p["default_avg"], abs=1e-9)
            assert p["n_paired"] == 10 and p["n"] == {"chat": 5, "safety": 5}
    p = paired[("small", "verifier")]
    assert (f"| small | verifier | {p['avg']:.1f} ± {p['avg_se']:.1f} | {p['default_avg']:.1f} | "
            f"{p['minus_default']:.1f} ± {p['minus_default_se']:.1f} | 5 / 5 |") in (out / "scaling.md").read_text()


def test_across_sizes_table_equals_the_per_prompt_differences_by_hand(runs):
    tmp, sizes = runs
    out = tmp / "scaling-steps"
    assert main(["eval", "--scaling", ",".join(str(tmp / n) for n in ("small", "large-endorm", "large-judge")),
                 "--output-dir", str(out), "--plot", "false"]) == 0
    doc = json.loads((out / "scaling.json").read_text())
    steps = {s["form"]: s for s in doc["across_sizes"]}
    assert [(s["form"], s["smaller"], s["larger"]) for s in doc["across_sizes"]] == [
        ("sum", "small", "large"), ("discounted@0.93", "small", "large")]  # judges are not stepped
    for form, gamma in (("sum", 1.0), ("discounted@0.93", 0.93)):
        acc = {}
        for model, run_dir in (("small", tmp / "small"), ("large", tmp / "large-endorm")):
            recs, margins, _ = _endorm_by_hand(run_dir, gamma)
            acc[model] = {r["id"]: (r["domain"], sum(m > 0 for _, _, m in margins(r)) / 9) for r in recs}
        diffs = {d: [100 * (acc["large"][i][1] - a) for i, (dom, a) in acc["small"].items() if dom == d]
                 for d in ("chat", "safety")}
        means = [sum(v) / len(v) for v in diffs.values()]
        ses = [math.sqrt(sum((x - mu) ** 2 for x in v) / (len(v) - 1) / len(v))
               for v, mu in zip(diffs.values(), means, strict=True)]
        s = steps[form]
        assert s["larger_minus_smaller"] == pytest.approx(sum(means) / 2, abs=1e-9)
        assert s["larger_minus_smaller_se"] == pytest.approx(math.hypot(*ses) / 2, abs=1e-9)
        assert s["larger_minus_smaller"] == pytest.approx(s["larger_avg"] - s["smaller_avg"], abs=1e-9)
        assert (s["smaller_params"], s["larger_params"]) == (sizes["small"], sizes["large"])
        assert s["n_paired"] == 10 and s["n"] == {"chat": 5, "safety": 5}
    s = steps["discounted@0.93"]
    assert (f"| discounted@0.93 | small | large | {s['smaller_avg']:.1f} | {s['larger_avg']:.1f} | "
            f"{s['larger_minus_smaller']:.1f} ± {s['larger_minus_smaller_se']:.1f} | 5 / 5 |"
            ) in (out / "scaling.md").read_text()


def test_scaling_errors_name_the_run(runs, tmp_path):
    tmp, _ = runs
    with pytest.raises(ValueError, match="large's sum is in two runs"):
        S.write([tmp / "large-endorm", tmp / "large-endorm"], tmp_path)
    with pytest.raises(FileNotFoundError, match="no results.json"):
        S.write([tmp_path], tmp_path)


def test_command_line_parses_back():
    from endorm.cli import parse_config

    c = Config(benchmark="dsp", method="endorm,verifier", limit=7, resume=True, token_stats=False,
               system_prompt="Be brief, please.", output_dir="runs/x")
    line = command_line(c)
    assert line.startswith("endorm eval --benchmark dsp --method endorm,verifier")
    import shlex

    assert parse_config(Config, shlex.split(line)[2:]) == c


def test_a_resume_without_a_model_keeps_the_parameter_count(runs, tmp_path, monkeypatch):
    import shutil

    from endorm.eval import cli as eval_cli

    tmp, sizes = runs
    shutil.copytree(tmp / "small", tmp_path / "small")
    monkeypatch.setattr(eval_cli, "load_models", lambda *a, **k: pytest.fail("loaded a model"))
    c = Config(benchmark="rm-bench", data=str(tmp / "rmb.json"), method="endorm,genrm-pointwise,verifier",
               model="small", output_dir=str(tmp_path / "small"), progress=False, plot=False, items_per_batch=4,
               resume=True)
    assert run(c) == 0
    res = json.loads((tmp_path / "small" / "results.json").read_text())
    assert res["new_records"] == 0 and res["model_params"] == sizes["small"]


def test_limit_counts_the_same_seeded_prompts(runs, tmp_path):
    from endorm.eval.data import load_benchmark

    tmp, _ = runs
    data = tmp / "rmb.json"
    assert main(["eval", "--scaling", f"{tmp / 'small'},{tmp / 'large-endorm'}", "--data", str(data),
                 "--limit", "3", "--seed", "1", "--output-dir", str(tmp_path)]) == 0
    ids = {it.id for it in load_benchmark("rm-bench", str(data), ["chat", "safety"], 3, 1)}
    rows = {(r["model"], r["row"]): r for r in json.loads((tmp_path / "scaling.json").read_text())["rows"]}
    recs, margins, lengths = _endorm_by_hand(tmp / "large-endorm", 0.93)
    hand = _by_hand([r for r in recs if r["id"] in ids], margins, lengths)
    _check(rows[("large", "discounted@0.93")], hand, n=3)
    assert rows[("small", "best judge")]["domains"]["safety"]["n"] == 3


def test_a_run_without_token_stats_gives_its_own_form(runs, tmp_path):
    tmp, _ = runs
    model, tok = tiny_model_and_tokenizer(seed=0)
    c = Config(benchmark="rm-bench", data=str(tmp / "rmb.json"), method="endorm", model="nostats", aggregation="sum",
               gamma="1", token_stats=False, output_dir=str(tmp_path / "run"), progress=False, plot=False)
    assert run(c, model, tok) == 0
    rows = S.scaling_rows([S.read_run(tmp_path / "run")])
    assert [r["row"] for r in rows] == ["sum"]  # the run's own form; the default needs the kept arrays
    res = json.loads((tmp_path / "run" / "results.json").read_text())["methods"]["endorm"]["domains"]
    assert rows[0]["domains"]["chat"]["acc"] == pytest.approx(res["chat"]["avg"])
    assert math.isnan(rows[0]["shorter_wins"])  # no token counts without the arrays


def test_one_name_per_model():
    default = {"model": "SmolLM2-135M-Instruct (default)", "settings": {"model": None}}
    named = {"model": "smollm2-135m-instruct", "settings": {"model": "smollm2-135m-instruct"}}
    assert S.model_name(default) == S.model_name(named) == "smollm2-135m-instruct"
    assert S.model_name({"model": "LlamaForCausalLM", "settings": {"model": None}}) == "LlamaForCausalLM"
