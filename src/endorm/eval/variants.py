"""Every form of the endogenous reward from one forward pass: aggregation x gamma x contrast.

``endorm eval`` keeps, for every response the ``endorm`` method scores, its per-token log pi and V(s_t)
(``endorm.stats_file``), and with ``--contrast prompt|system`` the same arrays under the contrast
context. A *variant* is one way to turn them into a score:

    aggregation  sum | mean | discounted | logprob            (``endorm.rewards.aggregate``)
    gamma        the discount of 'discounted' and 'logprob'   (ignored by sum and mean)
    contrast     none | prompt | system                       R(y | x) - R(y | contrast context)

``reaggregate`` re-scores a finished run under any list of variants without a model, summarises
each like ``endorm eval`` does, on the pre-registered dev and test halves of the items
(``split_of``), with the length-bias diagnostic (the share of decided comparisons that the shorter
response wins), and ``select`` applies the pre-registered rule (docs/RESULTS.md) to the dev half.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from endorm import rewards as R
from endorm.chat import CONTRASTS
from endorm.eval import metrics as M
from endorm.eval.harness import read_records
from endorm.eval.prompts import DSP_DOMAINS, DSP_STYLES
from endorm.eval.report import _f, _nan_to_none, dsp_matrix, summarize
from endorm.reward_model import RewardConfig
from endorm.stats_file import StatsReader

DEFAULT_GAMMAS = (1.0, 0.99, 0.97, 0.95, 0.93, 0.9, 0.85, 0.8)
STATS_FILE = "token_stats.f32"
SPLIT_SALT = "endorm-split-v1"  # part of the pre-registered rule: never change it


@dataclass(frozen=True)
class Variant:
    aggregation: str
    gamma: float = 1.0
    contrast: str = "none"

    def __post_init__(self) -> None:
        if self.aggregation not in R.AGGREGATIONS:
            raise ValueError(f"unknown aggregation {self.aggregation!r}; choose from {', '.join(R.AGGREGATIONS)}")
        if not 0 < self.gamma <= 1:
            raise ValueError(f"gamma must be in (0, 1], got {self.gamma}")
        if self.contrast not in CONTRASTS:
            raise ValueError(f"unknown contrast {self.contrast!r}; choose from {', '.join(CONTRASTS)}")

    @property
    def name(self) -> str:
        """``sum``, ``discounted@0.93``, ``mean:prompt`` (the contrast after a colon)."""
        base = self.aggregation if self.aggregation in ("sum", "mean") else f"{self.aggregation}@{self.gamma:g}"
        return base if self.contrast == "none" else f"{base}:{self.contrast}"

    @classmethod
    def parse(cls, name: str) -> Variant:
        base, _, contrast = name.partition(":")
        agg, _, g = base.partition("@")
        return cls(agg, float(g) if g else 1.0, contrast or "none")


def parse_list(spec: Any, kind: type = str) -> list[Any]:
    """'a,b' or a YAML list or a single number -> list of ``kind``."""
    if isinstance(spec, (list, tuple)):
        items = list(spec)
    elif isinstance(spec, (int, float)):
        items = [spec]
    else:
        items = [x.strip() for x in str(spec).split(",") if x.strip()]
    try:
        return [kind(x) for x in items]
    except ValueError as e:
        raise ValueError(f"cannot read {spec!r} as a comma-separated list of {kind.__name__}: {e}") from None


def expand(aggregations: Any, gammas: Any = DEFAULT_GAMMAS, contrasts: Any = ("none",)) -> list[Variant]:
    """Every combination; 'all' means every aggregation (or every contrast). discounted@1 is sum, so it
    is left out whenever sum is in the list."""
    aggs = parse_list(aggregations)
    aggs = list(R.AGGREGATIONS) if aggs == ["all"] else aggs
    gs = parse_list(gammas, float)
    cs = parse_list(contrasts)
    cs = list(CONTRASTS) if cs == ["all"] else cs
    out: list[Variant] = []
    for c in cs:
        for a in aggs:
            for g in (gs if a in ("discounted", "logprob") else [1.0]):
                if a == "discounted" and g == 1.0 and "sum" in aggs:
                    continue
                v = Variant(a, g, c)
                if v not in out:
                    out.append(v)
    if not out:
        raise ValueError("no variants: give at least one aggregation")
    return out


def primary(aggregations: Any, gammas: Any, contrasts: Any) -> Variant:
    """The variant of a run's main-table ``endorm`` row: the first aggregation, gamma and contrast listed."""
    aggs, cons = parse_list(aggregations), parse_list(contrasts)
    agg = RewardConfig.aggregation if aggs == ["all"] else aggs[0]
    return Variant(agg, parse_list(gammas, float)[0], "none" if cons == ["all"] else cons[0])


