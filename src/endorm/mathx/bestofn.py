"""Best-of-N on math with the model's own reward: score N sampled solutions per problem under every form from
one forward pass each, and measure how well each form picks a correct one.

Forms (each a score per sample; higher is chosen):

- endogenous (arXiv 2506.23235, ``endorm.rewards``): ``sum`` (the paper's R = alpha log pi(y|x) + V(s_1)),
  ``mean`` (mean r_t), ``discounted@g`` (sum_t g^(t-1) r_t; endorm's default is g = 0.93) and ``logprob@g``
  (sum_t g^(t-1) alpha log pi(a_t|s_t), no value terms; ``logprob@1`` is the sequence log-likelihood, which
  ranks one problem's samples exactly as ``sum`` does since V(s_1) is shared);
- intrinsic baselines: ``mean_logprob`` (mean log pi), ``self_certainty`` (mean over tokens of
  KL(U || pi), Intuitor's definition, arXiv 2505.19590), ``neg_entropy`` (minus the mean token entropy) and
  ``majority`` (the share of samples agreeing with the sample's extracted answer).

Simplification: a sample cut at the length limit (no end token) is scored as it stands, its last state
taken as terminal (V = 0), as for any response; such samples are counted and reported.
The samples are scored as token ids re-encoded from their text (prompt exactly as sampled, completion text,
plus the end token the sampler emitted), so a user's ``endorm score`` of the same text gives the same reward.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Iterable, Sequence
from typing import Any

from endorm.mathx.generate import wilson_interval
from endorm.mathx.selection import (
    best_of_n_credit,
    bootstrap_ci,
    dev_test_split,
    shorter_wins,
    vote_shares,
    within_problem_auroc,
)

__all__ = ["ENDOGENOUS_FORMS", "INTRINSIC_FORMS", "ALL_FORMS", "parse_forms", "form_scores", "score_problem",
           "summarize", "rl_candidate", "format_summary"]

GAMMAS = (0.9, 0.93, 0.97, 0.99)
ENDOGENOUS_FORMS = ("sum", "mean", *(f"discounted@{g}" for g in GAMMAS), *(f"logprob@{g}" for g in GAMMAS), "logprob@1")
INTRINSIC_FORMS = ("mean_logprob", "self_certainty", "neg_entropy", "majority")
ALL_FORMS = ENDOGENOUS_FORMS + INTRINSIC_FORMS


def parse_forms(spec: str) -> list[str]:
    """``all``, ``endogenous``, ``intrinsic`` or a comma list of form names (``discounted@0.8`` allowed)."""
    out: list[str] = []
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        if part == "all":
            out += ALL_FORMS
        elif part == "endogenous":
            out += ENDOGENOUS_FORMS
        elif part == "intrinsic":
            out += INTRINSIC_FORMS
        elif part in ALL_FORMS or _parse_gamma_form(part) is not None:
            out.append(part)
        else:
            raise ValueError(f"--select: unknown form {part!r}; use all, endogenous, intrinsic or any of "
                             f"{', '.join(ALL_FORMS)} (discounted@G and logprob@G take any G in (0, 1])")
    return list(dict.fromkeys(out))


def _parse_gamma_form(name: str) -> tuple[str, float] | None:
    agg, _, g = name.partition("@")
    if agg not in ("discounted", "logprob") or not g:
        return None
    try:
        gamma = float(g)
    except ValueError:
        return None
    return (agg, gamma) if 0 < gamma <= 1 else None


def form_scores(stats: Any, forms: Sequence[str], alpha: float = 1.0) -> dict[str, float]:
    """Every model-based form's score of one sample from its per-token stats (``TokenStats`` with extras).

    ``majority`` needs the other samples' answers and is filled in by ``score_problem``.
    """
    from endorm.rewards import outcome

    out: dict[str, float] = {}
    n = len(stats.logprobs)
    for f in forms:
        if f == "majority":
            continue
        if n == 0:  # nothing to score (an empty, unfinished sample): never chosen
            out[f] = math.nan
        elif f in ("sum", "mean"):
            out[f] = float(outcome(stats.logprobs, stats.values, f, 1.0, alpha)[1])
        elif f == "mean_logprob":
            out[f] = float(stats.logprobs.mean())
        elif f == "self_certainty":
            out[f] = float(stats.kl_uniform.mean())
        elif f == "neg_entropy":
            out[f] = -float(stats.entropy.mean())
        else:
            parsed = _parse_gamma_form(f)
            if parsed is None:
                raise ValueError(f"unknown form {f!r}")
            agg, gamma = parsed
            out[f] = float(outcome(stats.logprobs, stats.values, agg, gamma, alpha)[1])
    return out


def score_problem(
    model: Any, tokenizer: Any, prompt: str, record: dict[str, Any], forms: Sequence[str], alpha: float = 1.0,
    chunk_size: int = 1024,
) -> dict[str, list[float]]:
    """Scores of one problem's samples under ``forms``: {form: [score per sample]} (one forward pass each)."""
    from endorm.chat import Encoded
    from endorm.mathx.grading import is_equiv
    from endorm.scoring import compute_stats

    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    encs, keep = [], []
    for i, (text, end) in enumerate(zip(record["completions"], record["end_token"], strict=True)):
        resp = tokenizer(text, add_special_tokens=False)["input_ids"] + ([int(end)] if end is not None else [])
        if resp:
            encs.append(Encoded(prompt_ids + resp, len(prompt_ids), row=f"{record['id']}#{i}"))
            keep.append(i)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    stats = compute_stats(model, encs, alpha, chunk_size=chunk_size, pad_id=pad, extra=True) if encs else []
    n = len(record["completions"])
    per_sample: list[dict[str, float]] = [{f: math.nan for f in forms if f != "majority"} for _ in range(n)]
    for i, st in zip(keep, stats, strict=True):
        per_sample[i] = form_scores(st, forms, alpha)
    out = {f: [s[f] for s in per_sample] for f in forms if f != "majority"}
    if "majority" in forms:
        out["majority"] = vote_shares(record["predictions"], lambda a, b: bool(is_equiv(a, b)))
    return out


