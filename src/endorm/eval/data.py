"""Benchmark loaders: RM-Bench, DSP, generic preference pairs and best-of-N, all into one ``Item`` form.

An ``Item`` is one conversation context (a prompt, or earlier messages), an optional system prompt
and a list of candidate responses; ``comparisons`` lists (winner, loser) response indices whose
order the benchmark expects. Every method scores the same items, and ``metrics`` turns the outcomes
into the benchmark's accuracies.

Sources: a local file (JSON list or JSONL), a directory (RM-Bench: its ``*_filtered.json`` files), or
a Hugging Face hub id (needs ``datasets`` and internet; never used in tests). ``--limit N --seed S``
takes a seeded random subset of N items (per domain for RM-Bench); the subset for a larger N
contains the one for a smaller N, so a run can grow by resuming.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from endorm.chat import Example, Message, RowError
from endorm.eval.prompts import DSP_DOMAINS, DSP_STYLES
from endorm.paths import shared_data_dir

log = logging.getLogger(__name__)

BENCHMARKS = ("rm-bench", "dsp", "pairs", "best-of-n")
RMBENCH_DOMAINS = ("chat", "math", "code", "safety")
RMBENCH_STYLES = ("concise", "detailed", "detailed_markdown")


@dataclass
class Item:
    """One context with candidate responses."""

    id: str
    benchmark: str
    domain: str  # RM-Bench domain; 'dsp' for DSP; the subset (or 'all') for pairs / best-of-n
    context: list[Message]  # messages before the response (no system message)
    responses: list[str]
    comparisons: list[tuple[int, int]] = field(default_factory=list)  # (should win, should lose)
    system: str | None = None
    subset: str | None = None
    best: int | None = None  # best-of-n: index of the correct / preferred response

    def example(self, k: int, system: str | None = None) -> Example:
        """The k-th response as an ``Example``; ``system`` (if given) replaces the item's own."""
        msgs = list(self.context) + [{"role": "assistant", "content": self.responses[k]}]
        return Example(msgs, system if system is not None else self.system, row=f"{self.id} response {k}")


# -- reading sources -------------------------------------------------------------------------------
def _is_hub_id(source: str) -> bool:
    return not Path(source).exists() and source.count("/") == 1 and not source.startswith((".", "/", "~"))


def read_rows(source: str | Path, split: str = "test") -> list[tuple[str, dict[str, Any]]]:
    """Rows of a JSON list / JSONL file, or of a hub dataset split; each with a label for error messages."""
    src = str(source)
    if _is_hub_id(src):
        try:
            from datasets import load_dataset
        except ImportError as e:
            raise ImportError(f"{src!r} is not a local file; loading it from the Hugging Face hub needs "
                              "`pip install datasets` (and internet)") from e
        ds = load_dataset(src, split=split)
        return [(f"{src}[{i}]", dict(r)) for i, r in enumerate(ds)]
    path = Path(src).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json" or text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise RowError(path.name, f"malformed JSON ({e.msg} at line {e.lineno})") from None
        if not isinstance(data, list):
            raise RowError(path.name, f"expected a JSON list of rows, got {type(data).__name__}")
        rows = [(f"{path.name} row {i}", r) for i, r in enumerate(data)]
    else:
        from endorm.io import read_jsonl

        rows = [(f"{path.name} line {n}", r) for n, r in read_jsonl(path)]
    for where, r in rows:
        if not isinstance(r, dict):
            raise RowError(where, f"expected a JSON object, got {type(r).__name__}")
    return rows


def _str(row: dict[str, Any], name: str, where: str) -> str:
    if name not in row:
        raise RowError(where, "missing", name)
    v = row[name]
    if not isinstance(v, str):
        raise RowError(where, f"must be a string, got {type(v).__name__}", name)
    if not v.strip():
        raise RowError(where, "is empty", name)
    return v


