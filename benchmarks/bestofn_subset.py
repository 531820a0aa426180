"""Best-of-N of a finished run, restricted to the problems of another run (docs/RESULTS.md, "The third model").

Compares two models on the same problems without resampling: the 0.5B model sampled 200 seeded GSM8K problems,
the 1.5B model a 50-problem subset of them (same seed), so the 0.5B's figures on those 50 come from its records.
The summary is ``endorm.mathx.bestofn.summarize`` on the kept problems, printed as ``endorm math-eval`` prints it.

    python benchmarks/bestofn_subset.py --run records/bestofn/n8-gsm8k200/qwen2.5-coder-0.5b-instruct \
        --ids_from records/bestofn/n8-gsm8k50/qwen2.5-coder-1.5b-instruct/gsm8k.jsonl \
        --greedy records/bestofn/greedy768-gsm8k200/qwen2.5-coder-0.5b-instruct/gsm8k.jsonl
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from endorm.io import read_jsonl
from endorm.mathx.bestofn import format_summary, summarize


def _jsonl(path: Path) -> list[dict]:
    # endorm's reader: a malformed line raises an error naming the file and line
    return [row for _, row in read_jsonl(path)]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, required=True, help="a math-eval --num_samples folder (samples and scores)")
    p.add_argument("--bench", default="gsm8k", help="benchmark name: <bench>.jsonl and <bench>.scores.jsonl")
    p.add_argument("--ids_from", type=Path, required=True, help="JSONL whose rows' ids are the problems to keep")
    p.add_argument("--greedy", type=Path, help="greedy records of --run's model (the greedy baseline)")
    p.add_argument("--json", type=Path, help="write the summary here")
    a = p.parse_args(argv)
    keep = {r["id"] for r in _jsonl(a.ids_from)}
    if not keep:
        raise SystemExit(f"{a.ids_from} holds no problems")
    records = _jsonl(a.run / f"{a.bench}.jsonl")
    scores = {s["id"]: s["scores"] for s in _jsonl(a.run / f"{a.bench}.scores.jsonl")}
    missing = keep - {r["id"] for r in records}
    if missing:
        raise SystemExit(f"{len(missing)} problems of {a.ids_from} are not in {a.run} (e.g. {sorted(missing)[0]!r})")
    unscored = [r["id"] for r in records if r["id"] in keep and r["id"] not in scores]
    if unscored:
        raise SystemExit(f"{len(unscored)} kept problems have no scores in {a.run} (e.g. {unscored[0]!r})")
    records = [r for r in records if r["id"] in keep]
    forms = list(scores[records[0]["id"]])
    greedy = _jsonl(a.greedy) if a.greedy else None
    summary = summarize(records, [{"id": r["id"], **scores[r["id"]]} for r in records], forms, greedy)
    print(format_summary(summary, "all"))
    if a.json:
        a.json.write_text(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    main()
