"""One scaling table and figure: RM-Bench accuracy and the shorter-wins share against model size.

``endorm eval --scaling RUN,RUN,...`` reads finished ``endorm eval --benchmark rm-bench`` runs (no model is
loaded), groups them by model, and gives each model up to three rows:

    sum            the paper's formula as written, re-read from the ``endorm`` method's kept token stats
    default        endorm's default form (``RewardConfig``: discounted, gamma = 0.93), likewise
    best judge     of genrm-pointwise, genrm-pairwise and verifier, the one with the highest average

Per row, from the per-example records: each domain's accuracy (the mean over its prompts of a prompt's
accuracy over its 9 comparisons, which is the paper's Table 1 figure of that domain), their mean ("avg"),
and the share of decided comparisons of responses of unequal token length that the shorter response wins.
Standard errors are over prompts: a domain's is the s.e. of its prompts' accuracies, the average's combines
the domains' as sqrt(sum se^2) / k, and the shorter-wins share is a ratio whose s.e. is clustered by prompt
(its comparisons are not independent). The paper's Qwen2.5-7B-Instruct EndoRM (its Table 1) is the
reference point; it publishes no shorter-wins share.

A second table sets every other form of a model (``sum`` and each judge, not just the best) against its
default on the prompts both scored: the paired difference of accuracies and its s.e. (the judges' comparison
with the default is paired, so it is far tighter than the rows' separate error bars suggest). A third table
sets each model against the next smaller one under the same form (``sum``, the default), on the prompts both
scored: whether a form gains with size, with the paired s.e. (the two models rank the same comparisons).

With ``--limit k`` (and ``--seed``, ``--data``) only the prompts of the seeded ``--limit k`` subset count, so
every model is compared on the same prompts where its runs cover them. Simplifications: without it, a model's
rows may come from different runs, so from different prompt subsets (each row says its n); the judges' response lengths are the token counts of the same model's ``endorm`` records of the
same prompt, so a judge's shorter-wins share needs an ``endorm`` run of that model with token stats.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from endorm.eval import metrics as M
from endorm.eval.harness import read_records
from endorm.eval.report import _f, _nan_to_none
from endorm.eval.variants import Variant, paired_difference, primary, shorter_counts, variant_records
from endorm.reward_model import RewardConfig

DOMAINS = ("chat", "safety")
JUDGES = ("genrm-pointwise", "genrm-pairwise", "verifier")
# The paper's reference row (arXiv 2506.23235, Table 1): EndoRM on Qwen2.5-7B-Instruct, whose parameter
# count (7.61B) is the Qwen2.5 technical report's.
PAPER_7B = {"model": "paper: Qwen2.5-7B-Instruct", "params": 7.61e9, "form": "EndoRM (its Table 1)",
            "domains": {"chat": 84.7, "code": 53.2, "math": 56.7, "safety": 91.2}, "avg_four_domains": 70.2,
            "best_judge": "Generative Verifier", "best_judge_avg_four_domains": 64.6}


def default_variant() -> Variant:
    c = RewardConfig()
    return Variant(c.aggregation, c.gamma)


# -- per-prompt arithmetic (pure) -------------------------------------------------------------------------
def domain_accuracy(recs: Sequence[dict[str, Any]]) -> tuple[float, float, int]:
    """(accuracy %, its s.e. % over prompts, n prompts) of one domain's records (one per prompt)."""
    accs = [M.accuracy([M.nan_none(m) for _, _, m in r["margins"]]) for r in recs]
    return 100 * M.mean(accs), 100 * M.standard_error(accs), len(accs)


