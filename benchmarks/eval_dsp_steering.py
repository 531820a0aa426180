"""Does a DSP system prompt move the reward toward its own domain? (diagnostic; scores nothing)

For each query, domain D and method: s_D(x) = score of D's response minus the mean score of the other
four responses, under system prompt x. Steering(D) = s_D(D's prompt) - mean over the other three
domains' prompts of s_D. Positive means the domain's own prompt raises its response relative to the
rest, even where the shift is too small to flip the accuracy. Reports the mean over queries, the share
of queries where it is positive, and the mean |s_D| for scale.

For every method, pairwise judges included, also the diagonal lift in accuracy points: for each query
and domain D, the accuracy of D's four comparisons under D's own prompt minus their mean accuracy under
the other three prompts, averaged over D. Its mean over queries is the table's diagonal mean minus its
off-diagonal mean; the standard error over queries says whether that difference is resolved.
    python benchmarks/eval_dsp_steering.py runs/eval/dsp-endorm --limit 16
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

from endorm.eval import metrics as M
from endorm.eval.cli import read_records
from endorm.eval.data import load_dsp
from endorm.eval.prompts import DSP_DOMAINS, DSP_STYLES


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--limit", type=int, required=True)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    ids = {it.id for it in load_dsp(limit=a.limit, seed=a.seed)}
    scores: dict[str, dict[str, dict[str, list[float]]]] = defaultdict(lambda: defaultdict(dict))
    # acc[method][query][system][domain]: share of the domain's four comparisons won under that system
    acc: dict[str, dict[str, dict[str, dict[str, float]]]] = defaultdict(lambda: defaultdict(dict))
    for run in a.runs:
        for r in read_records(Path(run) / "examples.jsonl"):
            if r["id"] not in ids or r["system"] not in DSP_DOMAINS:
                continue
            if r.get("scores"):
                scores[r["method"]][r["id"]][r["system"]] = r["scores"]
            won: dict[str, list[float]] = defaultdict(list)
            for i, _j, m in r["margins"]:
                won[DSP_STYLES[i]].append(float("nan") if m is None else m)
            acc[r["method"]][r["id"]][r["system"]] = {d: 100 * M.accuracy(won[d]) for d in DSP_DOMAINS}
    out = {}
    for method, per_q in scores.items():
        res = {}
        for d in DSP_DOMAINS:
            k = DSP_STYLES.index(d)

            def rel(s: list[float], k: int = k) -> float:
                return s[k] - sum(s[j] for j in range(len(s)) if j != k) / (len(s) - 1)

            steer, scale = [], []
            for sys_scores in per_q.values():
                if len(sys_scores) < len(DSP_DOMAINS):
                    continue
                own = rel(sys_scores[d])
                others = [rel(sys_scores[x]) for x in DSP_DOMAINS if x != d]
                steer.append(own - sum(others) / len(others))
                scale.append(abs(own))
            res[d] = {"steering_mean": round(sum(steer) / len(steer), 3),
                      "share_positive": round(100 * sum(x > 0 for x in steer) / len(steer), 1),
                      "mean_abs_relative_score": round(sum(scale) / len(scale), 3), "n": len(steer)}
        out[method] = res
    for method, per_q in acc.items():
        lifts = [M.diagonal_lift(by_sys) for by_sys in per_q.values() if len(by_sys) == len(DSP_DOMAINS)]
        out.setdefault(method, {})["diagonal_lift"] = {
            "mean": round(M.mean(lifts), 2), "se": round(M.standard_error(lifts), 2), "n_queries": len(lifts)}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
