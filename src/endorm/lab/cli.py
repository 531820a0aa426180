"""Exact CPU laboratory for the paper's theory: reward recovery, Theorem 1/2 bounds, the RL fixed point,
the KL-regularised optimum of the endogenous reward (sharpening) and what gamma < 1 does (shaping).

Runs the experiments of ``endorm.lab.experiments`` on small token MDPs (exact DP / enumeration, no
sampling in the evaluation), prints one table per experiment, writes ``lab_<name>.csv`` and
``summary.json`` to ``--out-dir`` and ``lab_<name>.png`` to ``--figures-dir`` (sharpening and shaping
are tables only: ``summary.json`` carries their per-setting means, and sharpening's rows, under ``tables``). ``--quick`` shrinks
everything to a seconds-long smoke run.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from endorm.lab import experiments as E
from endorm.lab import plots as P

log = logging.getLogger(__name__)

EXPERIMENTS = ("recovery", "preferences", "suboptimality", "fixed_point", "sharpening", "shaping")


@dataclass
class Config:
    out_dir: str = field(default="runs/lab", metadata={"help": "where CSV tables and summary.json go"})
    figures_dir: str | None = field(default=None, metadata={"help": "where lab_*.png go (default: --out-dir)"})
    experiments: str = field(default=",".join(EXPERIMENTS), metadata={"help": f"comma list of {', '.join(EXPERIMENTS)}"})
    quick: bool = field(default=False, metadata={"help": "tiny sizes (seconds): for tests and smoke runs"})
    seeds: int = field(default=5, metadata={"help": "number of seeds (fresh reward, data, noise per seed)"})
    vocab: int = field(default=3, metadata={"help": "vocabulary size V (states grow as V**H)"})
    alpha: float = field(default=1.0, metadata={"help": "entropy temperature of the expert and the extraction"})
    reward_scale: float = field(default=1.0, metadata={"help": "std of the random part of the true reward"})
    recovery_horizon: int = field(default=6, metadata={"help": "(a) horizon"})
    recovery_local: float = field(default=0.7, metadata={"help": "(a) weight of the bigram (shareable) part of the reward"})
    recovery_sizes: str = field(default="10,30,100,300,1000,3000,10000,30000", metadata={"help": "(a) demonstration counts N"})
    tv_horizons: str = field(default="2,3,4,5,6,7", metadata={"help": "(b) horizons (pairs: V**(2H))"})
    tv_noise: str = field(default="0.025,0.05,0.1,0.2,0.4", metadata={"help": "(b) eta of random/adversarial logit errors"})
    tv_mle_sizes: str = field(default="100,1000,10000", metadata={"help": "(b) N for the fitted tabular model"})
    horizons: str = field(default="2,3,4,5,6,7,8,9,10", metadata={"help": "(c) horizons"})
    etas: str = field(default="0.25,1.0", metadata={"help": "(c) eta of the random/adversarial logit errors"})
    mle_size: int = field(default=1000, metadata={"help": "(c) N for the fitted tabular model"})
    derail_penalty: float = field(default=0.1, metadata={"help": "(c) per-step cost after the 'mistake' token V-1"})
    smoothing: float = field(default=0.5, metadata={"help": "additive smoothing of the tabular MLE"})
    mlp_hidden: int = field(default=64, metadata={"help": "MLP width"})
    mlp_steps: int = field(default=500, metadata={"help": "MLP full-batch Adam steps"})
    fp_horizon: int = field(default=6, metadata={"help": "(d) horizon"})
    fp_demos: int = field(default=1000, metadata={"help": "(d) demonstrations for the starting model"})
    fp_iters: int = field(default=5, metadata={"help": "(d) extract-then-RL rounds"})
    fp_temperatures: str = field(default="1.0,0.5,2.0", metadata={"help": "(d) RL temperature alpha'/alpha per arm"})
    seq_content: int = field(default=3, metadata={"help": "(e, f) content tokens besides EOS (responses: sum C**k)"})
    seq_horizon: int = field(default=6, metadata={"help": "(e, f) most actions per response, EOS included"})
    seq_logit_std: float = field(default=1.0, metadata={"help": "(e, f) std of pi_ref's i.i.d. normal logits"})
    seq_eos_bias: float = field(default=0.0, metadata={"help": "(e, f) added to EOS's logit in pi_ref"})
    seq_value_mean: float = field(
        default=27.0, metadata={"help": "(e, f) mean soft value V(s) of the LM's logits (SmolLM2-135M: ~27 nats)"})
    seq_value_std: float = field(default=1.0, metadata={"help": "(e, f) std of V(s) across states"})
    sharpen_betas: str = field(default="10,1,0.1,0.01", metadata={"help": "(e) KL coefficients beta"})
    shaping_gammas: str = field(default="1,0.99,0.93,0.8,0.5", metadata={"help": "(f) discounts gamma"})
    shaping_betas: str = field(default="1,0.1", metadata={"help": "(f) beta of the KL-regularised optimum"})
    shaping_phi_std: float = field(default=1.0, metadata={"help": "(f) std of the random potential Phi(s)"})

    def __post_init__(self) -> None:
        if self.quick:
            self.seeds = min(self.seeds, 2)
            self.recovery_horizon, self.recovery_sizes = 4, "30,300,3000"
            self.tv_horizons, self.tv_noise, self.tv_mle_sizes = "2,3,4", "0.05,0.2", "100,1000"
            self.horizons, self.mlp_steps, self.fp_horizon, self.fp_iters = "2,3,4,5", 60, 4, 2
            self.seq_horizon = min(self.seq_horizon, 4)
        unknown = [e for e in self._experiments() if e not in EXPERIMENTS]
        if unknown:
            raise ValueError(f"--experiments: unknown {', '.join(unknown)}; choose from {', '.join(EXPERIMENTS)}")
        if self.seeds < 1:
            raise ValueError(f"--seeds must be >= 1, got {self.seeds}")
        if any(not b > 0 for b in _floats(self.sharpen_betas) + _floats(self.shaping_betas)):
            raise ValueError(f"--sharpen-betas / --shaping-betas must be > 0, got {self.sharpen_betas!r}, "
                             f"{self.shaping_betas!r}")
        if any(not 0 < g <= 1 for g in _floats(self.shaping_gammas)):
            raise ValueError(f"--shaping-gammas must be in (0, 1], got {self.shaping_gammas!r}")

    def _experiments(self) -> list[str]:
        return [e.strip() for e in self.experiments.split(",") if e.strip()]


def _ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x.strip()]


def _floats(s: str) -> list[float]:
    return [float(x) for x in s.split(",") if x.strip()]


def _write_csv(rows: list[dict], path: Path) -> None:
    with path.open("w", newline="") as fh:
        names = list(dict.fromkeys(k for r in rows for k in r))  # rows may differ (pi_ref's has no error columns)
        w = csv.DictWriter(fh, fieldnames=names)
        w.writeheader()
        w.writerows(rows)


def _means(rows: list[dict], keys: tuple[str, ...], values: tuple[str, ...]) -> list[dict]:
    """One dict per key tuple: the keys, then mean, sd and max of each value over seeds (for summary.json)."""
    out = []
    for k in sorted(P.group(rows, keys, values[0])):
        d: dict = dict(zip(keys, k, strict=True))
        for v in values:
            a = P.group(rows, keys, v)[k]
            d[v] = {"mean": float(a.mean()), "sd": float(a.std(ddof=1)) if len(a) > 1 else None, "max": float(a.max())}
        out.append(d)
    return out


def _json_beta(d: dict) -> dict:
    """Strict JSON has no Infinity: pi_ref's row (beta = inf) is written with beta "inf"."""
    return {**d, "beta": d["beta"] if math.isfinite(d["beta"]) else "inf"}


