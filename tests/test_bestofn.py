"""Best-of-N on math (endorm.mathx.selection, endorm.mathx.bestofn, `endorm math-eval --select`): the selection
metrics against naive loops and hand-computed values, every form against a naive loop, the scorer against
`EndogenousRewardModel.score`, and the command end to end on the tiny model."""

from __future__ import annotations

import json
import math

import pytest
import torch

from endorm.mathx.bestofn import (
    ALL_FORMS,
    ENDOGENOUS_FORMS,
    form_scores,
    parse_forms,
    rl_candidate,
    summarize,
)
from endorm.mathx.grading import is_equiv
from endorm.mathx.selection import (
    best_of_n_credit,
    bootstrap_ci,
    dev_test_split,
    shorter_wins,
    vote_shares,
    within_problem_auroc,
)
from endorm.rewards import entropy_and_kl_uniform
from endorm.scoring import TokenStats

# ---------------------------------------------------------------- selection metrics, hand-computed


def test_best_of_n_credit_ties_split():
    assert best_of_n_credit([1.0, 3.0, 2.0], [False, True, False]) == 1.0
    assert best_of_n_credit([1.0, 3.0, 2.0], [True, False, True]) == 0.0
    # three tied at the top, two of them correct -> 2/3
    assert best_of_n_credit([5.0, 5.0, 1.0, 5.0], [True, False, True, True]) == pytest.approx(2 / 3)
    # NaN never wins; all NaN -> a random pick's expectation
    assert best_of_n_credit([math.nan, 0.0], [True, False]) == 0.0
    assert best_of_n_credit([math.nan, math.nan], [True, False]) == 0.5


def test_auroc_hand_computed():
    # correct: 3, 1; wrong: 2, 1 -> pairs (3>2) 1, (3>1) 1, (1<2) 0, (1=1) 0.5 -> 2.5/4
    assert within_problem_auroc([3, 2, 1, 1], [True, False, True, False]) == pytest.approx(0.625)
    assert within_problem_auroc([1, 2], [True, True]) is None
    assert within_problem_auroc([1, 2], [False, False]) is None


def test_auroc_matches_naive_rank_formula():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        s = torch.randint(0, 5, (9,), generator=g).tolist()  # many ties
        c = (torch.rand(9, generator=g) > 0.5).tolist()
        if all(c) or not any(c):
            continue
        # Mann-Whitney U from mid-ranks
        order = sorted(range(9), key=lambda i: s[i])
        ranks = [0.0] * 9
        i = 0
        while i < 9:
            j = i
            while j + 1 < 9 and s[order[j + 1]] == s[order[i]]:
                j += 1
            for k in range(i, j + 1):
                ranks[order[k]] = (i + j) / 2 + 1
            i = j + 1
        n1, n0 = sum(c), 9 - sum(c)
        u = sum(r for r, ci in zip(ranks, c, strict=True) if ci) - n1 * (n1 + 1) / 2
        assert within_problem_auroc(s, c) == pytest.approx(u / (n1 * n0))


def test_shorter_wins_counts_only_decided_pairs():
    # lengths 10, 20, 20, 5; scores 1, 2, 2, 0
    # pairs: (10,20) longer wins; (10,20) longer wins; (10,5) 10 wins -> longer; (20,20) skipped (same length);
    # (20,5) longer wins; (20,5) longer wins -> 0 of 5 won by the shorter
    assert shorter_wins([1, 2, 2, 0], [10, 20, 20, 5]) == (0, 5)
    assert shorter_wins([3, 2, 1], [1, 2, 3]) == (3, 3)
    assert shorter_wins([1, 1], [1, 2]) == (0, 0)  # a tie decides nothing