def _finite(xs: Iterable[float]) -> list[float]:
    return [x for x in xs if not math.isnan(x)]


def _form_metrics(records: list[dict], scores: list[dict[str, list[float]]], form: str) -> dict[str, Any]:
    credits, aurocs, won, decided, per_problem_sw = [], [], 0, 0, []
    for rec, sc in zip(records, scores, strict=True):
        s = sc[form]
        credits.append(best_of_n_credit(s, rec["correct"]))
        a = within_problem_auroc([x if not math.isnan(x) else -math.inf for x in s], rec["correct"])
        if a is not None:
            aurocs.append(a)
        w, d = shorter_wins([x if not math.isnan(x) else -math.inf for x in s], rec["n_tokens"])
        won, decided = won + w, decided + d
        per_problem_sw.append((w, d))
    n = len(credits)
    acc = sum(credits) / n if n else math.nan
    lo, hi = wilson_interval(round(sum(credits)), n) if n else (math.nan, math.nan)

    def sw_ratio(pairs: Sequence[tuple[int, int]]) -> float:
        d = sum(p[1] for p in pairs)
        return sum(p[0] for p in pairs) / d if d else math.nan

    return {
        "best_of_n": acc, "best_of_n_ci95": [lo, hi],
        "auroc": sum(aurocs) / len(aurocs) if aurocs else math.nan,
        "auroc_ci95": list(bootstrap_ci(aurocs)), "auroc_problems": len(aurocs),
        "shorter_wins": won / decided if decided else math.nan,
        "shorter_wins_ci95": list(bootstrap_ci(per_problem_sw, stat=sw_ratio)) if decided else [math.nan, math.nan],
        "credits": credits,
    }


