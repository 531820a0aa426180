"""endorm.eval.methods: every method on a tiny random model (runs, deterministic, shapes) and on the
real default model for a few pairs; judge-answer arithmetic."""

import math

import pytest
import torch

from endorm.chat import Example
from endorm.eval import prompts as P
from endorm.eval.methods import (
    METHODS,
    ClassifierMethod,
    Judge,
    StatsMemo,
    build_method,
    exclusive_probs,
    pairwise_prompt,
    parse_rating,
    pointwise_prompt,
)

PAIRS = [
    ("What is the capital of France?", "The capital of France is Paris.", "The capital of France is Berlin."),
    ("What is 6 times 7?", "6 times 7 equals 42.", "6 times 7 equals 13."),
]


def examples(system=None):
    return [Example.from_pair(q, r, system) for q, c, rj in PAIRS for r in (c, rj)]


def tiny_classifier(tok):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, num_labels=1, pad_token_id=tok.pad_token_id)
    return LlamaForSequenceClassification(cfg).eval(), tok


def all_methods(rm, ref_rm, tok):
    memo = StatsMemo()
    return {m: build_method(m, rm, memo, ref_rm=ref_rm, classifier=tiny_classifier(tok)) for m in METHODS}


def test_exclusive_probs_subtracts_extensions():
    # "1" = [5], "10" = [5, 6], "2" = [7]; P("1...") = 0.5 includes P("10") = 0.2
    p = exclusive_probs([[5], [5, 6], [7]], [math.log(0.5), math.log(0.2), math.log(0.3)])
    assert p == pytest.approx([0.3, 0.2, 0.3])
    # nested extensions: only the minimal one is subtracted ("1" -> "10" -> "100")
    p = exclusive_probs([[5], [5, 6], [5, 6, 6]], [math.log(0.5), math.log(0.2), math.log(0.05)])
    assert p == pytest.approx([0.3, 0.15, 0.05])


def test_parse_rating():
    assert parse_rating(" 7/10") == 7.0 and parse_rating("10") == 10.0
    assert math.isnan(parse_rating("great")) and math.isnan(parse_rating("0"))


def test_judge_prompts_render_everything():
    e = Example.from_pair("Q?", "R.", "Be formal.")
    text = pointwise_prompt(e)
    assert "Q?" in text and "R." in text and "Be formal." in text and "1 to 10" in text
    a, b = Example.from_pair("Q?", "first"), Example.from_pair("Q?", "second")
    t = pairwise_prompt(a, b)
    assert t.index("first") < t.index("second") and "[Response A]" in t
    multi = Example([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"},
                     {"role": "user", "content": "and?"}, {"role": "assistant", "content": "R"}])
    assert "User: hi" in pointwise_prompt(multi) and "Assistant: yo" in pointwise_prompt(multi)
    assert set(P.DSP_SYSTEM_PROMPTS) == set(P.DSP_DOMAINS)