def _str_list(row: dict[str, Any], name: str, where: str, n: int | None = None) -> list[str]:
    if name not in row:
        raise RowError(where, "missing", name)
    v = row[name]
    if not isinstance(v, list):
        raise RowError(where, f"must be a list of strings, got {type(v).__name__}", name)
    if not v:
        raise RowError(where, "is an empty list", name)
    if n is not None and len(v) != n:
        raise RowError(where, f"must have {n} entries, got {len(v)}", name)
    for i, x in enumerate(v):
        if not isinstance(x, str):
            raise RowError(where, f"entry {i} must be a string, got {type(x).__name__}", name)
        if not x.strip():
            raise RowError(where, f"entry {i} is empty", name)
    return list(v)


def _context(row: dict[str, Any], where: str) -> tuple[list[Message], str | None]:
    """The conversation before the response: ``prompt`` (a string) or ``messages`` (a list)."""
    system = row.get("system")
    if system is not None and not isinstance(system, str):
        raise RowError(where, f"must be a string, got {type(system).__name__}", "system")
    if "messages" in row:
        msgs = row["messages"]
        if not isinstance(msgs, list) or not msgs:
            raise RowError(where, "must be a non-empty list of {role, content} messages", "messages")
        for i, m in enumerate(msgs):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                raise RowError(where, f"message {i} must be an object with string 'role' and 'content'", "messages")
        msgs = [dict(role=m["role"], content=m["content"]) for m in msgs]
        if msgs[0]["role"] == "system":
            if system is not None:
                raise RowError(where, "both a 'system' field and a system message; give one", "system")
            system, msgs = msgs[0]["content"], msgs[1:]
        if msgs and msgs[-1]["role"] == "assistant":
            raise RowError(where, "must end before the response (the last message is the assistant's)", "messages")
        if not msgs:
            raise RowError(where, "has no user message", "messages")
        return msgs, system
    if "prompt" not in row:
        raise RowError(where, "missing (give 'prompt' or 'messages')", "prompt")
    return [{"role": "user", "content": _str(row, "prompt", where)}], system


def _subsample(items: list[Item], limit: int | None, seed: int) -> list[Item]:
    """A seeded random subset of ``limit`` items, in seeded random order.

    Any prefix of the result is the subset for a smaller limit, so a run stopped part-way (items are
    scored in this order) has completed exactly the ``--limit k`` subset for some k.
    """
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be >= 1, got {limit}")
    if limit is None:
        return items
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    return [items[i] for i in order[:limit]]


def _interleave(groups: list[list[Item]]) -> list[Item]:
    """Round-robin over groups (domains), so a partial run covers every domain evenly."""
    out: list[Item] = []
    for k in range(max((len(g) for g in groups), default=0)):
        out.extend(g[k] for g in groups if k < len(g))
    return out


# -- RM-Bench ------------------------------------------------------------------------------------
def rmbench_domain(row: dict[str, Any], fallback: str | None = None) -> str:
    """RM-Bench domain of a row: its ``domain`` field, else from its ``subset`` / ``id``, else the file name."""
    if isinstance(row.get("domain"), str):
        d = row["domain"].lower()
        return "safety" if d.startswith("safety") else d
    sub = str(row.get("subset", "")).lower()
    if "alpacaeval" in sub or sub == "chat":
        return "chat"
    if "humaneval" in sub or sub == "code":
        return "code"
    if "math" in sub or "prm" in sub:
        return "math"
    if any(k in sub for k in ("xstest", "refusals", "donotanswer", "safety")):
        return "safety"
    rid = str(row.get("id", "")).lower()
    for d in RMBENCH_DOMAINS:
        if rid.startswith(d):
            return d
    if fallback:
        return fallback
    raise ValueError(f"cannot tell the RM-Bench domain of subset {sub!r}")


def _rmbench_file_domain(path: Path) -> str | None:
    stem = path.stem.lower()
    for d in RMBENCH_DOMAINS:
        if stem.startswith(d):
            return d
    return None


def rmbench_files(source: Path) -> list[Path]:
    files = sorted(p for p in source.iterdir() if p.suffix in (".json", ".jsonl"))
    if not files:
        raise FileNotFoundError(f"no RM-Bench .json files in {source}")
    return files