def split_of(item_id: str) -> str:
    """'dev' or 'test', fixed by a hash of the item id (pre-registered: half the items each, by chance)."""
    return "dev" if hashlib.sha256(f"{SPLIT_SALT}:{item_id}".encode()).digest()[0] % 2 == 0 else "test"


def scores_for(arrays: dict[str, list[tuple[torch.Tensor, torch.Tensor]]], variants: Sequence[Variant],
               alpha: float) -> dict[Variant, list[float]]:
    """Each variant's scores of an item's responses.

    Args: arrays[context] = [(log pi [n], V [n]) per response], context 'plain' and any contrast.
    """
    cache: dict[tuple[str, str, float], list[float]] = {}

    def plain(ctx: str, agg: str, gamma: float) -> list[float]:
        key = (ctx, agg, gamma)
        if key not in cache:
            cache[key] = [float(R.outcome(lp, v, agg, gamma, alpha)[1]) for lp, v in arrays[ctx]]
        return cache[key]

    out = {}
    for var in variants:
        s = plain("plain", var.aggregation, var.gamma)
        if var.contrast != "none":
            if var.contrast not in arrays:
                raise ValueError(f"variant {var.name} needs the '{var.contrast}' contrast arrays; rerun "
                                 f"endorm eval with --contrast {var.contrast}")
            s = [a - b for a, b in zip(s, plain(var.contrast, var.aggregation, var.gamma), strict=True)]
        out[var] = s
    return out


def variant_records(run_dir: str | Path, variants: Sequence[Variant]) -> tuple[dict[Variant, list[dict]], dict]:
    """Records of the run's ``endorm`` method re-scored under each variant (no model)."""
    run_dir = Path(run_dir)
    settings = json.loads((run_dir / "settings.json").read_text())
    reader = StatsReader(run_dir / STATS_FILE)
    alpha = float(settings.get("alpha", 1.0))
    out: dict[Variant, list[dict]] = {v: [] for v in variants}
    recs = [r for r in read_records(run_dir / "examples.jsonl") if r["method"] == "endorm"]
    if not recs:
        raise ValueError(f"{run_dir}: no endorm records to re-aggregate")
    for rec in recs:
        refs = rec.get("token_stats")
        if not refs:
            raise ValueError(f"{run_dir}: record {rec['key']} has no token stats (run made before they were kept)")
        arrays = reader.arrays(rec, f"{run_dir / 'examples.jsonl'}, record {rec['key']}")
        lengths = [ref[1] for ref in refs["plain"]]
        for var, s in scores_for(arrays, variants, alpha).items():
            new = {k: v for k, v in rec.items() if k not in ("token_stats", "pair_probs")}
            new.update(method=var.name, scores=s, lengths=lengths,
                       margins=[[i, j, M.margin(s[i], s[j])] for i, j, _ in rec["margins"]])
            if rec["benchmark"] == "best-of-n":
                new["credit"] = M.best_of_n_credit(s, rec["best"])
            out[var].append(new)
    return out, settings


def shorter_counts(rec: dict, lengths: Sequence[int] | None = None) -> tuple[int, int]:
    """One record's (comparisons won by the shorter response, decided comparisons of responses of different
    length in tokens). ``lengths``: the responses' token counts, default the record's own ``lengths``."""
    n = rec["lengths"] if lengths is None else lengths
    won = decided = 0
    for i, j, m in rec["margins"]:
        if m is None or m == 0 or math.isnan(m) or n[i] == n[j]:
            continue
        decided += 1
        won += (m > 0) == (n[i] < n[j])
    return won, decided


def shorter_wins(recs: Sequence[dict]) -> tuple[float, int]:
    """Share (%) of decided comparisons of responses of different length (tokens) won by the shorter one."""
    counts = [shorter_counts(r) for r in recs]
    won, decided = sum(w for w, _ in counts), sum(d for _, d in counts)
    return (100 * won / decided if decided else float("nan")), decided


