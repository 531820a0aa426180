"""How often each method prefers the shorter response in RM-Bench comparisons (a length-bias diagnostic).

Reads the per-example records of finished ``endorm eval --benchmark rm-bench`` runs; scores nothing.
    python benchmarks/eval_length_bias.py runs/eval/rm-endorm runs/eval/rm-judges --limit 5
``--limit k`` keeps the first k items per domain of the seeded order (as ``endorm eval --limit k``).
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

from endorm.eval.cli import read_records
from endorm.eval.data import load_rmbench


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    items = {it.id: it for it in load_rmbench(limit=a.limit or 10**6, seed=a.seed)}
    out: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for run in a.runs:
        for r in read_records(Path(run) / "examples.jsonl"):
            it = items.get(r["id"])
            if it is None:
                continue
            for i, j, m in r["margins"]:
                if m is None or m == 0 or len(it.responses[i]) == len(it.responses[j]):
                    continue
                winner_is_i = m > 0
                shorter_is_i = len(it.responses[i]) < len(it.responses[j])
                out[r["method"]][r["domain"]].append(int(winner_is_i == shorter_is_i))
    res = {m: {d: round(100 * sum(v) / len(v), 1) for d, v in sorted(doms.items())} for m, doms in out.items()}
    for m, doms in out.items():
        allv = [x for v in doms.values() for x in v]
        res[m]["all"] = round(100 * sum(allv) / len(allv), 1)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