def summarize(
    records: list[dict[str, Any]], scores: list[dict[str, list[float]]], forms: Sequence[str],
    greedy: list[dict[str, Any]] | None = None, split_seed: int = 0, random_seed: int = 0,
) -> dict[str, Any]:
    """Per split (all / dev / test): every form's best-of-N accuracy, AUROC and shorter-wins share, and the
    baselines (greedy, mean sample accuracy, a seeded random pick, pass@N), each with a 95 % interval."""
    if len(records) != len(scores):
        raise ValueError(f"{len(records)} sampled problems but {len(scores)} scored ones")
    for rec, sc in zip(records, scores, strict=True):
        if sc.get("id") not in (None, rec["id"]):
            raise ValueError(f"scores are out of order: problem {rec['id']!r} has the scores of {sc['id']!r}")
    split = dev_test_split([r["id"] for r in records], split_seed)
    greedy_by_id = {g["id"]: bool(g["correct"][0]) for g in (greedy or [])}
    rng = random.Random(random_seed)
    picks = [rng.randrange(len(r["correct"])) for r in records]
    out: dict[str, Any] = {"split_seed": split_seed, "forms": list(forms), "splits": {}}
    for name in ("all", "dev", "test"):
        idx = [i for i, r in enumerate(records) if name == "all" or split[r["id"]] == name]
        recs, scs = [records[i] for i in idx], [scores[i] for i in idx]
        n = len(recs)
        sample_acc = [sum(r["correct"]) / len(r["correct"]) for r in recs]
        oracle = sum(any(r["correct"]) for r in recs)
        rand = sum(bool(records[i]["correct"][picks[i]]) for i in idx)
        base: dict[str, Any] = {
            "n": n,
            "samples_per_problem": min((len(r["correct"]) for r in recs), default=0),
            "mean_sample_accuracy": sum(sample_acc) / n if n else math.nan,
            "mean_sample_accuracy_ci95": list(bootstrap_ci(sample_acc)),
            "random_pick": rand / n if n else math.nan, "random_pick_ci95": list(wilson_interval(rand, n)),
            "pass_at_n": oracle / n if n else math.nan, "pass_at_n_ci95": list(wilson_interval(oracle, n)),
            "mixed_problems": sum(0 < sum(r["correct"]) < len(r["correct"]) for r in recs),
            "cut_share": _share([e is None for r in recs for e in r["end_token"]]),
            "answered_share": _share([p is not None for r in recs for p in r["predictions"]]),
            "mean_tokens": _mean([t for r in recs for t in r["n_tokens"]]),
        }
        if greedy_by_id:
            g = [greedy_by_id[r["id"]] for r in recs if r["id"] in greedy_by_id]
            base["greedy"] = sum(g) / len(g) if g else math.nan
            base["greedy_ci95"] = list(wilson_interval(sum(g), len(g)))
            base["greedy_n"] = len(g)
        per_form = {}
        for f in forms:
            m = _form_metrics(recs, scs, f)
            diffs = [c - a for c, a in zip(m.pop("credits"), sample_acc, strict=True)]
            m["gain_over_random"] = _mean(diffs)
            m["gain_over_random_ci95"] = list(bootstrap_ci(diffs))
            per_form[f] = m
        out["splits"][name] = {"baselines": base, "forms": per_form}
    return out


def rl_candidate(summary: dict[str, Any], forms: Sequence[str] = ENDOGENOUS_FORMS) -> str | None:
    """The pre-registered rule (docs/RESULTS.md): the endogenous form with the highest mean within-problem
    AUROC on the dev half; exact ties go to the earlier form in ``ENDOGENOUS_FORMS``. None when no form has a
    dev AUROC (no dev problem has both a correct and a wrong sample), so a long run's summary still prints."""
    dev = summary["splits"]["dev"]["forms"]
    cands = [f for f in forms if f in dev and not math.isnan(dev[f]["auroc"])]
    if not cands:
        return None
    return max(cands, key=lambda f: (dev[f]["auroc"], -forms.index(f)))


