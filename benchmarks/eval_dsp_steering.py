"""Does a DSP system prompt move the reward toward its own domain? (diagnostic; scores nothing)

For each query, domain D and method: s_D(x) = score of D's response minus the mean score of the other
four responses, under system prompt x. Steering(D) = s_D(D's prompt) - mean over the other three
domains' prompts of s_D. Positive means the domain's own prompt raises its response relative to the
rest, even where the shift is too small to flip the accuracy. Reports the mean over queries, the share
of queries where it is positive, and the mean |s_D| for scale.
    python benchmarks/eval_dsp_steering.py runs/eval/dsp-endorm --limit 16
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

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
    for run in a.runs:
        for r in read_records(Path(run) / "examples.jsonl"):
            if r["id"] in ids and r.get("scores") and r["system"] in DSP_DOMAINS:
                scores[r["method"]][r["id"]][r["system"]] = r["scores"]
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
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