def test_majority_vote_on_hand_made_answers():
    answers = ["42", "42.0", "7", None, "\\frac{84}{2}"]
    shares = vote_shares(answers, lambda a, b: bool(is_equiv(a, b)))
    # 42, 42.0 and 84/2 agree (3 of 5 samples); 7 alone; no answer -> 0
    assert shares == pytest.approx([0.6, 0.6, 0.2, 0.0, 0.6])
    correct = [True, True, False, False, True]
    assert best_of_n_credit(shares, correct) == 1.0
    # a tied vote between two answers splits the credit
    tied = vote_shares(["1", "2", "1", "2"], lambda a, b: a == b)
    assert best_of_n_credit(tied, [True, False, True, False]) == 0.5


def test_dev_test_split_is_seeded_and_order_free():
    ids = [f"p{i}" for i in range(11)]
    a, b = dev_test_split(ids, 0), dev_test_split(list(reversed(ids)), 0)
    assert a == b
    assert sum(v == "dev" for v in a.values()) == 5
    assert dev_test_split(ids, 1) != a


def test_bootstrap_ci_brackets_the_mean():
    xs = [0.0, 1.0] * 50
    lo, hi = bootstrap_ci(xs)
    assert lo < 0.5 < hi and hi - lo < 0.3


# ---------------------------------------------------------------- forms against naive loops


def test_entropy_and_kl_uniform_against_naive_loop():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 7, generator=g) * 3
    for alpha in (1.0, 0.5):
        ent, klu = entropy_and_kl_uniform(logits, alpha)
        for i in range(3):
            p = [math.exp(x / alpha) for x in logits[i].tolist()]
            z = sum(p)
            p = [x / z for x in p]
            naive_ent = -sum(x * math.log(x) for x in p)
            naive_kl = sum((1 / 7) * math.log((1 / 7) / x) for x in p)
            assert ent[i].item() == pytest.approx(naive_ent, abs=1e-5)
            assert klu[i].item() == pytest.approx(naive_kl, abs=1e-5)


def _naive_forms(lp: list[float], v: list[float], ent: list[float], klu: list[float]) -> dict[str, float]:
    n = len(lp)
    r = [lp[t] + v[t] - (v[t + 1] if t + 1 < n else 0.0) for t in range(n)]
    out = {"sum": sum(r), "mean": sum(r) / n, "mean_logprob": sum(lp) / n,
           "self_certainty": sum(klu) / n, "neg_entropy": -sum(ent) / n}
    for g in (0.9, 0.93, 0.97, 0.99, 1.0):
        if g < 1:
            out[f"discounted@{g}"] = sum(g**t * r[t] for t in range(n))
        out[f"logprob@{g:g}"] = sum(g**t * lp[t] for t in range(n))
    return out


def test_every_form_against_a_naive_loop():
    g = torch.Generator().manual_seed(2)
    for n in (1, 2, 13):
        lp = -torch.rand(n, generator=g) * 3
        v = torch.randn(n, generator=g) * 5 + 10
        ent, klu = torch.rand(n, generator=g), torch.rand(n, generator=g)
        st = TokenStats(list(range(n)), lp, v, ent, klu)
        got = form_scores(st, [f for f in ALL_FORMS if f != "majority"])
        want = _naive_forms(lp.tolist(), v.tolist(), ent.tolist(), klu.tolist())
        for f, x in got.items():
            assert x == pytest.approx(want[f], rel=1e-5, abs=1e-4), f


def test_sum_and_logprob1_rank_one_problem_alike():
    """Within one problem V(s_1) is shared, so sum = logprob@1 + V(s_1) ranks samples identically."""
    g = torch.Generator().manual_seed(3)
    v1 = 7.5
    sums, lps = [], []
    for n in (3, 5, 8):
        lp = -torch.rand(n, generator=g)
        v = torch.randn(n, generator=g)
        v[0] = v1
        f = form_scores(TokenStats([0] * n, lp, v, lp, lp), ["sum", "logprob@1"])
        sums.append(f["sum"])
        lps.append(f["logprob@1"])
        assert f["sum"] - f["logprob@1"] == pytest.approx(v1, abs=1e-5)
    assert sorted(range(3), key=sums.__getitem__) == sorted(range(3), key=lps.__getitem__)