def _slopes(rows: list[dict], x: str, y: str, where: dict, normalise: str | None = None) -> dict:
    s = P.slopes_over_seeds(rows, x, y, where, normalise)
    fin = s[np.isfinite(s)]
    return {"mean": float(fin.mean()) if len(fin) else None,
            "std": float(fin.std(ddof=1)) if len(fin) > 1 else None, "n_seeds": int(len(fin)), "per_seed": s.tolist()}


def run(config: Config) -> int:
    import torch

    torch.set_num_threads(1)  # tiny MLPs: threads only add contention
    out = Path(config.out_dir)
    figs = Path(config.figures_dir or config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figs.mkdir(parents=True, exist_ok=True)
    seeds = list(range(config.seeds))
    summary: dict = {"config": asdict(config), "seconds": {}, "slopes": {}, "checks": {}, "tables": {}}
    V, a, sc = config.vocab, config.alpha, config.reward_scale
    t_all = time.perf_counter()

    for name in config._experiments():
        if name == "recovery":
            keep: dict = {}
            rows, secs = E.timed(E.exp_recovery, seeds, V, config.recovery_horizon, a, sc, _ints(config.recovery_sizes),
                                 config.smoothing, config.mlp_hidden, config.mlp_steps, keep=keep,
                                 local=config.recovery_local)
            P.plot_recovery(rows, keep, figs / "lab_recovery.png")
            print(f"\n(a) reward recovery, V={V} H={config.recovery_horizon}, mean±sd over {len(seeds)} seeds")
            print(P.table(rows, ("model", "n_demos"), ("eps_pi", "return_rmse", "return_corr_expert",
                                                       "token_err_canonical", "token_corr_raw")))
            summary["checks"]["recovery_max_shaping_residual"] = max(r["shaping_residual"] for r in rows)
            for model in ("tabular", "mlp"):
                summary["slopes"][f"recovery_rmse_vs_N_{model}"] = _slopes(rows, "n_demos", "return_rmse", {"model": model})
                big = sorted({r["n_demos"] for r in rows})[-3:]  # the asymptotic regime: the last decade or so
                summary["slopes"][f"recovery_rmse_vs_N_{model}_largest3"] = _slopes(
                    [r for r in rows if r["n_demos"] in big], "n_demos", "return_rmse", {"model": model})
        elif name == "preferences":
            levels = {"random": _floats(config.tv_noise), "adversarial": _floats(config.tv_noise),
                      "mle": [float(n) for n in _ints(config.tv_mle_sizes)]}
            rows, secs = E.timed(E.exp_preferences, seeds, V, _ints(config.tv_horizons), a, sc, levels, config.smoothing)
            P.plot_preferences(rows, figs / "lab_preferences.png")
            print(f"\n(b) Theorem 1: preference TV vs (alpha H / 2) eps_pi, V={V}, mean±sd over {len(seeds)} seeds")
            print(P.table(rows, ("kind", "level", "H"), ("eps_pi", "bound", "tv_max", "tv_mean_expert", "ratio", "coherence")))
            summary["checks"]["preferences_max_ratio"] = max(r["ratio"] for r in rows)
            for kind, lv in levels.items():
                for level in lv:
                    for y in ("tv_max", "tv_mean_expert"):
                        summary["slopes"][f"tv_{y}_vs_H_{kind}_{level:g}"] = _slopes(
                            rows, "H", y, {"kind": kind, "level": level}, "eps_pi")
        elif name == "suboptimality":
            levels = {"random": _floats(config.etas), "adversarial": _floats(config.etas),
                      "mle": [float(config.mle_size)]}
            rows, secs = E.timed(E.exp_suboptimality, seeds, V, _ints(config.horizons), a, sc, config.derail_penalty,
                                 levels, config.smoothing)
            P.plot_suboptimality(rows, figs / "lab_suboptimality.png")
            print(f"\n(c) Theorem 2: suboptimality vs H, V={V}, derail={config.derail_penalty}, mean±sd over {len(seeds)} seeds")
            print(P.table(rows, ("kind", "level", "H"), ("eps_pi", "imit_hard_gap", "imit_soft_gap", "rl_hard_subopt",
                                                         "rl_vs_imitation", "bound_rl", "bound_imit_hard_instance",
                                                         "bound_imit_hard_logratio", "var_return_expert")))
            summary["checks"]["soft_gap_over_bound_max"] = max(r["imit_soft_gap"] / r["bound_imit_soft"] for r in rows)
            summary["checks"]["rl_over_bound_max"] = max(r["rl_hard_subopt"] / r["bound_rl"] for r in rows)
            for b in ("instance", "logratio"):
                summary["checks"][f"imit_hard_over_{b}_bound_max"] = max(
                    r["imit_hard_gap"] / r[f"bound_imit_hard_{b}"] for r in rows if r[f"bound_imit_hard_{b}"] > 0)
            for kind, lv in levels.items():
                for level in lv:
                    where = {"kind": kind, "level": level}
                    for y in ("imit_hard_gap", "imit_soft_gap", "rl_hard_subopt", "bound_imit_hard_instance",
                              "bound_imit_hard_logratio"):
                        summary["slopes"][f"{y}_over_eps_vs_H_{kind}_{level:g}"] = _slopes(rows, "H", y, where, "eps_pi")
                    sub = [r for r in rows if r["kind"] == kind and r["level"] == level]
                    summary["checks"][f"rl_subopt_nonzero_fraction_{kind}_{level:g}"] = float(
                        np.mean([r["rl_hard_subopt"] > 1e-9 for r in sub]))
            summary["slopes"]["var_return_expert_vs_H"] = _slopes(rows, "H", "var_return_expert", {"kind": "mle"})
        elif name == "sharpening":
            rows, secs = E.timed(E.exp_sharpening, seeds, config.seq_content, config.seq_horizon, a, config.seq_logit_std,
                                 config.seq_eos_bias, config.seq_value_mean, config.seq_value_std,
                                 _floats(config.sharpen_betas))
            cols = ("exponent", "mean_len", "mode_mass", "mode_len", "p_len1", "entropy")
            errs = ("gibbs_vs_sharpened", "token_vs_sharpened", "endorm_vs_sharpened", "objective_gap")
            print(f"\n(e) KL-regularised optimum of the gamma = 1 endogenous reward, C={config.seq_content}+EOS "
                  f"H<={config.seq_horizon}, alpha={a}, mean±sd over {len(seeds)} seeds (beta = inf: pi_ref)")
            print(P.table(rows, ("beta",), cols))
            opt = [r for r in rows if math.isfinite(r["beta"])]
            print(P.table(opt, ("beta",), errs))
            summary["tables"][name] = {
                "by_beta": [_json_beta(d) for d in _means(rows, ("beta",), cols) + _means(opt, ("beta",), errs)],
                "rows": [_json_beta(r) for r in rows]}
            for e in errs:
                summary["checks"][f"sharpening_max_{e}"] = max(r[e] for r in opt)
        elif name == "shaping":
            betas = _floats(config.shaping_betas)
            cols = ("ref_mean_len",) + tuple(f"mean_len_b{b:g}" for b in betas) + tuple(f"tv_shaped_b{b:g}" for b in betas)
            flips = ("flips", "flip_frac", "flip_prob_ref", "shift_spread", "flips_vs_logprob", "flip_prob_ref_vs_logprob")
            errs = ("identity_err", "shift_err", "endorm_err") + tuple(f"token_err_b{b:g}" for b in betas)
            vms = sorted({0.0, config.seq_value_mean})
            rows, secs = E.timed(E.exp_shaping, seeds, config.seq_content, config.seq_horizon, a, config.seq_logit_std,
                                 config.seq_eos_bias, vms, config.seq_value_std, config.shaping_phi_std,
                                 _floats(config.shaping_gammas), betas)
            print(f"\n(f) gamma < 1: shaping flips and the discounted optimum, C={config.seq_content}+EOS "
                  f"H<={config.seq_horizon}, Phi ~ N(0, {config.shaping_phi_std}), mean±sd over {len(seeds)} seeds")
            print(P.table(rows, ("value_mean", "gamma"), flips))
            print(P.table(rows, ("value_mean", "gamma"), cols))
            print(P.table(rows, ("value_mean", "gamma"), errs))
            summary["tables"][name] = {"by_gamma": _means(rows, ("value_mean", "gamma"), flips + cols + errs)}
            for e in errs:
                summary["checks"][f"shaping_max_{e}"] = max(r[e] for r in rows)
            one = [r for r in rows if r["gamma"] == 1.0]
            if one:
                summary["checks"]["shaping_flips_at_gamma1"] = sum(r["flips"] + r["flips_vs_logprob"] for r in one)
                summary["checks"]["shaping_max_spread_at_gamma1"] = max(r["shift_spread"] for r in one)
            for g in sorted({r["gamma"] for r in rows if r["gamma"] < 1.0}):
                summary["checks"][f"shaping_min_flips_at_gamma{g:g}"] = min(r["flips"] for r in rows if r["gamma"] == g)
        else:  # fixed_point
            rows, secs = E.timed(E.exp_fixed_point, seeds, V, config.fp_horizon, a, sc, config.fp_demos, config.fp_iters,
                                 _floats(config.fp_temperatures), config.mlp_hidden, config.mlp_steps)
            P.plot_fixed_point(rows, figs / "lab_fixed_point.png")
            print(f"\n(d) extract-then-RL rounds, V={V} H={config.fp_horizon}, mean±sd over {len(seeds)} seeds")
            print(P.table(rows, ("rl_alpha", "iter"), ("drift_from_start", "logit_change", "reward_change",
                                                       "soft_subopt", "hard_return")))
            same = [r for r in rows if r["rl_alpha"] == a and r["iter"] > 0]
            summary["checks"]["fixed_point_max_logit_change"] = P.finite_max(r["logit_change"] for r in same)
            summary["checks"]["fixed_point_max_drift"] = P.finite_max(r["drift_from_start"] for r in same)
        _write_csv(rows, out / f"lab_{name}.csv")
        summary["seconds"][name] = round(secs, 2)
        print(f"[{name}: {secs:.1f} s]")
        (out / "summary.json").write_text(json.dumps(summary, indent=1, default=float))

    summary["seconds"]["total"] = round(time.perf_counter() - t_all, 2)
    print("\nlog-log slopes (mean ± sd over seeds):")
    for k, s in summary["slopes"].items():
        if s["mean"] is not None:
            sd = f" ± {s['std']:.2f}" if s["std"] is not None else ""
            print(f"  {k}: {s['mean']:.2f}{sd} (n={s['n_seeds']})")
    print("checks:", json.dumps(summary["checks"]))
    print(f"total {summary['seconds']['total']:.1f} s; tables in {out}, figures in {figs}")
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=float))
    return 0
