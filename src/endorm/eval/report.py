"""From per-example records to the results JSON, a markdown table laid out like the paper's tables,
and a PNG plot (methods x domains)."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from endorm.eval import metrics as M
from endorm.eval.prompts import DSP_DOMAINS, DSP_STYLES

# The paper's figures (arXiv 2506.23235, Qwen2.5-7B-Instruct), printed beside ours for reference.
PAPER_TABLE1 = {
    "endorm": {"chat": 84.7, "math": 56.7, "code": 53.2, "safety": 91.2, "easy": 86.9, "normal": 74.4,
               "hard": 49.4, "avg": 70.2},
    "verifier": {"avg": 64.6},
    "genrm-pairwise": {"avg": 61.4},
    "genrm-pointwise": {"avg": 44.2},
}
PAPER_TABLE2_DIAGONAL = {"academy": 76.89, "business": 69.21, "literature": 62.97, "entertainment": 72.09}
RMBENCH_COLUMNS = ("chat", "math", "code", "safety")


def _nan_to_none(x: Any) -> Any:
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, dict):
        return {k: _nan_to_none(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_nan_to_none(v) for v in x]
    return x


def _m(x: float | None) -> float:
    return float("nan") if x is None else float(x)


# -- aggregation ---------------------------------------------------------------------------------------
def summarize(records: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per method: accuracies by domain / difficulty / subset, n, and scoring time (summed over records)."""
    by_method: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        by_method[r["method"]].append(r)
    out = {}
    for method, recs in by_method.items():
        bench = recs[0]["benchmark"]
        res: dict[str, Any] = {"elapsed_s": round(sum(r.get("elapsed_s", 0.0) for r in recs), 1)}
        if bench == "rm-bench":
            res.update(summarize_rmbench(recs))
        elif bench == "dsp":
            res.update(summarize_dsp(recs))
        elif bench == "best-of-n":
            res.update(summarize_best_of_n(recs))
        else:
            res.update(summarize_pairs(recs))
        out[method] = res
    return out


