"""Choosing among N sampled solutions: best-of-N accuracy, within-problem AUROC, shorter-wins share, majority
vote, and the intervals reported with them. Plain Python on lists (one list of N per problem).

- Best-of-N with ties split: when k samples share the top score and c of them are correct, the problem
  counts c / k (the expected accuracy of picking one of the tied samples at random; RewardBench 2 splits
  ties the same way for one correct candidate).
- Within-problem AUROC: for a problem with at least one correct and one wrong sample, the share of
  (correct, wrong) pairs where the correct sample scores higher, ties 1/2; averaged over such problems.
  Problems whose samples are all right or all wrong carry no ranking signal and are left out.
- Shorter-wins share: over the pairs of one problem's samples with different lengths and different
  scores, the share where the higher score goes to the shorter sample (0.5 = no length preference).
- Majority vote: a sample's score is the share of the problem's samples whose answer is equivalent to its
  own (samples without an answer score 0); best-of-N under it is the vote with ties split.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence

__all__ = [
    "best_of_n_credit",
    "within_problem_auroc",
    "shorter_wins",
    "vote_shares",
    "bootstrap_ci",
    "dev_test_split",
]


def best_of_n_credit(scores: Sequence[float], correct: Sequence[bool]) -> float:
    """Expected correctness of the top-scored sample, ties split evenly (NaN scores never win)."""
    if len(scores) != len(correct) or not scores:
        raise ValueError(f"need one score per sample (got {len(scores)} scores, {len(correct)} labels)")
    finite = [s for s in scores if not math.isnan(s)]
    if not finite:
        return sum(correct) / len(correct)  # nothing to choose by: a random pick
    top = max(finite)
    tied = [c for s, c in zip(scores, correct, strict=True) if s == top]
    return sum(tied) / len(tied)


def within_problem_auroc(scores: Sequence[float], correct: Sequence[bool]) -> float | None:
    """P(score of a correct sample > score of a wrong one), ties 1/2; None without both kinds."""
    pos = [s for s, c in zip(scores, correct, strict=True) if c]
    neg = [s for s, c in zip(scores, correct, strict=True) if not c]
    if not pos or not neg:
        return None
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def shorter_wins(scores: Sequence[float], lengths: Sequence[int]) -> tuple[int, int]:
    """(pairs won by the shorter sample, pairs decided) over pairs with different lengths and scores."""
    won = decided = 0
    for i in range(len(scores)):
        for j in range(i + 1, len(scores)):
            if lengths[i] == lengths[j] or scores[i] == scores[j]:
                continue
            decided += 1
            shorter_is_i = lengths[i] < lengths[j]
            won += (scores[i] > scores[j]) == shorter_is_i
    return won, decided


def vote_shares(answers: Sequence[str | None], same: Callable[[str, str], bool]) -> list[float]:
    """Each sample's share of the votes: the fraction of samples whose answer is ``same`` as its own.

    ``same`` is the grader's equivalence (so "0.5" and "1/2" vote together); samples with no answer get 0
    and do not vote.
    """
    n = len(answers)
    out = []
    for a in answers:
        if a is None:
            out.append(0.0)
            continue
        out.append(sum(1 for b in answers if b is not None and (b == a or same(a, b))) / n)
    return out


def bootstrap_ci(
    values: Sequence[float], stat: Callable[[Sequence[float]], float] | None = None,
    n_boot: int = 2000, seed: int = 0, level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``stat`` (default: the mean) over resampled ``values``."""
    if not values:
        return (math.nan, math.nan)
    stat = stat or (lambda xs: sum(xs) / len(xs))
    rng = random.Random(seed)
    n = len(values)
    boots = sorted(stat([values[rng.randrange(n)] for _ in range(n)]) for _ in range(n_boot))
    lo = boots[int(math.floor((1 - level) / 2 * n_boot))]
    hi = boots[min(n_boot - 1, int(math.ceil((1 + level) / 2 * n_boot)) - 1)]
    return (lo, hi)


def dev_test_split(ids: Sequence[str], seed: int = 0) -> dict[str, str]:
    """A seeded half / half split of problem ids: the first half of a seeded shuffle of the sorted ids is
    ``dev``, the rest ``test`` (so the split depends on the set of ids, not on their order)."""
    order = sorted(set(ids))
    random.Random(seed).shuffle(order)
    half = len(order) // 2
    return {pid: ("dev" if i < half else "test") for i, pid in enumerate(order)}
