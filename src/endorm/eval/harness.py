"""The evaluation loop: every method scores the same items in batches; each (method, item, system)
becomes one JSONL record with every score, written as soon as it is done, so a run resumes."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from endorm.chat import Example
from endorm.eval.data import Item, dsp_comparisons
from endorm.eval.methods import EndoRMMethod, Method, StatsMemo
from endorm.eval.metrics import best_of_n_credit, margin
from endorm.eval.prompts import DSP_DOMAINS, DSP_SYSTEM_PROMPTS
from endorm.stats_file import ID_FIELD, StatsWriter


def read_records(path: Path) -> list[dict[str, Any]]:
    """Finished records; a last line still being written (no newline yet) is not one."""
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")[:-1]  # everything after the last newline is unfinished
    return [json.loads(line) for line in lines if line.strip()]


def record_key(method: str, item_id: str, system: str | None) -> str:
    return f"{method}|{item_id}|{system or ''}"


def _nan_none(xs: Sequence[float]) -> list[float | None]:
    return [None if x != x else x for x in xs]


def _unordered(comparisons: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    return sorted({(min(i, j), max(i, j)) for i, j in comparisons})


def score_item_group(
    method: Method, items: Sequence[Item], system_name: str | None, system_text: str | None,
    stats_writer: StatsWriter | None = None,
) -> list[dict[str, Any]]:
    """Score a batch of items under one system prompt; one record per item.

    With ``stats_writer``, the ``endorm`` method's per-token arrays (every context it computed) go to the
    sidecar first, and each record gets ``token_stats = {context: [[offset, n, crc32] per response]}`` and
    ``token_stats_id`` (the sidecar's id; see ``endorm.stats_file``).
    """
    sys = lambda it: system_text if system_text is not None else it.system  # noqa: E731
    examples: list[Example] = [it.example(k, sys(it)) for it in items for k in range(len(it.responses))]
    records = []
    if not method.pairwise:
        refs: dict[str, list[list[int]]] | None = None
        if stats_writer is not None and isinstance(method, EndoRMMethod):
            scores, stats = method.score_with_stats(examples)
            refs = {ctx: stats_writer.write(lst) for ctx, lst in stats.items()}
        else:
            scores = method.score(examples)
        pos = 0
        for it in items:
            n = len(it.responses)
            rec = _record(method, it, system_name, scores=scores[pos : pos + n])
            if refs is not None:
                rec["token_stats"] = {ctx: r[pos : pos + n] for ctx, r in refs.items()}
                rec[ID_FIELD] = stats_writer.id
            pos += n
            records.append(rec)
        return records
    # pairwise: each unordered pair once (P(b > a) = 1 - P(a > b) by the both-orders average)
    need = []
    for it in items:
        pairs = (list(itertools.combinations(range(len(it.responses)), 2)) if it.benchmark == "best-of-n"
                 else _unordered(_item_comparisons(it, system_name)))
        need.append(pairs)
    flat = [(it.example(i, sys(it)), it.example(j, sys(it))) for it, pairs in zip(items, need, strict=True)
            for i, j in pairs]
    probs = method.compare(flat)
    pos = 0
    for it, pairs in zip(items, need, strict=True):
        p = {pair: probs[pos + k] for k, pair in enumerate(pairs)}
        pos += len(pairs)
        records.append(_record(method, it, system_name, pair_probs=p))
    return records


def _item_comparisons(it: Item, system_name: str | None) -> list[tuple[int, int]]:
    if it.benchmark == "dsp":  # every domain's four comparisons, whatever the system prompt
        return [c for d in DSP_DOMAINS for c in dsp_comparisons(d)]
    return list(it.comparisons)


def _record(method: Method, it: Item, system_name: str | None, scores: Sequence[float] | None = None,
            pair_probs: dict[tuple[int, int], float] | None = None) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "key": record_key(method.name, it.id, system_name), "method": method.name, "benchmark": it.benchmark,
        "id": it.id, "domain": it.domain, "subset": it.subset, "system": system_name,
    }
    comps = _item_comparisons(it, system_name)
    if scores is not None:
        rec["scores"] = _nan_none(scores)
        rec["margins"] = [[i, j, _nan_none([margin(scores[i], scores[j])])[0]] for i, j in comps]
    else:
        assert pair_probs is not None

        def pref(i: int, j: int) -> float:  # P(i preferred over j)
            return pair_probs[(i, j)] if (i, j) in pair_probs else 1.0 - pair_probs[(j, i)]

        rec["pair_probs"] = [[i, j, p] for (i, j), p in sorted(pair_probs.items())]
        rec["margins"] = [[i, j, pref(i, j) - 0.5] for i, j in comps]
        if it.benchmark == "best-of-n":  # round robin: a candidate's score is its summed win probability
            n = len(it.responses)
            rec["scores"] = [sum(pref(i, j) for j in range(n) if j != i) for i in range(n)]
    if it.benchmark == "best-of-n":
        rec["best"] = it.best
        rec["credit"] = best_of_n_credit(rec["scores"], it.best)  # type: ignore[arg-type]
    return rec


def systems_for(items: Sequence[Item], dsp_systems: Sequence[str]) -> list[tuple[str | None, str | None]]:
    """(name, text) of each system prompt a benchmark is scored under: DSP's domains, else the items' own."""
    if items and items[0].benchmark == "dsp":
        out: list[tuple[str | None, str | None]] = []
        for s in dsp_systems:
            if s == "none":
                out.append(("none", None))
            elif s in DSP_SYSTEM_PROMPTS:
                out.append((s, DSP_SYSTEM_PROMPTS[s]))
            else:
                raise ValueError(f"unknown DSP system prompt {s!r}; choose from {', '.join(DSP_DOMAINS)}, none")
        return out
    return [(None, None)]


def evaluate(
    methods: Sequence[Method],
    items: Sequence[Item],
    done: set[str],
    write: Callable[[list[dict[str, Any]]], None],
    items_per_batch: int = 4,
    dsp_systems: Sequence[str] = DSP_DOMAINS,
    memo: StatsMemo | None = None,
    progress: bool = True,
    stats_writer: StatsWriter | None = None,
) -> int:
    """Score every (method, item, system) not in ``done``; ``write`` receives each finished batch.

    Returns the number of new records. Items go in batches, all methods on a batch before the next,
    so methods that need the same forward pass share it through ``memo``.
    """
    from tqdm.auto import tqdm

    systems = systems_for(items, dsp_systems)
    todo = [(m, it, s) for it in items for s in systems for m in methods
            if record_key(m.name, it.id, s[0]) not in done]
    bar = tqdm(total=len(todo), disable=not progress, desc="eval", unit="rec")
    new = 0
    for b in range(0, len(items), items_per_batch):
        batch = items[b : b + items_per_batch]
        for name, text in systems:
            for m in methods:
                todo_items = [it for it in batch if record_key(m.name, it.id, name) not in done]
                if not todo_items:
                    continue
                t0 = time.perf_counter()
                recs = score_item_group(m, todo_items, name, text, stats_writer)
                dt = time.perf_counter() - t0
                for r in recs:
                    r["elapsed_s"] = round(dt / len(recs), 3)
                write(recs)
                new += len(recs)
                bar.update(len(recs))
        if memo is not None:
            memo.clear()
    bar.close()
    return new