def load_rmbench(
    source: str | Path | None = None,
    domains: tuple[str, ...] | list[str] | None = None,
    limit: int | None = None,
    seed: int = 0,
) -> list[Item]:
    """RM-Bench rows -> items with responses chosen[0..2] + rejected[0..2] and the 3x3 comparisons.

    ``source``: a ``*_filtered.json`` file, a directory of them (default: the shared data), the
    combined ``total_dataset.json``, or the hub id ``THU-KEG/RM-Bench``. ``limit`` is per domain.
    """
    source = source if source is not None else shared_data_dir() / "rm-bench"
    src = Path(str(source)).expanduser()
    paths = rmbench_files(src) if src.is_dir() else [source]
    by_domain: dict[str, list[Item]] = {}
    for p in paths:
        fallback = _rmbench_file_domain(Path(str(p)))
        for where, row in read_rows(p, split="train"):
            dom = rmbench_domain(row, fallback)
            chosen = _str_list(row, "chosen", where, 3)
            rejected = _str_list(row, "rejected", where, 3)
            rid = row.get("id", where)
            item = Item(
                id=f"rm-bench/{dom}/{rid}", benchmark="rm-bench", domain=dom,
                context=[{"role": "user", "content": _str(row, "prompt", where)}],
                responses=chosen + rejected,
                comparisons=[(i, 3 + j) for i in range(3) for j in range(3)],
                subset=str(row.get("subset") or dom),
            )
            by_domain.setdefault(dom, []).append(item)
    wanted = list(domains) if domains else [d for d in RMBENCH_DOMAINS if d in by_domain]
    for d in wanted:
        if d not in RMBENCH_DOMAINS:
            raise ValueError(f"unknown RM-Bench domain {d!r}; choose from {', '.join(RMBENCH_DOMAINS)}")
        if d not in by_domain:
            raise ValueError(f"RM-Bench domain {d!r} is not in {source} (found: {', '.join(sorted(by_domain))})")
    for d in wanted:
        ids = [it.id for it in by_domain[d]]
        if len(set(ids)) != len(ids):  # ids repeat across safety-refuse / safety-response files
            for k, it in enumerate(by_domain[d]):
                it.id = f"{it.id}#{k}"
    if limit is None:
        return [it for d in wanted for it in by_domain[d]]
    return _interleave([_subsample(by_domain[d], limit, seed) for d in wanted])


# -- DSP -------------------------------------------------------------------------------------------
def dsp_comparisons(domain: str) -> list[tuple[int, int]]:
    """Pairs (the domain's response, each other style's response) as indices into ``DSP_STYLES``."""
    w = DSP_STYLES.index(domain)
    return [(w, k) for k in range(len(DSP_STYLES)) if k != w]


def load_dsp(source: str | Path | None = None, limit: int | None = None, seed: int = 0) -> list[Item]:
    """DSP rows ``{query, responses: {academy, business, entertainment, literature, normal}}`` -> items.

    The item's responses follow ``DSP_STYLES``; its comparisons are those of all four domains (the
    evaluation picks a domain's four with ``dsp_comparisons``).
    """
    source = source if source is not None else shared_data_dir() / "dsp" / "domain_specific_preference.test.json"
    items = []
    for k, (where, row) in enumerate(read_rows(source)):
        query = _str(row, "query", where)
        resp = row.get("responses")
        if not isinstance(resp, dict):
            raise RowError(where, f"must be an object with the keys {', '.join(DSP_STYLES)}", "responses")
        if any(isinstance(resp.get(s), str) and not resp[s].strip() for s in DSP_STYLES):
            # the published test set has one such row (row 60, an empty 'normal' answer): an empty
            # response cannot be scored, so the query is left out (660 of 661 remain)
            log.warning("%s: a response is empty; query left out", where)
            continue
        responses = [_str(resp, s, f"{where}, field 'responses'") for s in DSP_STYLES]
        items.append(Item(
            id=f"dsp/{k}", benchmark="dsp", domain="dsp", context=[{"role": "user", "content": query}],
            responses=responses, comparisons=[c for d in DSP_DOMAINS for c in dsp_comparisons(d)],
        ))
    return _subsample(items, limit, seed)