def test_parse_forms():
    assert parse_forms("all") == list(ALL_FORMS)
    assert parse_forms("sum,discounted@0.8,sum") == ["sum", "discounted@0.8"]
    with pytest.raises(ValueError, match="unknown form 'bogus'"):
        parse_forms("bogus")
    with pytest.raises(ValueError, match="discounted@1.5"):
        parse_forms("discounted@1.5")


# ---------------------------------------------------------------- the summary's selection path


def _fake(n_problems: int = 12, n: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    records, scores = [], []
    for p in range(n_problems):
        correct = (torch.rand(n, generator=g) > 0.5).tolist()
        records.append({"id": f"q{p}", "correct": correct, "predictions": ["1" if c else "2" for c in correct],
                        "n_tokens": torch.randint(5, 50, (n,), generator=g).tolist(), "end_token": [0] * n})
        scores.append({"id": f"q{p}", **{f: torch.randn(n, generator=g).tolist() for f in ENDOGENOUS_FORMS}})
    return records, scores


def test_best_of_n_is_the_argmax_of_the_form():
    records, scores = _fake()
    s = summarize(records, scores, list(ENDOGENOUS_FORMS))
    for f in ENDOGENOUS_FORMS:
        picks = [r["correct"][max(range(4), key=sc[f].__getitem__)] for r, sc in zip(records, scores, strict=True)]
        assert s["splits"]["all"]["forms"][f]["best_of_n"] == pytest.approx(sum(picks) / len(picks))
    dev = {r["id"] for r, _ in zip(records, scores, strict=True)} & set(dev_test_split([r["id"] for r in records]))
    assert s["splits"]["dev"]["baselines"]["n"] + s["splits"]["test"]["baselines"]["n"] == len(dev)


def test_rl_candidate_follows_dev_auroc():
    records, scores = _fake(n_problems=20)
    s = summarize(records, scores, list(ENDOGENOUS_FORMS))
    best = rl_candidate(s)
    dev = s["splits"]["dev"]["forms"]
    assert dev[best]["auroc"] == max(dev[f]["auroc"] for f in ENDOGENOUS_FORMS)
    # make one form perfect on the dev half: it must be chosen
    split = dev_test_split([r["id"] for r in records])
    for r, sc in zip(records, scores, strict=True):
        if split[r["id"]] == "dev":
            sc["logprob@0.97"] = [1.0 if c else 0.0 for c in r["correct"]]
    assert rl_candidate(summarize(records, scores, list(ENDOGENOUS_FORMS))) == "logprob@0.97"
    # no dev problem with both a correct and a wrong sample: no candidate, not an error at the end of a long run
    for r in records:
        r["correct"] = [False] * len(r["correct"])
    assert rl_candidate(summarize(records, scores, list(ENDOGENOUS_FORMS))) is None


def test_summarize_refuses_scores_out_of_order():
    records, scores = _fake()
    scores[0], scores[1] = scores[1], scores[0]
    with pytest.raises(ValueError, match="out of order"):
        summarize(records, scores, ["sum"])


def test_subset_summary_equals_summarize_on_the_kept_problems(tmp_path):
    """benchmarks/bestofn_subset.py (one model's run on another run's problems) is summarize() on those rows,
    in the run's order, and refuses a problem the run does not hold."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bestofn_subset.py"
    spec = importlib.util.spec_from_file_location("bestofn_subset", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    records, scores = _fake()
    run = tmp_path / "run"
    run.mkdir()
    (run / "gsm8k.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (run / "gsm8k.scores.jsonl").write_text(
        "".join(json.dumps({"id": s["id"], "scores": {k: v for k, v in s.items() if k != "id"}}) + "\n"
                for s in scores))
    keep = [records[i]["id"] for i in (7, 2, 5, 9, 0)]
    ids = tmp_path / "ids.jsonl"
    ids.write_text("".join(json.dumps({"id": i}) + "\n" for i in keep))
    got = mod.main(["--run", str(run), "--ids_from", str(ids)])
    idx = [i for i, r in enumerate(records) if r["id"] in keep]
    want = summarize([records[i] for i in idx], [scores[i] for i in idx], list(ENDOGENOUS_FORMS))
    assert got["splits"]["all"]["baselines"]["n"] == 5
    for f in ENDOGENOUS_FORMS:
        assert got["splits"]["all"]["forms"][f]["best_of_n"] == want["splits"]["all"]["forms"][f]["best_of_n"]
    ids.write_text(json.dumps({"id": "not-in-the-run"}) + "\n")
    with pytest.raises(SystemExit, match="not-in-the-run"):
        mod.main(["--run", str(run), "--ids_from", str(ids)])


# ---------------------------------------------------------------- the scorer on the tiny model


def test_score_problem_equals_endorm_score(tiny, tiny_rm):
    """A finished sample's reward is what `EndogenousRewardModel.score` gives its text (default form, sum)."""
    from endorm.mathx.bestofn import score_problem
    from endorm.mathx.generate import build_prompt

    model, tok = tiny
    q = "What is 6 times 7?"
    prompt = build_prompt(tok, q, "plain")
    texts = ["The answer is 42.", "6 times 7 equals 42", "Paris"]
    rec = {"id": "x", "completions": texts, "end_token": [tok.eos_token_id] * 3,
           "predictions": ["42", "42", None], "correct": [True, True, False], "n_tokens": [5, 5, 2]}
    got = score_problem(model, tok, prompt, rec, ["sum", "discounted@0.93", "majority"])
    for form, kw in (("sum", {"aggregation": "sum", "gamma": 1.0}), ("discounted@0.93", {})):
        want = tiny_rm.with_config(**kw).score([q] * 3, texts)
        assert got[form] == pytest.approx(want, abs=1e-4), form
    assert got["majority"] == pytest.approx([2 / 3, 2 / 3, 0.0])


def test_score_problem_extra_stats_match_full_logits(tiny):
    """Entropy and KL(U || pi) from the chunked path equal those of the model's own full logits."""
    from endorm.mathx.bestofn import score_problem

    model, tok = tiny
    prompt = "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    text = "Paris is the capital."
    rec = {"id": "x", "completions": [text], "end_token": [None], "predictions": [None], "correct": [False],
           "n_tokens": [4]}
    got = score_problem(model, tok, prompt, rec, ["self_certainty", "neg_entropy", "mean_logprob"])
    p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    r_ids = tok(text, add_special_tokens=False)["input_ids"]  # cut sample: no end token appended
    with torch.no_grad():
        logits = model(torch.tensor([p_ids + r_ids])).logits[0, len(p_ids) - 1 : -1]  # [n, V]
    logp = torch.log_softmax(logits, -1)
    ent = -(logp.exp() * logp).sum(-1)
    kl = (-math.log(logits.shape[-1]) - logp.mean(-1))
    lp = logp.gather(-1, torch.tensor(r_ids)[:, None])[:, 0]
    assert got["neg_entropy"][0] == pytest.approx(-ent.mean().item(), abs=1e-4)
    assert got["self_certainty"][0] == pytest.approx(kl.mean().item(), abs=1e-4)
    assert got["mean_logprob"][0] == pytest.approx(lp.mean().item(), abs=1e-4)


# ---------------------------------------------------------------- the command end to end


def test_math_eval_select_end_to_end(tiny_model_dir, tmp_path):
    from endorm.mathx.cli import Config, run

    data = tmp_path / "toy.jsonl"
    data.write_text("".join(json.dumps({"question": f"What is {i} + {i}?", "answer": str(2 * i)}) + "\n"
                            for i in range(6)))
    out = tmp_path / "out"
    cfg = Config(models=str(tiny_model_dir), benchmarks=str(data), prompt_template="plain", max_new_tokens=6,
                 temperature=1.0, num_samples=3, batch_size=6, select="sum,discounted@0.93,self_certainty,majority",
                 output_dir=str(out))
    assert run(cfg) == 0
    folder = out / tiny_model_dir.name
    samples = [json.loads(x) for x in (folder / "toy.jsonl").read_text().splitlines()]
    scores = [json.loads(x) for x in (folder / "toy.scores.jsonl").read_text().splitlines()]
    greedy = [json.loads(x) for x in (folder / "toy.greedy.jsonl").read_text().splitlines()]
    assert [s["id"] for s in samples] == [s["id"] for s in scores] == [g["id"] for g in greedy]
    assert all(len(s["completions"]) == 3 and len(s["n_tokens"]) == 3 for s in samples)
    assert all(len(g["completions"]) == 1 for g in greedy)
    summary = json.loads((folder / "toy.bestofn.json").read_text())
    assert set(summary["splits"]["all"]["forms"]) == {"sum", "discounted@0.93", "self_certainty", "majority"}
    assert summary["rl_candidate"] in ("sum", "discounted@0.93")
    assert summary["splits"]["all"]["baselines"]["n"] == 6
    # --resume with everything done changes nothing
    before = (folder / "toy.scores.jsonl").read_text()
    cfg.resume = True
    assert run(cfg) == 0
    assert (folder / "toy.scores.jsonl").read_text() == before
    # a run cut between sampling and scoring: the unscored samples are scored on --resume, the same scores
    lines = before.splitlines(keepends=True)
    (folder / "toy.scores.jsonl").write_text("".join(lines[:2]))
    assert run(cfg) == 0
    assert (folder / "toy.scores.jsonl").read_text() == before
    # scores for more problems than were sampled do not belong together
    (folder / "toy.jsonl").write_text("".join((folder / "toy.jsonl").read_text().splitlines(keepends=True)[:3]))
    with pytest.raises(ValueError, match="do not belong together"):
        run(cfg)
    # --resume against another subset is refused, not mixed
    cfg2 = Config(**{**cfg.__dict__, "limit": 3, "seed": 5})
    (folder / "toy.scores.jsonl").unlink()
    with pytest.raises(ValueError, match="other problems"):
        run(cfg2)


def test_length_cap_holds_the_share_of_greedy_solutions():
    from endorm.mathx.bestofn import length_cap

    recs = [{"n_tokens": [n], "end_token": [0]} for n in (10, 70, 100, 130, 200, 250, 300, 310, 320, 500)]
    assert length_cap(recs, 0.9) == 320  # the 9th shortest of 10 is 320 tokens: 5 x 64
    assert length_cap(recs, 0.5) == 256  # the 5th is 200 -> 256
    recs[-2:] = [{"n_tokens": [768], "end_token": [None]}] * 2  # two cut at the cap: 8 of 10 ended
    assert length_cap(recs, 0.9) is None
    assert length_cap(recs, 0.8) == 320


def test_regrade_file_rewrites_verdicts_with_the_current_grader(tmp_path):
    from endorm.mathx.cli import regrade_file

    f = tmp_path / "gsm8k.jsonl"
    recs = [{"id": "a", "answer": "42", "completions": ["so \\boxed{42}", "it is 41"], "correct": [False, True]},
            {"id": "b", "answer": "7", "completions": ["\\boxed{7}"], "correct": [True]}]
    f.write_text("".join(json.dumps(r) + "\n" for r in recs))
    assert regrade_file(f) == 2
    got = [json.loads(x) for x in f.read_text().splitlines()]
    assert [g["correct"] for g in got] == [[True, False], [True]]
    assert got[0]["graders"] == ["math-verify", "math-verify"]
    assert regrade_file(f) == 0


# ---------------------------------------------------------------- continuous batching engine


def test_continuous_engine_matches_generate_greedy(tiny):
    from endorm.mathx.generate import sample_completions

    model, tok = tiny
    prompts = [f"<|im_start|>user\nWhat is {i} + {2 * i}?<|im_end|>\n<|im_start|>assistant\n" for i in range(5)]
    a = sample_completions(model, tok, prompts, max_new_tokens=12, batch_size=2)
    b = sample_completions(model, tok, prompts, max_new_tokens=12, engine="continuous")
    assert a == b
    s = sample_completions(model, tok, prompts, max_new_tokens=6, temperature=1.0, num_samples=3, engine="continuous")
    assert [len(x) for x in s] == [3] * 5
    assert all(0 < c["n_tokens"] <= 6 for x in s for c in x)
    # seeded: the same call samples the same completions
    assert sample_completions(model, tok, prompts, max_new_tokens=6, temperature=1.0, num_samples=3,
                              engine="continuous") == s


def test_continuous_engine_refuses_a_short_answer(tiny, monkeypatch):
    from endorm.mathx.generate import sample_completions

    model, tok = tiny
    real = model.generate_batch
    monkeypatch.setattr(model, "generate_batch", lambda *a, **k: dict(list(real(*a, **k).items())[:-1]))
    with pytest.raises(RuntimeError, match="returned 1 of 2 completions"):
        sample_completions(model, tok, ["a", "b"], max_new_tokens=4, engine="continuous")


def test_hybrid_lambda_by_hand():
    from endorm.mathx.bestofn import hybrid_lambda

    scores = [{"id": "a", "scores": {"sum": [0.0, 2.0]}},          # population std 1
              {"id": "b", "scores": {"sum": [1.0, 1.0, 7.0, 7.0]}},  # 3
              {"id": "c", "scores": {"sum": [0.0, 4.0]}},          # 2
              {"id": "d", "scores": {"sum": [0.0, 100.0]}}]        # not in ids
    assert hybrid_lambda(scores, "sum", ["a", "b", "c"]) == pytest.approx(0.5 / 2.0)
    assert hybrid_lambda(scores, "sum", ["a", "c"], target=1.0) == pytest.approx(1.0 / 1.5)
    with pytest.raises(ValueError, match="no problem"):
        hybrid_lambda(scores, "sum", ["zz"])


def test_bf16_sampler_resumes_a_float32_file_and_each_record_names_its_sampler(tiny_model_dir, tmp_path):
    """A run resumed with a faster sampler continues the same files; each record says which sampler drew it,
    and the scores still come from the --dtype (float32) model."""
    import torch

    from endorm.mathx.cli import Config, run
    from endorm.mathx.generate import make_sampler

    data = tmp_path / "toy.jsonl"
    data.write_text("".join(json.dumps({"question": f"What is {i} + {i}?", "answer": str(2 * i)}) + "\n"
                            for i in range(8)))
    cfg = Config(models=str(tiny_model_dir), benchmarks=str(data), prompt_template="plain", max_new_tokens=5,
                 temperature=1.0, num_samples=2, batch_size=4, select="sum,mean", engine="continuous",
                 output_dir=str(tmp_path / "out"), resume=True)
    assert run(cfg) == 0
    folder = tmp_path / "out" / tiny_model_dir.name
    for name in ("toy.jsonl", "toy.scores.jsonl"):  # a run stopped after 4 of the 8 problems
        f = folder / name
        f.write_text("".join(f.read_text().splitlines(keepends=True)[:4]))
    assert run(Config(**{**cfg.__dict__, "sampler": "bf16"})) == 0
    samples = [json.loads(x) for x in (folder / "toy.jsonl").read_text().splitlines()]
    assert [s["sampler"] for s in samples] == ["float32"] * 4 + ["bf16"] * 4
    scores = [json.loads(x) for x in (folder / "toy.scores.jsonl").read_text().splitlines()]
    assert [s["id"] for s in scores] == [s["id"] for s in samples]
    # the bf16 copy is a copy: the scoring model keeps its float32 weights
    from endorm.models import load_model_and_tokenizer

    model, _ = load_model_and_tokenizer(str(tiny_model_dir), "float32", "cpu")
    sampler = make_sampler(model, "bf16")
    assert sampler is not model and next(sampler.parameters()).dtype == torch.bfloat16
    assert next(model.parameters()).dtype == torch.float32
    with pytest.raises(ValueError, match="unknown sampler"):
        make_sampler(model, "fp8")