def dsp_lift(recs: Sequence[dict]) -> tuple[float, float, int]:
    """Diagonal lift (accuracy points) of the own-domain system prompt: mean and s.e. over queries."""
    acc: dict[str, dict[str, dict[str, float]]] = defaultdict(dict)
    for r in recs:
        if r["system"] not in DSP_DOMAINS:
            continue
        won: dict[str, list[float]] = defaultdict(list)
        for i, _j, m in r["margins"]:
            won[DSP_STYLES[i]].append(float("nan") if m is None else m)
        acc[r["id"]][r["system"]] = {d: 100 * M.accuracy(won[d]) for d in DSP_DOMAINS}
    lifts = [M.diagonal_lift(by_sys) for by_sys in acc.values() if len(by_sys) == len(DSP_DOMAINS)]
    return M.mean(lifts), M.standard_error(lifts), len(lifts)


def paired_difference(recs: Sequence[dict], ref: Sequence[dict]) -> tuple[float, float, int]:
    """Accuracy of ``recs`` minus that of ``ref`` on the same items (points): the mean over domains of each
    domain's mean per-item difference, and its standard error (domains combined as in ``summarize``)."""
    acc = lambda r: M.accuracy([M.nan_none(m) for _, _, m in r["margins"]])  # noqa: E731
    base = {r["id"]: acc(r) for r in ref}
    by_dom: dict[str, list[float]] = defaultdict(list)
    for r in recs:
        if r["id"] in base:
            by_dom[r["domain"]].append(100 * (acc(r) - base[r["id"]]))
    if not by_dom:
        return float("nan"), float("nan"), 0
    means = [M.mean(v) for v in by_dom.values()]
    ses = [M.standard_error(v) for v in by_dom.values()]
    return (sum(means) / len(means), math.sqrt(sum(x * x for x in ses)) / len(ses),
            sum(len(v) for v in by_dom.values()))


def summarize_variants(by_variant: dict[Variant, list[dict]]) -> dict[str, Any]:
    """Per variant and split (dev / test / all): the benchmark's summary, shorter-wins share, DSP lift, and
    the paired difference from the first variant (the paper's sum when it is listed)."""
    out: dict[str, Any] = {}
    ref_var = next(iter(by_variant), None)
    for var, recs in by_variant.items():
        res: dict[str, Any] = {}
        for split in ("dev", "test", "all"):
            part = [r for r in recs if split == "all" or split_of(r["id"]) == split]
            if not part:
                continue
            s = summarize(part)[var.name]
            sw, n_decided = shorter_wins(part)
            s["shorter_wins"], s["n_decided_unequal_length"] = sw, n_decided
            if part[0]["benchmark"] == "dsp":
                s["diagonal_lift"], s["diagonal_lift_se"], s["n_queries_all_systems"] = dsp_lift(part)
            if part[0]["benchmark"] == "rm-bench" and ref_var is not None:
                ref = [r for r in by_variant[ref_var] if split == "all" or split_of(r["id"]) == split]
                d, se, _ = paired_difference(part, ref)
                s["paired_vs"], s["paired_diff"], s["paired_diff_se"] = ref_var.name, d, se
            res[split] = s
        out[var.name] = res
    return out


def headline(res: dict[str, Any]) -> float:
    """The number the selection rule maximises: RM-Bench's average over domains, else accuracy (or the
    DSP diagonal mean)."""
    if "overall" in res:
        return res["overall"]["avg"]
    if "diagonal_mean" in res:
        return res["diagonal_mean"]
    return res["accuracy"]


def select(summary: dict[str, Any], split: str = "dev") -> str:
    """The pre-registered rule: the variant with the best ``split`` headline; ties go to the variant
    listed first (``expand``'s order puts the paper's sum first and plain before contrastive)."""
    best, best_v = None, -math.inf
    for name, res in summary.items():
        if split not in res:
            continue
        v = headline(res[split])
        if not math.isnan(v) and v > best_v:
            best, best_v = name, v
    if best is None:
        raise ValueError(f"no variant has results on the {split} split")
    return best