def test_every_method_on_tiny_model(tiny, tiny_rm):
    model, tok = tiny
    from endorm.testing import tiny_model_and_tokenizer

    ref_model, _ = tiny_model_and_tokenizer(seed=1)
    from endorm import EndogenousRewardModel

    ref_rm = EndogenousRewardModel.from_model(ref_model, tok)
    ex = examples()
    for name, m in all_methods(tiny_rm, ref_rm, tok).items():
        if m.pairwise:
            pairs = [(ex[0], ex[1]), (ex[2], ex[3])]
            p1, p2 = m.compare(pairs), m.compare(pairs)
            assert len(p1) == 2 and p1 == p2, name
            assert all(0 < p < 1 for p in p1), name
            # both orders are averaged, so swapping a and b gives exactly the complement
            swapped = m.compare([(b, a) for a, b in pairs])
            assert swapped == pytest.approx([1 - p for p in p1], abs=1e-6), name
        else:
            s1, s2 = m.score(ex), m.score(ex)
            assert len(s1) == len(ex) and s1 == s2, name
            assert all(isinstance(x, float) and math.isfinite(x) for x in s1), name
            assert len(set(s1)) > 1, name  # the scores depend on the response
    ms = all_methods(tiny_rm, ref_rm, tok)
    assert all(1 <= s <= 10 for s in ms["genrm-pointwise"].score(ex))
    assert all(0 <= s <= 1 for s in ms["verifier"].score(ex))
    # endorm is the core's outcome reward; dpo-implicit is beta * log-ratio
    assert ms["endorm"].score(ex) == pytest.approx(tiny_rm.score_examples(ex))
    pol = tiny_rm.with_config(aggregation="logprob", gamma=1.0).score_examples(ex)
    ref = ref_rm.with_config(aggregation="logprob", gamma=1.0).score_examples(ex)
    assert ms["dpo-implicit"].score(ex) == pytest.approx([0.1 * (a - b) for a, b in zip(pol, ref, strict=True)], rel=1e-4)


def test_system_prompt_changes_judge_and_endorm(tiny_rm):
    memo = StatsMemo()
    for name in ("endorm", "verifier"):
        m = build_method(name, tiny_rm, memo)
        assert m.score(examples("Answer like a pirate.")) != m.score(examples()), name


def test_judge_probs_sum_to_one_with_two_token_ten(tiny):
    model, tok = tiny
    judge = Judge(model, tok)
    assert judge.choice_ids("10")[: len(judge.choice_ids("1"))] == judge.choice_ids("1")  # "10" = "1" + "0" here
    probs = judge.answer_probs(["Rate this: hello", "Rate that: bye"], P.POINTWISE_CHOICES)
    assert len(probs) == 2 and all(len(p) == 10 for p in probs)
    assert [sum(p) for p in probs] == pytest.approx([1.0, 1.0])
    assert probs[0] != probs[1]


def test_greedy_rating_option(tiny_rm):
    m = build_method("genrm-pointwise", tiny_rm, judge_greedy=True)
    s = m.score(examples()[:2])
    assert len(s) == 2 and all(math.isnan(x) or 1 <= x <= 10 for x in s)


def test_classifier_scores_batch_independent(tiny):
    _, tok = tiny
    m = ClassifierMethod(*tiny_classifier(tok), batch_size=3)
    ex = examples()
    one_by_one = [m.score([e])[0] for e in ex]
    assert m.score(ex) == pytest.approx(one_by_one, abs=1e-5)


def test_unknown_or_incomplete_methods(tiny_rm):
    with pytest.raises(ValueError, match="unknown method"):
        build_method("gpt-judge", tiny_rm)
    with pytest.raises(ValueError, match="--ref-model"):
        build_method("dpo-implicit", tiny_rm)
    with pytest.raises(ValueError, match="--classifier-model"):
        build_method("classifier", tiny_rm)


@pytest.mark.slow
def test_methods_on_default_model(default_rm):
    """The real SmolLM2-135M-Instruct: every no-extra-model method on two short pairs."""
    memo = StatsMemo()
    ex = examples()[:2]  # one pair keeps this test short on a loaded CPU
    for name in ("endorm", "logprob-mean", "genrm-pointwise", "verifier", "genrm-pairwise"):
        m = build_method(name, default_rm, memo)
        if m.pairwise:
            p = m.compare([(ex[0], ex[1])])
            assert len(p) == 1 and 0 < p[0] < 1
        else:
            s = m.score(ex)
            assert len(s) == 2 and all(math.isfinite(x) for x in s) and s == m.score(ex), name
            assert s[0] != s[1], name
    judge = Judge(default_rm.model, default_rm.tokenizer)
    probs = judge.answer_probs([pointwise_prompt(ex[0])], P.POINTWISE_CHOICES)[0]
    assert sum(probs) == pytest.approx(1.0) and max(probs) < 1.0