# -- generic pairs and best-of-N -------------------------------------------------------------------
def load_pairs(source: str | Path, limit: int | None = None, seed: int = 0, split: str = "test") -> list[Item]:
    """``{prompt | messages, chosen, rejected}`` rows (optional ``system``, ``subset``, ``id``) -> items.

    RewardBench subsets, Multifaceted-Bench (a ``system`` per row) and a user's own data all fit.
    """
    items = []
    for k, (where, row) in enumerate(read_rows(source, split=split)):
        context, system = _context(row, where)
        chosen, rejected = _str(row, "chosen", where), _str(row, "rejected", where)
        subset = row.get("subset")
        subset = str(subset) if subset is not None else None
        items.append(Item(
            id=f"pairs/{row.get('id', k)}", benchmark="pairs", domain=subset or "all", context=context,
            responses=[chosen, rejected], comparisons=[(0, 1)], system=system, subset=subset,
        ))
    _unique_ids(items)
    return _subsample(items, limit, seed)


def load_best_of_n(source: str | Path, limit: int | None = None, seed: int = 0, split: str = "test") -> list[Item]:
    """Best-of-N rows -> items. Two layouts:

    - ``{prompt | messages, candidates: [...], best: int}`` (``responses`` / ``correct`` also accepted);
    - RewardBench 2: ``{prompt, chosen: [one], rejected: [several]}`` (the chosen one is the best).
    """
    items = []
    for k, (where, row) in enumerate(read_rows(source, split=split)):
        context, system = _context(row, where)
        if isinstance(row.get("chosen"), list):
            chosen = _str_list(row, "chosen", where)
            if len(chosen) != 1:
                raise RowError(where, f"best-of-N needs exactly one chosen response, got {len(chosen)}", "chosen")
            cands, best = chosen + _str_list(row, "rejected", where), 0
        else:
            name = "candidates" if "candidates" in row else "responses"
            cands = _str_list(row, name, where)
            key = "best" if "best" in row else "correct"
            if key not in row:
                raise RowError(where, "missing (the index of the correct candidate)", "best")
            best = row[key]
            if isinstance(best, bool) or not isinstance(best, int):
                raise RowError(where, f"must be an integer index, got {type(best).__name__}", key)
            if not 0 <= best < len(cands):
                raise RowError(where, f"index {best} is outside the {len(cands)} candidates", key)
        if len(cands) < 2:
            raise RowError(where, "needs at least two candidates", "candidates")
        subset = row.get("subset")
        subset = str(subset) if subset is not None else None
        items.append(Item(
            id=f"best-of-n/{row.get('id', k)}", benchmark="best-of-n", domain=subset or "all", context=context,
            responses=cands, comparisons=[(best, j) for j in range(len(cands)) if j != best], system=system,
            subset=subset, best=best,
        ))
    _unique_ids(items)
    return _subsample(items, limit, seed)


def _unique_ids(items: list[Item]) -> None:
    seen: set[str] = set()
    for it in items:
        if it.id in seen:
            raise RowError(it.id, "duplicate id", "id")
        seen.add(it.id)


def load_benchmark(
    benchmark: str,
    source: str | Path | None = None,
    domains: list[str] | None = None,
    limit: int | None = None,
    seed: int = 0,
) -> list[Item]:
    if benchmark == "rm-bench":
        return load_rmbench(source, domains, limit, seed)
    if benchmark == "dsp":
        return load_dsp(source, limit, seed)
    if source is None:
        raise ValueError(f"--data is required for --benchmark {benchmark}")
    if benchmark == "pairs":
        return load_pairs(source, limit, seed)
    if benchmark == "best-of-n":
        return load_best_of_n(source, limit, seed)
    raise ValueError(f"unknown benchmark {benchmark!r}; choose one of {', '.join(BENCHMARKS)}")