def markdown(summary: dict[str, Any], benchmark: str, chosen: str | None = None) -> str:
    """One row per variant: dev headline, then test (and all) figures, shorter-wins share."""
    lines = []
    if benchmark == "rm-bench":
        ref = next(iter(summary.values()), {}).get("test", {}).get("paired_vs", "the first")
        lines.append("| variant | dev avg | test: chat | code | safety | easy | normal | hard | avg ± s.e. "
                     f"| test minus {ref}, paired ± s.e. | shorter wins % (test) | all: avg ± s.e. "
                     "| shorter wins % (all) | n dev / test |")
        lines.append("|" + "---|" * 14)
        for name, res in summary.items():
            dev, test, al = res.get("dev"), res.get("test"), res.get("all")
            mark = f"**{name}** (chosen)" if name == chosen else name
            if test is None or dev is None or al is None:
                continue
            d = test["domains"]
            cells = [_f(d[k]["avg"]) if k in d else "—" for k in ("chat", "code", "safety")]
            o = test["overall"]
            lines.append(f"| {mark} | {_f(dev['overall']['avg'])} | " + " | ".join(cells) + " | "
                         + " | ".join(_f(o[k]) for k in ("easy", "normal", "hard"))
                         + f" | {_f(o['avg'])} ± {_f(o['se'])} | {_f(test.get('paired_diff'))} ± "
                         f"{_f(test.get('paired_diff_se'))} | {_f(test['shorter_wins'])} | "
                         f"{_f(al['overall']['avg'])} ± {_f(al['overall']['se'])} | {_f(al['shorter_wins'])} | "
                         f"{dev['n']} / {test['n']} |")
    elif benchmark == "dsp":
        lines.append("| variant | diagonal: academy | business | entertainment | literature | diagonal mean "
                     "| off-diagonal mean | diagonal lift ± s.e. (queries) | shorter wins % | n queries |")
        lines.append("|" + "---|" * 10)
        for name, res in summary.items():
            a = res.get("all")
            if a is None:
                continue
            mark = f"**{name}** (chosen)" if name == chosen else name
            diag = [_f(a["table"].get(d, {}).get(d)) for d in DSP_DOMAINS]
            lines.append(f"| {mark} | " + " | ".join(diag) + f" | {_f(a['diagonal_mean'])} | "
                         f"{_f(a['off_diagonal_mean'])} | "
                         f"{_f(a['diagonal_lift'])} ± {_f(a['diagonal_lift_se'])} ({a['n_queries_all_systems']}) | "
                         f"{_f(a['shorter_wins'])} | {max(a['n'].values())} |")
        for name in _dsp_matrix_variants(summary):
            lines += ["", *dsp_matrix(summary[name]["all"]["table"], name)]
    else:
        lines.append("| variant | dev accuracy | test accuracy | all accuracy | shorter wins % (all) | n |")
        lines.append("|" + "---|" * 6)
        for name, res in summary.items():
            mark = f"**{name}** (chosen)" if name == chosen else name
            def g(s: str, k: str = "accuracy", res: dict = res) -> str:
                return _f(res[s][k]) if s in res else "—"

            lines.append(f"| {mark} | {g('dev')} | {g('test')} | {g('all')} | {g('all', 'shorter_wins')} | "
                         f"{res['all']['n']} |")
    return "\n".join(lines) + "\n"


def _dsp_matrix_variants(summary: dict[str, Any]) -> list[str]:
    """The variants whose full 4x4 goes under the DSP table: the paper's sum, endorm's default, and their
    principle-contrastive forms, where present."""
    c = RewardConfig()
    default = Variant(c.aggregation, c.gamma).name
    want = ["sum", default, "sum:system", f"{default}:system"]
    return [n for n in dict.fromkeys(want) if n in summary and "all" in summary[n]]


def reaggregate(run_dir: str | Path, variants: Sequence[Variant], out_dir: str | Path | None = None,
                select_split: str | None = "dev", command: str | None = None) -> dict[str, Any]:
    """Re-score a finished ``endorm eval`` run under ``variants`` (no model); writes variants.json / .md.
    ``command``: the command line that asked for it, kept in variants.json (records/README.md)."""
    by_variant, settings = variant_records(run_dir, variants)
    summary = summarize_variants(by_variant)
    benchmark = settings.get("benchmark", "rm-bench")
    has_split = select_split and any(select_split in r for r in summary.values())
    chosen = select(summary, select_split) if has_split and benchmark == "rm-bench" else None
    result = {"command": command, "run": str(run_dir), "benchmark": benchmark, "model": settings.get("model"),
              "alpha": settings.get("alpha"), "split_salt": SPLIT_SALT, "selection_split": select_split,
              "chosen": chosen, "variants": summary}
    out = Path(out_dir or run_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "variants.json").write_text(json.dumps(_nan_to_none(result), indent=1) + "\n")
    (out / "variants.md").write_text(markdown(summary, benchmark, chosen))
    return result
