"""Figures and text tables for the lab experiments (matplotlib, Agg backend, one PNG per experiment)."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

import numpy as np

Row = dict


def group(rows: Iterable[Row], keys: tuple[str, ...], value: str) -> dict[tuple, np.ndarray]:
    """{key tuple: array of ``value`` over the rows with those keys (i.e. over seeds)}."""
    out: dict[tuple, list[float]] = defaultdict(list)
    for r in rows:
        out[tuple(r[k] for k in keys)].append(float(r[value]))
    return {k: np.asarray(v) for k, v in out.items()}


def loglog_slope(x: np.ndarray, y: np.ndarray) -> float:
    """Least-squares slope of log y on log x over the points with y > 0 (NaN if fewer than 2)."""
    keep = y > 0
    if keep.sum() < 2:
        return float("nan")
    return float(np.polyfit(np.log(x[keep]), np.log(y[keep]), 1)[0])


def slopes_over_seeds(rows: list[Row], x: str, y: str, where: dict, normalise: str | None = None) -> np.ndarray:
    """One log-log slope of y (optionally y / normalise) against x per seed, for rows matching ``where``."""
    per_seed: dict[int, list[tuple[float, float]]] = defaultdict(list)
    for r in rows:
        if all(r[k] == v for k, v in where.items()):
            val = float(r[y]) / (float(r[normalise]) if normalise else 1.0)
            per_seed[int(r["seed"])].append((float(r[x]), val))
    out = []
    for pts in per_seed.values():
        xs, ys = np.array(pts).T
        out.append(loglog_slope(xs, ys))
    return np.asarray(out)


def fmt_ms(a: np.ndarray) -> str:
    a = a[np.isfinite(a)]
    if len(a) == 0:
        return "nan"
    if len(a) == 1:
        return f"{a[0]:.3g}"
    return f"{a.mean():.3g}±{a.std(ddof=1):.2g}"


def table(rows: list[Row], keys: tuple[str, ...], values: tuple[str, ...]) -> str:
    """Text table: one line per key tuple, mean±std over seeds for each value column."""
    cols = {v: group(rows, keys, v) for v in values}
    head = list(keys) + list(values)
    lines = []
    for k in sorted(cols[values[0]], key=lambda t: tuple((str(type(x)), x) for x in t)):
        lines.append([str(x) for x in k] + [fmt_ms(cols[v][k]) for v in values])
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(head)]
    out = ["  ".join(h.rjust(w) for h, w in zip(head, widths, strict=True))]
    out += ["  ".join(c.rjust(w) for c, w in zip(line, widths, strict=True)) for line in lines]
    return "\n".join(out)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_recovery(rows: list[Row], keep: dict, path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(1, 3, figsize=(15, 4.4))
    sizes = sorted(keep)
    for n, c in ((sizes[0], "tab:orange"), (sizes[-1], "tab:blue")):
        k = keep[n]
        pe = k["p_e"]
        x, y = k["R"] - pe @ k["R"], k["R_hat"] - pe @ k["R_hat"]
        big = pe > np.quantile(pe, 0.5)  # the more likely half of the responses, for readability
        ax[0].scatter(x[big], y[big], s=4, alpha=0.4, color=c, label=f"MLP, N={n}")
    lim = ax[0].get_xlim()
    ax[0].plot(lim, lim, "k--", lw=0.8)
    ax[0].set(xlabel="true return R(y) (centred)", ylabel="endogenous return R̂(y) (centred)",
              title="(a1) response-level: R̂ = R + const as N grows")
    ax[0].legend(markerscale=3)
    k = keep[sizes[-1]]
    ax[1].scatter(k["r"], k["r_hat"], s=3, alpha=0.3, color="tab:red", label="raw r̂(s,a)")
    ax[1].scatter(k["r"], k["r_hat_unshaped"], s=3, alpha=0.3, color="tab:green",
                  label="r̂ − [Φ(s) − Φ(s')], Φ = V_f − V*")
    lim = ax[1].get_xlim()
    ax[1].plot(lim, lim, "k--", lw=0.8)
    ax[1].set(xlabel="true token reward r(s,a)", ylabel="extracted", title=f"(a2) token-level, MLP, N={sizes[-1]}")
    ax[1].legend(markerscale=4)
    for model, c in (("tabular", "tab:blue"), ("mlp", "tab:orange")):
        for val, ls, lab in (("return_rmse", "-", "RMS of R̂−R mod const (under π_E)"),
                             ("token_err_canonical", ":", "E|α(log π̂ − log π_E)| per token")):
            g = group([r for r in rows if r["model"] == model], ("n_demos",), val)
            ns = np.array(sorted(k[0] for k in g))
            m = np.array([g[(n,)].mean() for n in ns])
            s = np.array([g[(n,)].std() for n in ns])
            ax[2].errorbar(ns, m, yerr=s, color=c, ls=ls, marker="o", ms=3, capsize=2, label=f"{model}: {lab}")
    ns = np.array(sorted({r["n_demos"] for r in rows}), dtype=float)
    ax[2].plot(ns, 2 * ns[0] ** 0.5 * ns**-0.5 * 0.5, "k--", lw=0.8, label="∝ N^-1/2")
    ax[2].set(xscale="log", yscale="log", xlabel="demonstrations N", title="(a3) recovery error vs data (mean±sd)")
    ax[2].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_preferences(rows: list[Row], path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(1, 2, figsize=(11, 4.4))
    colors = {"random": "tab:blue", "adversarial": "tab:red", "mle": "tab:green"}
    for kind, c in colors.items():
        sub = [r for r in rows if r["kind"] == kind]
        if sub:
            ax[0].scatter([r["bound"] for r in sub], [r["tv_max"] for r in sub], s=10, color=c, label=f"{kind}: max over pairs")
            ax[0].scatter([r["bound"] for r in sub], [r["tv_mean_expert"] for r in sub], s=10, color=c, marker="x",
                          alpha=0.6, label=f"{kind}: mean, y,y'~π_E")
    lo = min(r["tv_mean_expert"] for r in rows) * 0.8
    hi = max(r["bound"] for r in rows) * 1.2
    ax[0].plot([lo, hi], [lo, hi], "k--", lw=0.8, label="= bound")
    ax[0].plot([lo, hi], [1, 1], "k:", lw=0.8)
    ax[0].set(xscale="log", yscale="log", xlabel="Theorem 1 bound (α H / 2) ε_π", ylabel="measured TV",
              title="(b1) every setting: measured preference TV vs bound")
    ax[0].legend(fontsize=7)
    for kind, c in colors.items():
        sub = [r for r in rows if r["kind"] == kind]
        if not sub:
            continue
        level = sorted({r["level"] for r in sub})[len({r["level"] for r in sub}) // 2]
        sub = [r for r in sub if r["level"] == level]
        for val, ls in (("tv_max", "-"), ("tv_mean_expert", ":"), ("bound", "--")):
            g = group(sub, ("H",), val)
            hs = np.array(sorted(k[0] for k in g))
            ax[1].plot(hs, [g[(h,)].mean() for h in hs], ls=ls, color=c, marker="o", ms=3,
                       label=f"{kind} ({level:g}): {val}")
    ax[1].set(xscale="log", yscale="log", xlabel="horizon H", title="(b2) vs H at one error level (mean over seeds)")
    ax[1].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_suboptimality(rows: list[Row], path: Path) -> None:
    plt = _plt()
    panels = sorted({(r["kind"], r["level"]) for r in rows})
    ncol = min(3, len(panels))
    nrow = math.ceil(len(panels) / ncol)
    fig, ax = plt.subplots(nrow, ncol, figsize=(5.6 * ncol, 4.6 * nrow), squeeze=False)
    for a in ax.ravel()[len(panels):]:
        a.axis("off")
    series = (("imit_hard_gap", "tab:red", "-", "imitation: J_hard(π_E) − J_hard(π̂)"),
              ("imit_soft_gap", "tab:green", "-", "imitation soft gap = α KL"),
              ("rl_hard_subopt", "tab:blue", "-", "argmax R̂: max R − R(ŷ)"),
              ("bound_imit_hard_generic", "tab:red", "--", "BC-style bound ∝ H(H+1) ε"),
              ("bound_imit_hard_logratio", "tab:red", "-.", "log-ratio PDL bound"),
              ("bound_imit_hard_instance", "tab:red", ":", "PDL bound, max over states"),
              ("bound_imit_soft", "tab:green", "--", "soft bound αHε"),
              ("bound_rl", "tab:blue", "--", "argmax R̂ bound 2αHε"))
    for a, (kind, level) in zip(ax.ravel(), panels, strict=False):
        sub = [r for r in rows if r["kind"] == kind and r["level"] == level]
        for val, c, ls, lab in series:
            g = group(sub, ("H",), val)
            ge = group(sub, ("H",), "eps_pi")
            hs = np.array(sorted(k[0] for k in g))
            m = np.array([np.mean(g[(h,)] / ge[(h,)]) for h in hs])
            keep = m > 0
            slope = loglog_slope(hs.astype(float), m)
            a.plot(hs[keep], m[keep], ls=ls, color=c, marker="o" if ls == "-" else None, ms=3,
                   label=f"{lab} (slope {slope:.2f})")
        a.set(xscale="log", yscale="log", xlabel="horizon H", ylabel="value / ε_π (mean over seeds)",
              title=f"(c) {kind}, level {level:g}")
        a.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_fixed_point(rows: list[Row], path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(1, 3, figsize=(15, 4.2))
    for i, temp in enumerate(sorted({r["rl_alpha"] for r in rows})):
        sub = [r for r in rows if r["rl_alpha"] == temp]
        c = f"C{i}"
        for a, val in zip(ax, ("drift_from_start", "soft_subopt", "hard_return"), strict=True):
            g = group(sub, ("iter",), val)
            ks = np.array(sorted(k[0] for k in g))
            a.plot(ks, [g[(k,)].mean() for k in ks], marker="o", ms=3, color=c, label=f"RL at α' = {temp:g}")
    g = group(rows, ("iter",), "expert_hard_return")
    ax[2].axhline(np.mean(g[(0,)]), color="k", ls="--", lw=0.8, label="expert π_E")
    ax[0].set(yscale="symlog", xlabel="extract-then-RL round k", ylabel="max |log π_k − log π_0|",
              title="(d1) drift from the fitted model")
    ax[1].set(xlabel="round k", ylabel="V*(s1) − J_soft(π_k)", title="(d2) true soft suboptimality")
    ax[2].set(xlabel="round k", ylabel="E[Σ r] under the true reward", title="(d3) true hard return")
    for a in ax:
        a.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def finite_max(a: Iterable[float]) -> float:
    vals = [x for x in a if not math.isnan(x)]
    return max(vals) if vals else float("nan")
