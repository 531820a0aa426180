"""Accuracy arithmetic, pure and model-free.

- A comparison's *margin* is score(winner) - score(loser) for a pointwise method, or
  P(winner preferred) - 1/2 for a pairwise judge. It counts as correct only if margin > 0: a tie
  (or a NaN score) is wrong.
- RM-Bench (Liu et al. 2024): M[i][j] = share of prompts where chosen style i beats rejected style j
  (styles: concise, detailed, detailed_markdown). easy = mean of the lower triangle (i > j: the chosen
  answer is the more styled one), normal = mean of the diagonal, hard = mean of the upper triangle
  (i < j). A domain's accuracy is the mean of easy, normal and hard.
- Best-of-N, ties split as in RewardBench 2: if the correct candidate's score is the highest and k
  candidates share that score, the item counts 1/k; otherwise 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

TIE_RULE = "pairwise accuracy counts a tie (equal scores, or P = 1/2 for a pairwise judge) as wrong"
BON_TIE_RULE = "best-of-N: k candidates tied at the top score, the correct one among them -> 1/k"


def correct(margin: float | None) -> bool:
    """A comparison is right only when the expected winner is strictly ahead (tie or NaN -> wrong)."""
    return margin is not None and not math.isnan(margin) and margin > 0


def margin(score_win: float, score_lose: float) -> float:
    """score(winner) - score(loser); NaN if either is NaN (so the comparison counts as wrong)."""
    return float(score_win) - float(score_lose)


def nan_none(m: float | None) -> float:
    """A stored margin (None for NaN in JSON) as a float."""
    return float("nan") if m is None else float(m)


def accuracy(margins: Sequence[float]) -> float:
    if not margins:
        return float("nan")
    return sum(correct(m) for m in margins) / len(margins)


def rmbench_matrix(margins: Sequence[Sequence[Sequence[float]]]) -> list[list[float]]:
    """M[i][j]: share of prompts whose chosen[i] beats rejected[j].

    Args: margins [n prompts][3][3], margins[p][i][j] = margin of chosen i over rejected j.
    """
    if not margins:
        raise ValueError("no prompts")
    n = len(margins)
    return [[sum(correct(m[i][j]) for m in margins) / n for j in range(3)] for i in range(3)]


def rmbench_levels(M: Sequence[Sequence[float]]) -> dict[str, float]:
    """easy (i > j), normal (i = j), hard (i < j) means of the 3x3 matrix, and their mean ('avg')."""
    easy = [M[i][j] for i in range(3) for j in range(3) if i > j]
    normal = [M[i][i] for i in range(3)]
    hard = [M[i][j] for i in range(3) for j in range(3) if i < j]
    out = {"easy": sum(easy) / 3, "normal": sum(normal) / 3, "hard": sum(hard) / 3}
    out["avg"] = (out["easy"] + out["normal"] + out["hard"]) / 3
    return out


def best_of_n_credit(scores: Sequence[float], best: int) -> float:
    """1/k if ``scores[best]`` is the maximum shared by k candidates, else 0 (NaN scores never win)."""
    clean = [-math.inf if s is None or math.isnan(s) else float(s) for s in scores]
    top = max(clean)
    if clean[best] != top or top == -math.inf:
        return 0.0
    return 1.0 / sum(1 for s in clean if s == top)


def mean(xs: Sequence[float]) -> float:
    xs = [x for x in xs if not math.isnan(x)]
    return sum(xs) / len(xs) if xs else float("nan")


def standard_error(xs: Sequence[float]) -> float:
    """Standard error of the mean (sample standard deviation / sqrt(n)); NaN for fewer than 2 values."""
    xs = [x for x in xs if not math.isnan(x)]
    if len(xs) < 2:
        return float("nan")
    m = sum(xs) / len(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1) / len(xs))


def diagonal_lift(by_sys: dict[str, dict[str, float]]) -> float:
    """DSP, one query: mean over domains D of acc(D under D's prompt) - mean acc(D under the other prompts).

    Args: by_sys[system domain][evaluated domain] = accuracy of that domain's comparisons (one query).
    """
    doms = list(by_sys)
    lift = [by_sys[d][d] - sum(by_sys[x][d] for x in doms if x != d) / (len(doms) - 1) for d in doms]
    return sum(lift) / len(lift)