def format_summary(summary: dict[str, Any], split: str = "test") -> str:
    """A markdown table: baselines, then one row per form (best-of-N, gain over random, AUROC, shorter wins)."""
    s = summary["splits"][split]
    b = s["baselines"]

    def pct(x: float, ci: Sequence[float] | None = None) -> str:
        if x is None or math.isnan(x):
            return "-"
        return f"{100 * x:.1f}" + (f" ({100 * ci[0]:.1f}-{100 * ci[1]:.1f})" if ci else "")

    lines = [f"{split}: {b['n']} problems x {b['samples_per_problem']} samples; {b['mixed_problems']} with both "
             f"correct and wrong samples; {100 * b['cut_share']:.1f}% of samples cut at the limit; "
             f"mean {b['mean_tokens']:.0f} tokens", "",
             "| baseline | accuracy % (95% CI) |", "|---|---|"]
    if "greedy" in b:
        lines.append(f"| greedy | {pct(b['greedy'], b['greedy_ci95'])} |")
    lines += [f"| mean accuracy of a sample (= random choice, expected) | {pct(b['mean_sample_accuracy'], b['mean_sample_accuracy_ci95'])} |",
              f"| random choice (one seeded draw) | {pct(b['random_pick'], b['random_pick_ci95'])} |",
              f"| pass@{b['samples_per_problem']} (oracle) | {pct(b['pass_at_n'], b['pass_at_n_ci95'])} |", "",
              "| form | best-of-N % (95% CI) | gain over random, points (95% CI) | within-problem AUROC (95% CI) | shorter wins % (95% CI) |",
              "|---|---|---|---|---|"]
    for f, m in s["forms"].items():
        gain = m["gain_over_random"]
        g_ci = m["gain_over_random_ci95"]
        gain_s = "-" if math.isnan(gain) else f"{100 * gain:+.1f} ({100 * g_ci[0]:+.1f} to {100 * g_ci[1]:+.1f})"
        au = m["auroc"]
        au_s = "-" if math.isnan(au) else f"{au:.3f} ({m['auroc_ci95'][0]:.3f}-{m['auroc_ci95'][1]:.3f})"
        lines.append(f"| {f} | {pct(m['best_of_n'], m['best_of_n_ci95'])} | {gain_s} | {au_s} | "
                     f"{pct(m['shorter_wins'], m['shorter_wins_ci95'])} |")
    return "\n".join(lines)


def _share(xs: Sequence[bool]) -> float:
    return sum(xs) / len(xs) if xs else math.nan


def _mean(xs: Sequence[float]) -> float:
    xs = _finite(xs)
    return sum(xs) / len(xs) if xs else math.nan


def length_cap(greedy: Sequence[dict[str, Any]], share: float = 0.9, step: int = 64) -> int | None:
    """The smallest multiple of ``step`` that holds at least ``share`` of the greedy solutions (those ended by
    the end token within it); None when even the greedy pass's own cap holds fewer."""
    lengths = sorted(r["n_tokens"][0] for r in greedy if r["end_token"][0] is not None)
    need = math.ceil(share * len(greedy))
    if len(lengths) < need or need == 0:
        return None
    return step * math.ceil(lengths[need - 1] / step)


def hybrid_lambda(scores: Sequence[dict[str, Any]], form: str, ids: Iterable[str], target: float = 0.5) -> float:
    """Run (c)'s hybrid weight, the rule of docs/RESULTS.md: ``target`` / (median over the problems ``ids`` of the
    within-problem standard deviation of ``form`` over its samples), so lambda x the form spreads inside a group
    about ``target`` of one correct answer's reward.

    scores: the ``.scores.jsonl`` records ({"id", "scores": {form: [one float per sample]}}).
    """
    keep = set(ids)
    stds = []
    for rec in scores:
        if rec["id"] not in keep:
            continue
        xs = _finite(rec["scores"][form])
        if len(xs) >= 2:
            stds.append(statistics.pstdev(xs))
    if not stds:
        raise ValueError(f"no problem of the given ids has two finite {form} scores")
    spread = statistics.median(stds)
    if spread <= 0:
        raise ValueError(f"{form} does not vary within a problem (median spread 0): no lambda makes it a tie-breaker")
    return target / spread