def summarize_rmbench(recs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    domains: dict[str, list] = defaultdict(list)
    subsets: dict[str, list] = defaultdict(list)
    for r in recs:
        cube = [[float("nan")] * 3 for _ in range(3)]
        for i, j, m in r["margins"]:
            cube[i][j - 3] = _m(m)
        domains[r["domain"]].append(cube)
        subsets[r.get("subset") or r["domain"]].append(cube)
    per = {}
    for d, cubes in domains.items():
        mat = M.rmbench_matrix(cubes)
        per[d] = {**{k: 100 * v for k, v in M.rmbench_levels(mat).items()},
                  "matrix": [[100 * x for x in row] for row in mat], "n": len(cubes),
                  "se": 100 * M.standard_error([M.accuracy([m for row in c for m in row]) for c in cubes])}
    overall = {k: M.mean([per[d][k] for d in per]) for k in ("easy", "normal", "hard", "avg")}
    overall["se"] = math.sqrt(sum(per[d]["se"] ** 2 for d in per)) / len(per) if per else float("nan")
    by_subset = {s: {**{k: 100 * v for k, v in M.rmbench_levels(M.rmbench_matrix(c)).items()}, "n": len(c)}
                 for s, c in sorted(subsets.items())}
    return {"domains": per, "overall": overall, "subsets": by_subset, "n": sum(p["n"] for p in per.values())}


def summarize_dsp(recs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """table[system domain][evaluated domain] = accuracy (%) of that domain's response over the other four."""
    cells: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    items: dict[str, set] = defaultdict(set)
    for r in recs:
        sys = r["system"] or "none"
        items[sys].add(r["id"])
        for i, _j, m in r["margins"]:
            cells[sys][DSP_STYLES[i]].append(_m(m))
    table = {s: {d: 100 * M.accuracy(cells[s][d]) for d in DSP_DOMAINS} for s in cells}
    diag = [table[d][d] for d in DSP_DOMAINS if d in table]
    off = [table[s][d] for s in table if s in DSP_DOMAINS for d in DSP_DOMAINS if d != s]
    return {"table": table, "diagonal_mean": M.mean(diag), "off_diagonal_mean": M.mean(off),
            "n": {s: len(v) for s, v in items.items()}}


def summarize_pairs(recs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    subsets: dict[str, list[float]] = defaultdict(list)
    allm = []
    for r in recs:
        ms = [_m(m) for _, _, m in r["margins"]]
        allm.extend(ms)
        subsets[r.get("subset") or "all"].extend(ms)
    return {"accuracy": 100 * M.accuracy(allm), "n": len(recs),
            "subsets": {s: {"accuracy": 100 * M.accuracy(v), "n": len(v)} for s, v in sorted(subsets.items())}}


def summarize_best_of_n(recs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    subsets: dict[str, list[float]] = defaultdict(list)
    for r in recs:
        subsets[r.get("subset") or "all"].append(M.best_of_n_credit([_m(s) for s in r["scores"]], r["best"]))
    allc = [c for v in subsets.values() for c in v]
    return {"accuracy": 100 * sum(allc) / len(allc), "n": len(allc),
            "subsets": {s: {"accuracy": 100 * sum(v) / len(v), "n": len(v)} for s, v in sorted(subsets.items())}}


# -- markdown --------------------------------------------------------------------------------------------
def _f(x: Any) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.1f}"


def rmbench_table(results: dict[str, dict[str, Any]], paper: bool = True) -> str:
    head = "| Method | " + " | ".join(c.capitalize() for c in RMBENCH_COLUMNS) + " | Easy | Normal | Hard | Avg | n (prompts) |"
    lines = [head, "|" + "---|" * (len(RMBENCH_COLUMNS) + 6)]
    for method, res in results.items():
        doms = res["domains"]
        cells = [_f(doms[d]["avg"]) if d in doms else "—" for d in RMBENCH_COLUMNS]
        o = res["overall"]
        n = "/".join(str(doms[d]["n"]) for d in RMBENCH_COLUMNS if d in doms)
        avg = f"{_f(o['avg'])} ± {_f(o.get('se'))}"
        lines.append(f"| {method} | " + " | ".join(cells) + " | " + " | ".join(_f(o[k]) for k in ("easy", "normal", "hard"))
                     + f" | {avg} | {n} |")
    if paper:
        for method, fig in PAPER_TABLE1.items():
            cells = [_f(fig.get(k)) for k in RMBENCH_COLUMNS + ("easy", "normal", "hard", "avg")]
            lines.append(f"| paper, Qwen2.5-7B-Instruct: {method} | " + " | ".join(cells) + " | full |")
    return "\n".join(lines)


def dsp_matrix(table: dict[str, dict[str, float]], corner: str, systems: Sequence[str] = DSP_DOMAINS) -> list[str]:
    """The paper's Table 2 layout: a row per system prompt in ``table`` (of ``systems``), a column per domain
    whose response should win, the own-domain cell in bold."""
    lines = [f"| {corner} | " + " | ".join(d.capitalize() for d in DSP_DOMAINS) + " |",
             "|" + "---|" * (len(DSP_DOMAINS) + 1)]
    for s in systems:
        if s in table:
            cells = [f"**{_f(table[s][d])}**" if s == d else _f(table[s][d]) for d in DSP_DOMAINS]
            lines.append(f"| {s} | " + " | ".join(cells) + " |")
    return lines


def dsp_tables(results: dict[str, dict[str, Any]], paper: bool = True) -> str:
    out = []
    for method, res in results.items():
        t = res["table"]
        n = res["n"]
        out.append(f"**{method}** (rows: system prompt; columns: the domain whose response should win over the "
                   f"other four; n = {max(n.values())} queries x 4 pairs per cell)\n")
        out += dsp_matrix(t, "system prompt \\ domain", [*DSP_DOMAINS, "none"])
        out.append(f"\ndiagonal mean {_f(res['diagonal_mean'])}, off-diagonal mean {_f(res['off_diagonal_mean'])}\n")
    if paper:
        out.append("Paper (Qwen2.5-7B-Instruct) diagonal: " + ", ".join(f"{k} {v}" for k, v in PAPER_TABLE2_DIAGONAL.items()))
    return "\n".join(out)


def subset_table(results: dict[str, dict[str, Any]]) -> str:
    subsets = sorted({s for r in results.values() for s in r["subsets"]})
    lines = ["| Method | " + " | ".join(subsets) + " | overall | n |", "|" + "---|" * (len(subsets) + 3)]
    for method, res in results.items():
        cells = [_f(res["subsets"][s]["accuracy"]) if s in res["subsets"] else "—" for s in subsets]
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {_f(res['accuracy'])} | {res['n']} |")
    return "\n".join(lines)


def markdown(summary: dict[str, Any]) -> str:
    bench, results = summary["benchmark"], summary["methods"]
    title = f"## {bench} — model {summary['model']}\n\n"
    if bench == "rm-bench":
        body = rmbench_table(results)
    elif bench == "dsp":
        body = dsp_tables(results)
    else:
        body = subset_table(results)
    note = f"\n\nAccuracy in %. {M.TIE_RULE}."
    if bench == "rm-bench":
        note += " Avg ± its standard error over prompts (a prompt's accuracy is the mean of its 9 comparisons)." + (f" {M.BON_TIE_RULE}." if bench == "best-of-n" else "")
    times = "\n\nScoring time: " + ", ".join(f"{m} {r['elapsed_s']:.0f} s" for m, r in results.items())
    return title + body + note + times + "\n"


# -- plot ------------------------------------------------------------------------------------------------
def plot(summary: dict[str, Any], path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bench, results = summary["benchmark"], summary["methods"]
    methods = list(results)
    if bench == "dsp":
        fig, axes = plt.subplots(1, len(methods), figsize=(4.2 * len(methods), 4), squeeze=False)
        for k, (ax, m) in enumerate(zip(axes[0], methods, strict=True)):
            t = results[m]["table"]
            rows = [s for s in [*DSP_DOMAINS, "none"] if s in t]
            data = [[t[s][d] for d in DSP_DOMAINS] for s in rows]
            im = ax.imshow(data, vmin=0, vmax=100, cmap="viridis")
            ax.set_xticks(range(len(DSP_DOMAINS)), [d[:5] for d in DSP_DOMAINS])
            ax.set_yticks(range(len(rows)), [r[:5] for r in rows] if k == 0 else [])
            if k == 0:
                ax.set_ylabel("system prompt")
            for a, row in enumerate(data):
                for b, v in enumerate(row):
                    ax.text(b, a, f"{v:.0f}", ha="center", va="center", color="w" if v < 60 else "k", fontsize=8)
            ax.set_title(m)
            ax.set_xlabel("domain of the preferred response")
        fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label="accuracy %")
    else:
        if bench == "rm-bench":
            cols = [d for d in RMBENCH_COLUMNS if any(d in r["domains"] for r in results.values())]
            cols += ["easy", "normal", "hard", "avg"]
            val = lambda r, c: r["domains"][c]["avg"] if c in r.get("domains", {}) else r["overall"].get(c, float("nan"))  # noqa: E731
        else:
            cols = sorted({s for r in results.values() for s in r["subsets"]}) + ["overall"]
            val = lambda r, c: r["accuracy"] if c == "overall" else r["subsets"].get(c, {}).get("accuracy", float("nan"))  # noqa: E731
        fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(cols) * max(1, len(methods)) / 2), 4))
        w = 0.8 / max(1, len(methods))
        for k, m in enumerate(methods):
            ax.bar([c + k * w for c in range(len(cols))], [val(results[m], c) for c in cols], w, label=m)
        ax.axhline(50, color="grey", lw=0.8, ls="--")
        ax.set_xticks([c + w * (len(methods) - 1) / 2 for c in range(len(cols))], cols)
        ax.set_ylabel("accuracy %")
        ax.set_ylim(0, 100)
        ax.legend(fontsize=8, ncol=2)
    fig.suptitle(f"{bench}: {summary['model']}", fontsize=10)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def write_outputs(summary: dict[str, Any], out_dir: str | Path, make_plot: bool = True) -> dict[str, Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"results": out_dir / "results.json", "table": out_dir / "table.md"}
    paths["results"].write_text(json.dumps(_nan_to_none(summary), indent=2) + "\n")
    paths["table"].write_text(markdown(summary))
    if make_plot and summary["methods"]:
        paths["plot"] = out_dir / "plot.png"
        plot(summary, paths["plot"])
    return paths


def merge(paths: Sequence[str | Path]) -> dict[str, Any]:
    """Combine results.json files of one benchmark (e.g. one run per method) into one summary."""
    summaries = []
    for p in paths:
        p = Path(p)
        p = p / "results.json" if p.is_dir() else p
        if not p.is_file():
            raise FileNotFoundError(f"no results file at {p}")
        summaries.append(json.loads(p.read_text()))
    benches = {s["benchmark"] for s in summaries}
    if len(benches) != 1:
        raise ValueError(f"cannot merge results of different benchmarks: {', '.join(sorted(benches))}")
    out = {"benchmark": benches.pop(), "model": " / ".join(sorted({s["model"] for s in summaries})),
           "tie_rule": M.TIE_RULE, "merged_from": [str(p) for p in paths], "methods": {}, "settings": {}}
    for s in summaries:
        for m, r in s["methods"].items():
            out["methods"][m] = _nan_back(r)
            out["settings"][m] = s.get("settings", {})
    return out


def _nan_back(x: Any) -> Any:
    if x is None:
        return float("nan")
    if isinstance(x, dict):
        return {k: _nan_back(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_nan_back(v) for v in x]
    return x
