"""How often math-verify (endorm's grader, ``endorm.mathx.grading.grade``) and endorm's own grader
(``fallback_grade``, the grader before math-verify) disagree.

Two kinds of text are graded against each set's reference answer (as ``endorm math-eval`` loads it):
- ``boxed``: the reference itself re-rendered as a model would end an answer,
  ``The final answer is $\\boxed{<reference>}$.`` (a grader should accept every one);
- ``other``: the next problem's reference rendered the same way (a grader should reject nearly all: only
  equal answers, e.g. two problems whose answer is 2, should pass);
- ``solution``: the set's own worked solution, where its final answer is marked (``\\boxed{}`` in MATH-500,
  AIME24 and Minerva, ``#### N`` in GSM8K; OlympiadBench's solutions mark none and AMC23 has none), so a
  grader should accept nearly all (the reference of GSM8K and Minerva is read from that same text);
- model outputs: every completion in math-eval JSONL records (``{"answer", "completions": [...]}``, as
  ``endorm math-eval`` writes them), given with ``--completions``.

A disagreement is a text one grader accepts and the other rejects. Where math-verify cannot decide (it
raised, timed out or extracted nothing) ``grade`` uses the old grader, so the two agree by construction:
those rows are counted apart (``fallback``). Prints a table and writes a JSON summary with examples:

    python benchmarks/grader_agreement.py --out records/grader_agreement/summary.json \\
        [--completions runs/math-eval/*/gsm8k.jsonl ...] [--sets gsm8k,math500] [--limit 50]
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from endorm.mathx.data import BENCHMARKS, load_benchmark
from endorm.mathx.grading import extract_answer, fallback_grade, grade_verdict
from endorm.paths import shared_data_dir

SETS = ["gsm8k", "math500", "aime24", "amc23", "minerva", "olympiadbench"]
SOLUTION_FIELD = {"gsm8k": "answer", "math500": "solution", "aime24": "solution", "minerva": "solution"}
N_EXAMPLES = 8


def boxed(reference: str) -> str:
    return f"The final answer is $\\boxed{{{reference}}}$."


def _mv_extracted(text: str) -> str | None:
    """What math-verify extracted from ``text`` (its string form), for the examples only."""
    from math_verify import parse

    got = parse(text)
    return str(got[-1]) if got else None


def compare(items: Iterable[tuple[str, str, str]]) -> dict[str, Any]:
    """Grade (id, text, reference) triples with both graders: counts, fallback reasons, examples."""
    n = mv_yes = ours_yes = both = 0
    fallback: Counter[str] = Counter()
    only: dict[str, list[dict[str, Any]]] = {"math_verify": [], "ours": []}
    n_only = Counter()
    for rid, text, ref in items:
        v = grade_verdict(text, ref)
        ours = fallback_grade(text, ref)
        n += 1
        mv_yes += v.correct
        ours_yes += ours
        both += v.correct and ours
        if v.grader == "fallback":
            fallback[v.reason or "?"] += 1
        if v.correct != ours:
            side = "math_verify" if v.correct else "ours"
            n_only[side] += 1
            if len(only[side]) < N_EXAMPLES:
                only[side].append({"id": rid, "reference": ref, "text_end": text[-160:],
                                   "math_verify_extracted": _mv_extracted(text),
                                   "ours_extracted": extract_answer(text)})
    dis = n_only["math_verify"] + n_only["ours"]
    return {"n": n, "math_verify_accepts": mv_yes, "ours_accepts": ours_yes, "both_accept": both,
            "only_math_verify_accepts": n_only["math_verify"], "only_ours_accepts": n_only["ours"],
            "disagree": dis, "disagree_pct": round(100 * dis / n, 2) if n else None,
            "fallback": sum(fallback.values()), "fallback_reasons": dict(fallback),
            "examples_only_math_verify": only["math_verify"], "examples_only_ours": only["ours"]}


def _raw_rows(name: str) -> list[dict[str, Any]]:
    path = shared_data_dir() / BENCHMARKS[name]
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def reference_checks(name: str, limit: int | None) -> dict[str, Any]:
    problems = load_benchmark(name)  # all rows, file order, so they line up with the raw rows
    raw = _raw_rows(name)
    assert len(raw) == len(problems), name
    keep = range(min(limit, len(problems))) if limit else range(len(problems))
    out = {"boxed": compare((problems[i].id, boxed(problems[i].answer), problems[i].answer) for i in keep)}
    nxt = [(i + 1) % len(keep) for i in range(len(keep))]
    out["other"] = compare((problems[i].id, boxed(problems[nxt[i]].answer), problems[i].answer) for i in keep)
    field = SOLUTION_FIELD.get(name)
    if field:
        out["solution"] = compare((problems[i].id, str(raw[i][field]), problems[i].answer) for i in keep
                                  if raw[i].get(field))
    return out


def completion_triples(paths: list[Path]) -> Iterator[tuple[str, str, str]]:
    for path in paths:
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            r = json.loads(line)
            if "answer" not in r or not isinstance(r.get("completions"), list):
                raise ValueError(f"{path}:{lineno}: a math-eval record needs 'answer' and a list 'completions'")
            for k, c in enumerate(r["completions"]):
                yield f"{path.name}:{r.get('id', lineno)}#{k}", str(c), str(r["answer"])


def _row(label: str, s: dict[str, Any]) -> str:
    return (f"| {label} | {s['n']} | {s['math_verify_accepts']} | {s['ours_accepts']} | "
            f"{s['only_math_verify_accepts']} | {s['only_ours_accepts']} | {s['disagree_pct']} | {s['fallback']} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", default=",".join(SETS), help="comma-separated math sets (endorm.mathx.data names)")
    ap.add_argument("--limit", type=int, default=None, help="first N problems per set (quick check)")
    ap.add_argument("--completions", nargs="*", default=[], help="math-eval JSONL files of model outputs")
    ap.add_argument("--out", default=None, help="write the JSON summary here")
    a = ap.parse_args()
    t0 = time.monotonic()
    summary: dict[str, Any] = {"references": {}, "completions": None}
    lines = ["| set / check | n | math-verify accepts | ours accepts | only math-verify | only ours | "
             "disagree % | fallback |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name in [s for s in a.sets.split(",") if s]:
        res = reference_checks(name, a.limit)
        summary["references"][name] = res
        lines += [_row(f"{name} {check}", s) for check, s in res.items()]
    if a.completions:
        paths = [Path(p) for p in a.completions]
        res = compare(completion_triples(paths))
        summary["completions"] = {"files": [str(p) for p in paths], **res}
        lines.append(_row("model outputs", res))
    from importlib.metadata import version

    summary["math_verify_version"] = version("math-verify")
    summary["limit"] = a.limit
    summary["seconds"] = round(time.monotonic() - t0, 1)
    print("\n".join(lines))
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(summary, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
