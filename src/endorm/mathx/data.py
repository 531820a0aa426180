"""Loaders for the math evaluation sets in ``../shared/data`` (GSM8K, MATH-500, AIME24, AMC23, Minerva,
OlympiadBench): one :class:`MathProblem` per row whatever the set's own field names.

Field mapping (read from the files themselves):
- gsm8k/{train,test}.jsonl: ``question``; the answer is the text after ``####`` in ``answer``.
- math/math500.jsonl: ``problem``, ``answer``.
- math/aime24.jsonl: ``problem``, ``answer`` (string).   math/amc23.jsonl: ``question``, ``answer`` (float).
- math/minerva_math.jsonl: ``problem``; the answer is the last ``\\boxed{}`` in ``solution``.
- math/olympiadbench.jsonl: ``question`` (with ``context`` prepended when set), ``final_answer`` (a list;
  several entries are joined with ", ", as the set's ``is_multiple_answer`` means an ordered list).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from endorm.mathx.grading import extract_boxed, extract_hash_answer

__all__ = ["MathProblem", "BENCHMARKS", "TABLE3_BENCHMARKS", "load_benchmark", "select_subset"]


@dataclass(frozen=True)
class MathProblem:
    """One problem: ``question`` to prompt with and the reference final ``answer`` (a string)."""

    id: str
    question: str
    answer: str
    source: str


# name -> file under the shared data dir
BENCHMARKS: dict[str, str] = {
    "gsm8k": "gsm8k/test.jsonl",
    "gsm8k-train": "gsm8k/train.jsonl",
    "math500": "math/math500.jsonl",
    "aime24": "math/aime24.jsonl",
    "amc23": "math/amc23.jsonl",
    "minerva": "math/minerva_math.jsonl",
    "olympiadbench": "math/olympiadbench.jsonl",
}

# the columns of the paper's Table 3, in order
TABLE3_BENCHMARKS = ["aime24", "amc23", "math500", "minerva", "olympiadbench"]


def _first(row: dict, keys: tuple[str, ...], where: str) -> object:
    for k in keys:
        if row.get(k) not in (None, "", []):
            return row[k]
    raise ValueError(f"{where}: none of the fields {', '.join(keys)} is present (have: {', '.join(sorted(row))})")


def _fmt_number(x: object) -> str:
    if isinstance(x, float) and x.is_integer():
        return str(int(x))
    return str(x)


def _strip_dollars(s: str) -> str:
    s = s.strip()
    while s.startswith("$") and s.endswith("$") and len(s) >= 2:
        s = s[1:-1].strip()
    return s


def _row_to_problem(name: str, row: dict, where: str) -> MathProblem:
    rid = str(row.get("id", row.get("idx", row.get("unique_id", where.rsplit(":", 1)[-1]))))
    if name.startswith("gsm8k"):
        q = str(_first(row, ("question",), where))
        ans = extract_hash_answer(str(_first(row, ("answer",), where)))
        if ans is None:
            raise ValueError(f"{where}: field 'answer' has no '#### <answer>' line")
        return MathProblem(rid, q, ans.replace(",", ""), name)
    if name == "minerva":
        q = str(_first(row, ("problem", "question"), where))
        ans = extract_boxed(str(_first(row, ("solution",), where)))
        if ans is None:
            raise ValueError(f"{where}: field 'solution' has no \\boxed{{}} answer")
        return MathProblem(rid, q, ans, name)
    if name == "olympiadbench":
        q = str(_first(row, ("question", "problem"), where))
        if row.get("context"):
            q = f"{row['context']}\n\n{q}"
        fa = _first(row, ("final_answer", "answer"), where)
        parts = fa if isinstance(fa, list) else [fa]
        ans = ", ".join(_strip_dollars(str(p)) for p in parts)
        return MathProblem(rid, q, ans, name)
    q = str(_first(row, ("problem", "question"), where))
    ans = _first(row, ("answer", "final_answer"), where)
    return MathProblem(rid, q, _strip_dollars(_fmt_number(ans)), name)


def select_subset(items: list, limit: int | None, seed: int | None) -> list:
    """``limit`` items: a seeded random sample when ``seed`` is set (order kept), else the first ``limit``."""
    if limit is None or limit <= 0 or limit >= len(items):
        return list(items)
    if seed is None:
        return list(items[:limit])
    idx = sorted(random.Random(seed).sample(range(len(items)), limit))
    return [items[i] for i in idx]


def load_benchmark(
    name: str, data_dir: str | Path | None = None, limit: int | None = None, seed: int | None = None
) -> list[MathProblem]:
    """Load a benchmark by name (see ``BENCHMARKS``) or from a JSONL path; ``limit``/``seed`` pick a subset."""
    path = Path(name)
    if name in BENCHMARKS:
        if data_dir is None:
            from endorm.paths import shared_data_dir

            data_dir = shared_data_dir()
        path = Path(data_dir) / BENCHMARKS[name]
        kind = name
    elif path.suffix == ".jsonl":
        kind = "gsm8k" if "gsm8k" in path.name else path.stem
    else:
        raise ValueError(f"unknown benchmark {name!r}: use one of {', '.join(BENCHMARKS)} or a .jsonl path")
    if not path.exists():
        raise FileNotFoundError(f"{path} not found (set ENDORM_DATA to the folder holding gsm8k/ and math/)")
    problems = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: invalid JSON ({e})") from e
            if not isinstance(row, dict):
                raise ValueError(f"{where}: expected a JSON object")
            problems.append(_row_to_problem(kind, row, where))
    return select_subset(problems, limit, seed)