def mean_of_domains(cells: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """Mean of the domains' accuracies and its s.e. (the domains are independent samples of prompts)."""
    k = len(cells)
    return sum(a for a, _ in cells) / k, math.sqrt(sum(se * se for _, se in cells)) / k


def ratio_with_se(counts: Sequence[tuple[int, int]]) -> tuple[float, float, int]:
    """Pooled share (%) sum(won) / sum(decided) over prompts, its s.e. (%) clustered by prompt, and the
    number of decided comparisons.

    Args: counts [(won, decided) per prompt]. s.e. = sqrt(k / (k - 1) * sum_i (won_i - p decided_i)^2)
    / sum(decided) over the k prompts with a decided comparison (the linearised ratio estimator).
    """
    counts = [(w, d) for w, d in counts if d > 0]
    total = sum(d for _, d in counts)
    if not total:
        return float("nan"), float("nan"), 0
    p = sum(w for w, _ in counts) / total
    k = len(counts)
    if k < 2:
        return 100 * p, float("nan"), total
    var = k / (k - 1) * sum((w - p * d) ** 2 for w, d in counts)
    return 100 * p, 100 * math.sqrt(var) / total, total


def row_figures(recs: Sequence[dict[str, Any]], domains: Sequence[str],
                lengths: dict[str, list[int]]) -> dict[str, Any]:
    """One row of the table from one method's records: per domain, avg, shorter wins (``lengths``: item id ->
    token counts of its responses)."""
    per = {d: domain_accuracy([r for r in recs if r["domain"] == d]) for d in domains}
    have = [d for d in domains if per[d][2] > 0]
    avg, avg_se = mean_of_domains([per[d][:2] for d in have]) if len(have) == len(domains) else (math.nan, math.nan)
    counts = [shorter_counts(r, lengths[r["id"]]) for r in recs if r["domain"] in domains and r["id"] in lengths]
    sw, sw_se, n_decided = ratio_with_se(counts)
    return {"domains": {d: {"acc": a, "se": se, "n": n} for d, (a, se, n) in per.items()},
            "avg": avg, "avg_se": avg_se, "shorter_wins": sw, "shorter_wins_se": sw_se,
            "n_decided_unequal_length": n_decided}


# -- reading runs ---------------------------------------------------------------------------------------
def _params_from_registry(model: str | None) -> float | None:
    from endorm.models.registry import DEFAULT_MODEL, REGISTRY

    spec = REGISTRY.get(model or DEFAULT_MODEL)
    if spec is None or not spec.params:
        return None
    unit = {"K": 1e3, "M": 1e6, "B": 1e9}[spec.params[-1]]
    return float(spec.params[:-1]) * unit


def model_name(results: dict[str, Any]) -> str:
    """The model a run scored, one name for one model: ``--model`` as given, the registry name of the default
    model when none was given (so ``--model smollm2-135m-instruct`` and no ``--model`` group together)."""
    from endorm.models.registry import DEFAULT_MODEL

    given = (results.get("settings") or {}).get("model")
    if given:
        return given
    return DEFAULT_MODEL if results["model"].endswith("(default)") else results["model"]


def read_run(run_dir: str | Path, ids: set[str] | None = None) -> dict[str, Any]:
    """A finished RM-Bench run: its model, parameter count and per-form records (``sum``, the default,
    each judge; only the items in ``ids`` when given), and its responses' token counts."""
    run_dir = Path(run_dir)
    res_path = run_dir / "results.json"
    if not res_path.is_file():
        raise FileNotFoundError(f"--scaling: {run_dir} has no results.json (not a finished endorm eval run)")
    res = json.loads(res_path.read_text())
    settings = res.get("settings") or {}
    if res.get("benchmark") != "rm-bench":
        raise ValueError(f"--scaling: {run_dir} is a {res.get('benchmark')} run; the scaling table is RM-Bench's")
    params = res.get("model_params") or settings.get("model_params") or _params_from_registry(settings.get("model"))
    if not params:
        raise ValueError(f"--scaling: {run_dir} ({res['model']}) names no parameter count: its results.json has no "
                         "model_params and the model is not in the registry; rescore it with this version")
    recs = read_records(run_dir / "examples.jsonl")
    forms: dict[str, list[dict]] = {}
    lengths: dict[str, list[int]] = {}
    endo = [r for r in recs if r["method"] == "endorm"]
    if endo and all(r.get("token_stats") for r in endo):
        by_variant, _ = variant_records(run_dir, [Variant("sum"), default_variant()])
        for var, vrecs in by_variant.items():
            forms[var.name] = vrecs
        lengths = {r["id"]: r["lengths"] for r in next(iter(by_variant.values()))}
    elif endo:  # no kept token stats: only the run's own form, if it is one of the two, and no lengths
        c = RewardConfig()
        name = primary(settings.get("aggregation", c.aggregation), settings.get("gamma", c.gamma),
                       settings.get("contrast", c.contrast)).name
        if name in ("sum", default_variant().name):
            forms[name] = endo
    for j in JUDGES:
        if any(r["method"] == j for r in recs):
            forms[j] = [r for r in recs if r["method"] == j]
    if ids is not None:
        forms = {f: [r for r in fr if r["id"] in ids] for f, fr in forms.items()}
    return {"run": str(run_dir), "model": model_name(res), "params": float(params), "forms": forms, "lengths": lengths}


def _by_model(runs: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The runs grouped by model: its size, its forms (form -> (run, records)) and its responses' lengths."""
    models: dict[str, dict[str, Any]] = {}
    for run in runs:
        m = models.setdefault(run["model"], {"params": run["params"], "forms": {}, "lengths": {}})
        if abs(m["params"] - run["params"]) > 0.01 * run["params"]:
            raise ValueError(f"--scaling: runs of {run['model']} disagree on its size ({m['params']:.0f} vs "
                             f"{run['params']:.0f} parameters)")
        for form, recs in run["forms"].items():
            if form in m["forms"]:
                raise ValueError(f"--scaling: {run['model']}'s {form} is in two runs ({m['forms'][form][0]} and "
                                 f"{run['run']}); pass one of them")
            m["forms"][form] = (run["run"], recs)
        m["lengths"].update(run["lengths"])
    return dict(sorted(models.items(), key=lambda kv: kv[1]["params"]))


def scaling_rows(runs: Sequence[dict[str, Any]], domains: Sequence[str] = DOMAINS) -> list[dict[str, Any]]:
    """Rows of the table, by model size: ``sum``, the default and the best judge of each model."""
    return _rows(_by_model(runs), domains)


def _rows(models: dict[str, dict[str, Any]], domains: Sequence[str]) -> list[dict[str, Any]]:
    rows = []
    default = default_variant().name
    for model, m in models.items():
        figs = {form: row_figures(recs, domains, m["lengths"]) for form, (_, recs) in m["forms"].items()}
        judges = [j for j in JUDGES if j in figs and not math.isnan(figs[j]["avg"])]
        best = max(judges, key=lambda j: figs[j]["avg"]) if judges else None  # ties: the first in JUDGES
        for form, label in (("sum", "sum (the paper's formula)"), (default, f"{default} (endorm's default)"),
                            (best, f"best judge: {best}")):
            if form is None or form not in figs:
                continue
            rows.append({"model": model, "params": m["params"], "row": "best judge" if form == best else form,
                         "form": label, "method": form, "run": m["forms"][form][0], **figs[form]})
    return rows


def _on_common_prompts(recs: Sequence[dict[str, Any]], ref: Sequence[dict[str, Any]],
                       domains: Sequence[str]) -> dict[str, Any] | None:
    """``recs`` against ``ref`` on the prompts of ``domains`` both scored: each one's row figures there and the
    paired difference (``variants.paired_difference``); None when a domain has no common prompt (no average
    to pair)."""
    ids = {r["id"] for r in recs if r["domain"] in domains} & {r["id"] for r in ref if r["domain"] in domains}
    mine = [r for r in recs if r["id"] in ids]
    theirs = [r for r in ref if r["id"] in ids]
    if {r["domain"] for r in mine} != set(domains):
        return None
    d, se, n = paired_difference(mine, theirs)
    return {"mine": row_figures(mine, domains, {}), "ref": row_figures(theirs, domains, {}), "diff": d,
            "diff_se": se, "n_paired": n}


def paired_rows(models: dict[str, dict[str, Any]], domains: Sequence[str] = DOMAINS) -> list[dict[str, Any]]:
    """Every other form of each model (``models``: the runs grouped by ``_by_model``; ``sum``, each judge)
    against its default on the prompts both scored:
    the form's avg, the default's avg on those prompts, and the paired difference with its s.e.
    (``variants.paired_difference``: per domain the mean per-prompt difference, domains averaged)."""
    default = default_variant().name
    out = []
    for model, m in models.items():
        if default not in m["forms"]:
            continue
        for form in ("sum", *JUDGES):
            if form not in m["forms"]:
                continue
            c = _on_common_prompts(m["forms"][form][1], m["forms"][default][1], domains)
            if c is None:
                continue
            mine = c["mine"]
            out.append({"model": model, "params": m["params"], "form": form, "n": {
                dom: mine["domains"][dom]["n"] for dom in domains}, "avg": mine["avg"], "avg_se": mine["avg_se"],
                "default_avg": c["ref"]["avg"], "minus_default": c["diff"], "minus_default_se": c["diff_se"],
                "n_paired": c["n_paired"]})
    return out


def size_steps(models: dict[str, dict[str, Any]], domains: Sequence[str] = DOMAINS) -> list[dict[str, Any]]:
    """Each model minus the next smaller model that has the same form (``sum``, the default; ``models`` as
    ``_by_model`` gives them, smallest first), on the prompts both scored: the two avgs on those prompts and
    the paired difference with its s.e. (``variants.paired_difference``)."""
    out = []
    for form in ("sum", default_variant().name):
        have = [(name, m) for name, m in models.items() if form in m["forms"]]
        for (small, ms), (large, ml) in itertools.pairwise(have):
            c = _on_common_prompts(ml["forms"][form][1], ms["forms"][form][1], domains)
            if c is None:
                continue
            out.append({"form": form, "smaller": small, "larger": large, "smaller_params": ms["params"],
                        "larger_params": ml["params"], "smaller_avg": c["ref"]["avg"], "larger_avg": c["mine"]["avg"],
                        "larger_minus_smaller": c["diff"], "larger_minus_smaller_se": c["diff_se"],
                        "n": {dom: c["mine"]["domains"][dom]["n"] for dom in domains}, "n_paired": c["n_paired"]})
    return out


# -- outputs --------------------------------------------------------------------------------------------
def params_label(n: float) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return f"{n:.0f}"


def markdown(rows: Sequence[dict[str, Any]], domains: Sequence[str]) -> str:
    def pm(x: float, se: float) -> str:
        return f"{_f(x)} ± {_f(se)}"

    head = ("| model | parameters | form | " + " | ".join(f"{d} ± s.e." for d in domains)
            + " | avg ± s.e. | shorter wins % ± s.e. | n prompts (" + " / ".join(domains) + ") |")
    lines = [head, "|" + "---|" * (len(domains) + 6)]
    for r in rows:
        cells = [pm(r["domains"][d]["acc"], r["domains"][d]["se"]) for d in domains]
        n = " / ".join(str(r["domains"][d]["n"]) for d in domains)
        lines.append(f"| {r['model']} | {params_label(r['params'])} | {r['form']} | " + " | ".join(cells)
                     + f" | {pm(r['avg'], r['avg_se'])} | {pm(r['shorter_wins'], r['shorter_wins_se'])} | {n} |")
    p = PAPER_7B
    paper = [p["domains"].get(d) for d in domains]
    avg = sum(paper) / len(paper) if all(x is not None for x in paper) else None
    lines.append(f"| {p['model']} | {params_label(p['params'])} | {p['form']} | " + " | ".join(_f(x) for x in paper)
                 + f" | {_f(avg)} | — | full set |")
    note = (f"\nAccuracy in %, RM-Bench, {' and '.join(domains)}; avg = their mean. s.e. over prompts (a prompt's "
            "accuracy is the mean of its 9 comparisons; ties count as wrong); the avg's s.e. combines the domains'. "
            "Shorter wins = share of decided comparisons of responses of unequal token length won by the shorter "
            "one, s.e. clustered by prompt. Best judge = the judge with the highest avg for that model. The "
            f"paper's four-domain average (with code and math) is {p['avg_four_domains']}; its best judge, the "
            f"{p['best_judge']}, averages {p['best_judge_avg_four_domains']} over four domains (no per-domain "
            "figures).\n")
    return "\n".join(lines) + "\n" + note


def paired_markdown(paired: Sequence[dict[str, Any]], domains: Sequence[str]) -> str:
    """Each form against the same model's default on the same prompts."""
    default = default_variant().name
    lines = [f"| model | form | avg ± s.e. | {default} on the same prompts | form minus {default}, paired ± s.e. "
             "| n prompts (" + " / ".join(domains) + ") |", "|---|---|---|---|---|---|"]
    for p in paired:
        n = " / ".join(str(p["n"][d]) for d in domains)
        lines.append(f"| {p['model']} | {p['form']} | {_f(p['avg'])} ± {_f(p['avg_se'])} | {_f(p['default_avg'])} | "
                     f"{_f(p['minus_default'])} ± {_f(p['minus_default_se'])} | {n} |")
    return ("\n".join(lines) + "\n\nPaired: per domain, the mean over the prompts both forms scored of the "
            "difference of the prompts' accuracies; the domains averaged (s.e. combined as for avg).\n")


def steps_markdown(steps: Sequence[dict[str, Any]], domains: Sequence[str]) -> str:
    """Each model against the next smaller one, same form, same prompts."""
    lines = ["| form | smaller model | larger model | smaller: avg | larger: avg | larger minus smaller, paired "
             "± s.e. | n prompts (" + " / ".join(domains) + ") |", "|---|---|---|---|---|---|---|"]
    for s in steps:
        n = " / ".join(str(s["n"][d]) for d in domains)
        lines.append(f"| {s['form']} | {s['smaller']} | {s['larger']} | {_f(s['smaller_avg'])} | "
                     f"{_f(s['larger_avg'])} | {_f(s['larger_minus_smaller'])} ± {_f(s['larger_minus_smaller_se'])} "
                     f"| {n} |")
    return ("\n".join(lines) + "\n\nAcross sizes: the same form of two models on the prompts both scored, paired by "
            "prompt as above.\n")


def plot(rows: Sequence[dict[str, Any]], domains: Sequence[str], path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [*domains, "avg", "shorter wins"]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.6), squeeze=False)
    series = list(dict.fromkeys(r["row"] for r in rows))
    sizes = sorted({r["params"] for r in rows} | {PAPER_7B["params"]})
    for ax, panel in zip(axes[0], panels, strict=True):
        for k, s in enumerate(series):
            pts = [r for r in rows if r["row"] == s]
            shift = 10 ** (0.025 * (k - (len(series) - 1) / 2))  # side by side, so the error bars do not overlap
            if panel in domains:
                y = [r["domains"][panel]["acc"] for r in pts]
                e = [r["domains"][panel]["se"] for r in pts]
            elif panel == "avg":
                y, e = [r["avg"] for r in pts], [r["avg_se"] for r in pts]
            else:
                y, e = [r["shorter_wins"] for r in pts], [r["shorter_wins_se"] for r in pts]
            ax.errorbar([r["params"] * shift for r in pts], y, yerr=[0 if math.isnan(x) else x for x in e], marker="o",
                        capsize=3, label=s)
        paper = [PAPER_7B["domains"].get(d) for d in domains]
        ref = PAPER_7B["domains"].get(panel) if panel in domains else (
            sum(paper) / len(paper) if panel == "avg" and None not in paper else None)
        if ref is not None:
            ax.plot([PAPER_7B["params"]], [ref], marker="*", ms=12, color="k", ls="", label="paper, 7B EndoRM")
        ax.axhline(50, color="grey", lw=0.8, ls="--")
        ax.set_xscale("log")
        ax.set_xlim(sizes[0] / 1.6, sizes[-1] * 1.6)
        ax.set_xticks(sizes, [params_label(x) for x in sizes])
        ax.minorticks_off()
        ax.set_ylim(0, 100)
        ax.set_title(panel)
        ax.set_xlabel("parameters")
    axes[0][0].set_ylabel("% (± 1 s.e. over prompts)")
    axes[0][0].legend(fontsize=7)
    fig.suptitle("RM-Bench against model size: accuracy and the share the shorter response wins", fontsize=10)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def write(run_dirs: Sequence[str | Path], out_dir: str | Path, domains: Sequence[str] = DOMAINS,
          command: str | None = None, make_plot: bool = True, ids: set[str] | None = None) -> dict[str, Path]:
    """Read the runs, write scaling.json (every figure, the runs, the command), scaling.md and scaling.png.
    ``ids``: count only these items (the seeded ``--limit`` subset)."""
    if not run_dirs:
        raise ValueError("--scaling: give at least one run directory")
    models = _by_model([read_run(d, ids) for d in run_dirs])  # group once; both tables read it
    rows = _rows(models, domains)
    if not rows:
        raise ValueError("--scaling: no sum, default or judge records in " + ", ".join(map(str, run_dirs)))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "scaling.json", "table": out / "scaling.md"}
    paired = paired_rows(models, domains)
    steps = size_steps(models, domains)
    doc = {"command": command, "runs": [str(d) for d in run_dirs], "domains": list(domains), "rows": rows,
           "paired_vs_default": paired, "across_sizes": steps, "paper": PAPER_7B}
    paths["json"].write_text(json.dumps(_nan_to_none(doc), indent=1) + "\n")
    table = markdown(rows, domains)
    if paired:
        table += "\n" + paired_markdown(paired, domains)
    if steps:
        table += "\n" + steps_markdown(steps, domains)
    paths["table"].write_text(table)
    if make_plot:
        paths["plot"] = out / "scaling.png"
        plot(rows, domains, paths["plot"])
    return paths
