"""The lab experiments: exact numbers for arXiv 2506.23235's Proposition 1, Theorems 1-2, Section 3.3
(a-d), and for the KL-regularised optimum of the endogenous reward and the discount gamma (e-f, on the
variable-length responses of ``endorm.lab.sequences``).

Every quantity is computed exactly (dynamic programming over the prefix tree or enumeration of all
``V**H`` responses); randomness enters only through the ground-truth reward, the demonstrations and
the perturbations, and is averaged over seeds. Each experiment returns a list of row dicts (one per
seed and setting); ``endorm.lab.cli`` writes them as CSV, prints summaries and draws the figures.

Definitions used throughout (pi_E = MaxEnt-optimal expert of the true reward at temperature alpha):

- eps_pi = max over *all* states and actions of |log pi_E(a|s) - log pi(a|s)|.
- soft value J_soft = E[sum_t r + alpha * H(pi(.|s_t))]; its optimum is V*(s_1) and is attained by
  pi_E; hard value J_hard = E[sum_t r] (unregularised), optimum max_y R(y).
- The endogenous-reward-maximising policy of Theorem 2 is taken as the *hard*-optimal policy for
  r_hat (argmax of R_hat). The soft-optimal policy for r_hat at the same alpha is the model itself
  (Section 3.3, experiment d), so it cannot differ from the imitation policy.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np

from endorm.lab import fit as F
from endorm.lab import mdp as M
from endorm.lab import sequences as S

Row = dict[str, float | int | str]


def _pearson(x: np.ndarray, y: np.ndarray, w: np.ndarray | None = None) -> float:
    w = np.full(len(x), 1.0 / len(x)) if w is None else w / w.sum()
    xc, yc = x - np.sum(w * x), y - np.sum(w * y)
    return float(np.sum(w * xc * yc) / math.sqrt(np.sum(w * xc**2) * np.sum(w * yc**2) + 1e-300))


def _traj_probs(logp: M.Table) -> np.ndarray:
    vocab, H = logp[0].shape[1], len(logp)
    tokens, states = M.enumerate_trajectories(vocab, H)
    return np.exp(M.gather(logp, tokens, states).sum(axis=1))


# ----------------------------------------------------------------------------------------------
# (a) Proposition 1: reward recovery modulo potential shaping


def shaping_residual(
    r_hat: M.Table, reward: M.Table, logp: M.Table, logp_e: M.Table, phi: list[np.ndarray], alpha: float
) -> float:
    """max |r_hat - r - alpha (log pi - log pi_E) - (Phi(s) - Phi(s'))| with Phi(terminal) = 0.

    The recovery identity: with Phi = V_f - V*, the extracted reward is the true reward, plus the
    policy error, plus potential shaping. Zero up to float rounding for any logits.
    """
    vocab, H = reward[0].shape[1], len(reward)
    worst = 0.0
    for t in range(H):
        phi_next = phi[t + 1].reshape(vocab**t, vocab) if t + 1 < H else 0.0
        res = r_hat[t] - reward[t] - alpha * (logp[t] - logp_e[t]) - (phi[t][:, None] - phi_next)
        worst = max(worst, float(np.max(np.abs(res))))
    return worst


def exp_recovery(
    seeds: list[int], vocab: int, horizon: int, alpha: float, scale: float, sizes: list[int],
    smoothing: float, mlp_hidden: int, mlp_steps: int, keep: dict | None = None, local: float = 0.0,
) -> list[Row]:
    """Extracted vs true reward as the number of demonstrations N grows, tabular and MLP models."""
    rows: list[Row] = []
    for seed in seeds:
        mdp = M.make_mdp(vocab, horizon, alpha, scale, 0.0, seed, local=local)
        _, logp_e, v_e = M.soft_value_iteration(mdp.reward, alpha)
        R = M.trajectory_returns(mdp.reward)
        p_e = _traj_probs(logp_e)
        d_e = M.occupancy(logp_e)
        r_flat = np.concatenate([r.ravel() for r in mdp.reward])
        for n in sizes:
            demos = M.sample_trajectories(logp_e, n, np.random.default_rng(10_000 * seed + n))
            for model in ("tabular", "mlp"):
                if model == "tabular":
                    f = F.fit_tabular(demos, vocab, alpha, smoothing)
                else:
                    f = F.fit_mlp(demos, vocab, alpha, hidden=mlp_hidden, steps=mlp_steps, seed=seed)
                logp = M.logpolicy_from_logits(f, alpha)
                r_hat, R_hat = F.endogenous_reward(f, alpha)
                err = R_hat - R  # = alpha log pi(y)/pi_E(y) + V_f(s1) - V*(s1)
                centred = err - np.sum(p_e * err)
                phi = [vf - ve for vf, ve in zip(F.soft_values_of_logits(f, alpha), v_e, strict=True)]
                tok_err = sum(
                    float(np.sum(d_e[t][:, None] * np.exp(logp_e[t]) * np.abs(alpha * (logp[t] - logp_e[t]))))
                    for t in range(horizon)
                ) / horizon
                rows.append({
                    "seed": seed, "n_demos": n, "model": model,
                    "eps_pi": M.eps_pi(logp, logp_e),
                    "return_rmse": float(np.sqrt(np.sum(p_e * centred**2))),
                    "return_corr_expert": _pearson(R_hat, R, p_e),
                    "return_corr_uniform": _pearson(R_hat, R),
                    "token_err_canonical": tok_err,
                    "token_corr_raw": _pearson(np.concatenate([r.ravel() for r in r_hat]), r_flat),
                    "shaping_residual": shaping_residual(r_hat, mdp.reward, logp, logp_e, phi, alpha),
                })
                if keep is not None and seed == seeds[0] and model == "mlp":
                    keep[n] = {"R": R, "R_hat": R_hat, "p_e": p_e, "r": r_flat,
                               "r_hat": np.concatenate([r.ravel() for r in r_hat]),
                               "r_hat_unshaped": r_flat + alpha * np.concatenate(
                                   [(a - b).ravel() for a, b in zip(logp, logp_e, strict=True)])}
    return rows


# ----------------------------------------------------------------------------------------------
# (b) Theorem 1: Bradley-Terry preferences of the endogenous reward vs the true reward


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def preference_tv(R: np.ndarray, R_hat: np.ndarray, weights: np.ndarray, chunk: int = 1024) -> tuple[float, float]:
    """Over all ordered pairs (y, y'): max and weights-expected |sigma(R_hat - R_hat') - sigma(R - R')|.

    The TV distance between two Bernoulli preference distributions is |p - q|. Exact, O(B^2) in chunks.
    Returns: (max over pairs, E_{y, y' ~ weights} of the TV).
    """
    worst, mean = 0.0, 0.0
    for i in range(0, len(R), chunk):
        tv = np.abs(_sigmoid(R_hat[i : i + chunk, None] - R_hat[None, :]) - _sigmoid(R[i : i + chunk, None] - R[None, :]))
        worst = max(worst, float(tv.max()))
        mean += float(weights[i : i + chunk] @ tv @ weights)
    return worst, mean


def _model_logits(
    kind: str, level: float, mdp: M.TokenMDP, q_e: M.Table, logp_e: M.Table, rng: np.random.Generator,
    smoothing: float,
) -> M.Table:
    if kind == "mle":
        demos = M.sample_trajectories(logp_e, int(level), rng)
        return F.fit_tabular(demos, mdp.vocab, mdp.alpha, smoothing)
    return F.perturb_logits(q_e, mdp.alpha, kind, level, rng)


def exp_preferences(
    seeds: list[int], vocab: int, horizons: list[int], alpha: float, scale: float,
    levels: dict[str, list[float]], smoothing: float,
) -> list[Row]:
    """Measured preference TV against the bound (alpha * H / 2) * eps_pi, over H, error kind and size."""
    rows: list[Row] = []
    for seed in seeds:
        for H in horizons:
            mdp = M.make_mdp(vocab, H, alpha, scale, 0.0, seed)
            q_e, logp_e, _ = M.soft_value_iteration(mdp.reward, alpha)
            R = M.trajectory_returns(mdp.reward)
            p_e = _traj_probs(logp_e)
            for kind, lv in levels.items():
                for level in lv:
                    rng = np.random.default_rng([seed, H, int(level * 1000)])
                    f = _model_logits(kind, level, mdp, q_e, logp_e, rng, smoothing)
                    logp = M.logpolicy_from_logits(f, alpha)
                    eps = M.eps_pi(logp, logp_e)
                    _, R_hat = F.endogenous_reward(f, alpha)
                    tv_max, tv_mean = preference_tv(R, R_hat, p_e)
                    e = R_hat - R
                    rows.append({
                        "seed": seed, "H": H, "kind": kind, "level": level, "eps_pi": eps,
                        "bound": alpha * H * eps / 2, "tv_max": tv_max, "tv_mean_expert": tv_mean,
                        # the two places the bound gives away: paths whose errors are not all +eps / -eps,
                        # and the sigmoid's slope 1/4, reached only where the true rewards tie
                        "coherence": float((e.max() - e.min()) / (2 * alpha * H * eps)),
                        "ratio": tv_max / (alpha * H * eps / 2),
                    })
    return rows


# ----------------------------------------------------------------------------------------------
# (c) Theorem 2: suboptimality of imitation vs endogenous-reward maximisation as H grows


def _zero_small(x: float, tol: float = 1e-9) -> float:
    """Exact zeros stay zero: DP sums in two orders differ by ~1e-16 and would read as tiny positives."""
    return 0.0 if abs(x) < tol else x


def policy_q(logp: M.Table, reward: M.Table) -> M.Table:
    """Q^pi(s, a) for the unregularised return, by backward induction."""
    H, vocab = len(reward), reward[0].shape[1]
    q: M.Table = [np.empty(0)] * H
    v_next = np.zeros(vocab**H)
    for t in reversed(range(H)):
        q[t] = reward[t] + v_next.reshape(vocab**t, vocab)
        v_next = np.sum(np.exp(logp[t]) * q[t], axis=1)
    return q


def exp_suboptimality(
    seeds: list[int], vocab: int, horizons: list[int], alpha: float, scale: float, derail: float,
    levels: dict[str, list[float]], smoothing: float,
) -> list[Row]:
    """Exact suboptimality of the imitation policy and of the policy maximising r_hat, per H.

    Besides the theorem-shaped bounds, each row carries a bound for the *hard* imitation gap that uses
    the log-ratio assumption itself, |pi - pi_E|(a|s) <= (e^eps - 1) pi_E(a|s), in the
    performance-difference lemma (exact state distribution d^pi, computed by DP):
        J_hard(pi_E) - J_hard(pi) <= (e^eps - 1) sum_t E_{s ~ d^pi_t} E_{a ~ pi_E(s)} |A^{pi_E}(s, a)|.
    ``var_return_expert`` = Var_{pi_E}(R) = sum_t E[A_t^2] (R - E R is a martingale of advantages), which
    bounds the sum above by sqrt(H Var R) when d^pi ~ d^E: at most H^1.5 (Var R <= H^2 range^2 / 4),
    and H when returns diffuse (Var R ~ H, as with i.i.d. rewards).
    """
    rows: list[Row] = []
    for seed in seeds:
        for H in horizons:
            mdp = M.make_mdp(vocab, H, alpha, scale, derail, seed)
            q_e, logp_e, v_e = M.soft_value_iteration(mdp.reward, alpha)
            ev_e = M.evaluate(logp_e, mdp.reward, alpha)
            _, v_hard = M.hard_value_iteration(mdp.reward)
            q_pe = policy_q(logp_e, mdp.reward)
            span = [q.max(axis=1) - q.min(axis=1) for q in q_pe]  # [V**t]
            r_range = max(float(r.max()) for r in mdp.reward) - min(float(r.min()) for r in mdp.reward)
            R, p_e = M.trajectory_returns(mdp.reward), _traj_probs(logp_e)
            var_r = float(p_e @ (R - p_e @ R) ** 2)
            for kind, level in ((k, lv) for k, lvs in levels.items() for lv in lvs):
                rng = np.random.default_rng([seed, H, 7, int(level * 1000)])
                f = _model_logits(kind, level, mdp, q_e, logp_e, rng, smoothing)
                logp = M.logpolicy_from_logits(f, alpha)
                eps = M.eps_pi(logp, logp_e)
                ev = M.evaluate(logp, mdp.reward, alpha)
                r_hat, _ = F.endogenous_reward(f, alpha)
                q_hat, _ = M.hard_value_iteration(r_hat)
                j_rl = M.evaluate(M.greedy_logpolicy(q_hat), mdp.reward, alpha)["hard"]
                tv = [0.5 * np.abs(np.exp(a) - np.exp(b)).sum(axis=1) for a, b in zip(logp, logp_e, strict=True)]
                rows.append({
                    "seed": seed, "H": H, "kind": kind, "level": level, "eps_pi": eps,
                    "imit_soft_gap": float(v_e[0][0] - ev["soft"]),  # = alpha * KL(P_pi || P_E)
                    "imit_hard_gap": ev_e["hard"] - ev["hard"],  # J_hard(pi_E) - J_hard(pi)
                    "rl_hard_subopt": _zero_small(float(v_hard[0][0]) - j_rl),  # max_y R(y) - R(argmax R_hat)
                    "rl_vs_expert": ev_e["hard"] - j_rl,
                    "expert_hard_subopt": float(v_hard[0][0]) - ev_e["hard"],
                    "bound_imit_soft": alpha * H * eps,
                    "bound_rl": 2 * alpha * H * eps,
                    # performance-difference bound sum_t max_s TV_s * span_a Q^{pi_E}(s, .) (instance), and
                    # its worst-case form (e^eps - 1)/2 * (r_max - r_min) * H(H+1)/2 (the H^2 eps shape)
                    "bound_imit_hard_instance": float(sum(np.max(a * b) for a, b in zip(tv, span, strict=True))),
                    "bound_imit_hard_generic": (math.exp(eps) - 1) / 2 * r_range * H * (H + 1) / 2,
                    "bound_imit_hard_logratio": math.expm1(eps) * sum(
                        float(d @ np.sum(np.exp(le) * np.abs(qa - np.sum(np.exp(le) * qa, axis=1, keepdims=True)), axis=1))
                        for d, le, qa in zip(M.occupancy(logp), logp_e, q_pe, strict=True)),
                    "var_return_expert": var_r,
                    "rl_vs_imitation": j_rl - ev["hard"],
                })
    return rows


# ----------------------------------------------------------------------------------------------
# (d) Section 3.3: extract-then-RL iterated


def exp_fixed_point(
    seeds: list[int], vocab: int, horizon: int, alpha: float, scale: float, n_demos: int, iters: int,
    temperatures: list[float], mlp_hidden: int, mlp_steps: int,
) -> list[Row]:
    """pi_0 = MLP fitted to demos; pi_{k+1} = soft-optimal for r_hat(pi_k) at temperature alpha'.

    With alpha' = alpha the new logits equal the old ones exactly (Q of r_hat is f), so nothing moves;
    with alpha' != alpha each round re-tempers the policy, shown for contrast.
    """
    rows: list[Row] = []
    for seed in seeds:
        mdp = M.make_mdp(vocab, horizon, alpha, scale, 0.0, seed)
        _, logp_e, v_e = M.soft_value_iteration(mdp.reward, alpha)
        demos = M.sample_trajectories(logp_e, n_demos, np.random.default_rng(seed))
        f0 = F.fit_mlp(demos, vocab, alpha, hidden=mlp_hidden, steps=mlp_steps, seed=seed)
        logp0 = M.logpolicy_from_logits(f0, alpha)
        for temp in temperatures:
            f, logp = f0, logp0
            f_prev: M.Table | None = None
            prev_rhat: M.Table | None = None
            for k in range(iters + 1):
                ev = M.evaluate(logp, mdp.reward, alpha)
                r_hat, _ = F.endogenous_reward(f, alpha)
                rows.append({
                    "seed": seed, "rl_alpha": temp * alpha, "iter": k,
                    "drift_from_start": M.eps_pi(logp, logp0),
                    "reward_change": float("nan") if prev_rhat is None else max(
                        float(np.max(np.abs(a - b))) for a, b in zip(r_hat, prev_rhat, strict=True)),
                    "soft_subopt": float(v_e[0][0] - ev["soft"]),
                    "hard_return": ev["hard"], "expert_hard_return": M.evaluate(logp_e, mdp.reward, alpha)["hard"],
                    "logit_change": float("nan") if f_prev is None else max(
                        float(np.max(np.abs(a - b))) for a, b in zip(f, f_prev, strict=True)),
                })
                # RL at temperature alpha': soft VI on r_hat; the new model's logits make
                # softmax(f / alpha) equal that policy, i.e. f = (alpha / alpha') * Q.
                q, _, _ = M.soft_value_iteration(r_hat, temp * alpha)
                f_prev, prev_rhat = f, r_hat
                f = [qt / temp for qt in q]
                logp = M.logpolicy_from_logits(f, alpha)
    return rows


# ----------------------------------------------------------------------------------------------
# (e) the KL-regularised optimum of the endogenous reward: pi_ref sharpened (gamma = 1)


def _reference_lm(seed: int, content: int, horizon: int, alpha: float, logit_std: float, eos_bias: float,
                  value_mean: float, value_std: float) -> tuple[M.Table, M.Table]:
    """A random tabular pi_ref over EOS-terminated responses and LM logits for it whose soft values
    V(s) are i.i.d. N(value_mean, value_std). Returns (log pi_ref table, logits table)."""
    rng = np.random.default_rng([seed, 23])
    logp_ref = S.make_reference(content, horizon, rng, logit_std, eos_bias)
    values = [rng.normal(value_mean, value_std, size=content**t) for t in range(horizon)]
    return logp_ref, S.logits_with_values(logp_ref, values, alpha)


def _length_stats(logq: np.ndarray, lengths: np.ndarray) -> Row:
    q = np.exp(logq)
    top = int(np.argmax(q))
    return {"mean_len": float(q @ lengths), "mode_mass": float(q[top]), "mode_len": int(lengths[top]),
            "p_len1": float(q[lengths == 1].sum()), "entropy": float(-np.sum(np.where(q > 0, q * logq, 0.0)))}


def exp_sharpening(
    seeds: list[int], content: int, horizon: int, alpha: float, logit_std: float, eos_bias: float,
    value_mean: float, value_std: float, betas: list[float],
) -> list[Row]:
    """The optimum of E_pi[R] - beta KL(pi || pi_ref) for R = the gamma = 1 endogenous reward of pi_ref's own
    logits, three ways: the Gibbs form pi_ref exp(R/beta)/Z over all responses, the sharpened form
    pi_ref^(1+alpha/beta)/Z, and token-level soft value iteration on the per-token rewards r_t (which carry
    the value terms V(s_t) - V(s_{t+1})). One row per seed and beta, plus beta = inf for pi_ref itself.
    """
    rows: list[Row] = []
    for seed in seeds:
        logp_ref, f = _reference_lm(seed, content, horizon, alpha, logit_std, eos_bias, value_mean, value_std)
        tokens, states, mask = S.enumerate_sequences(content, horizon)
        lengths = mask.sum(axis=1)
        logq_ref = S.gather_actions(logp_ref, tokens, states, mask).sum(axis=1)
        r = S.endogenous_rewards(f, alpha)
        R = S.discounted_outcome(S.gather_actions(r, tokens, states, mask), mask, 1.0)
        R_endorm = S.outcome_via_endorm(f, alpha, tokens, states, mask, "sum", 1.0)
        rows.append({"seed": seed, "beta": math.inf, "exponent": 1.0, **_length_stats(logq_ref, lengths)})
        for beta in betas:
            sharp = S.sharpened(logq_ref, alpha, beta)
            p_sharp = np.exp(sharp)
            logpi, v_root = S.kl_token_solution(logp_ref, r, beta)
            token = S.gather_actions(logpi, tokens, states, mask).sum(axis=1)
            rows.append({
                "seed": seed, "beta": beta, "exponent": 1.0 + alpha / beta, **_length_stats(sharp, lengths),
                "gibbs_vs_sharpened": float(np.abs(np.exp(S.gibbs_optimum(logq_ref, R, beta)) - p_sharp).max()),
                "token_vs_sharpened": float(np.abs(np.exp(token) - p_sharp).max()),
                # float32 endorm.rewards outcome in the Gibbs form: its rounding, magnified by 1/beta
                "endorm_vs_sharpened": float(np.abs(np.exp(S.gibbs_optimum(logq_ref, R_endorm, beta)) - p_sharp).max()),
                # the optimum's value: V(root) of the token solution = the objective at the sharpened policy
                "objective_gap": abs(v_root - S.kl_objective(sharp, logq_ref, R, beta)),
            })
    return rows


# ----------------------------------------------------------------------------------------------
# (f) gamma < 1: the value charge, and potential shaping that no longer telescopes


def exp_shaping(
    seeds: list[int], content: int, horizon: int, alpha: float, logit_std: float, eos_bias: float,
    value_means: list[float], value_std: float, phi_std: float, gammas: list[float], betas: list[float],
) -> list[Row]:
    """Per seed, mean soft value and gamma: the value-charge identity against the direct discounted sum
    (float64, and endorm.rewards' float32 ``discounted`` aggregation); shaping by a random potential
    Phi ~ N(0, phi_std) per state (Phi(terminal) = 0): the shift of every outcome against the formula, its
    spread over responses (0 means a per-prompt constant), ranking flips over all pairs; flips between the
    endogenous outcome and the discounted log-probabilities alone (the shaping Phi = V); and the
    KL-regularised optimum of the discounted outcome at each beta: expected length, checked against the
    token-level solution on the per-token rewards gamma^(t-1) r_t, and its TV distance to the optimum of
    the shaped outcome.
    """
    rows: list[Row] = []
    tokens, states, mask = S.enumerate_sequences(content, horizon)
    lengths = mask.sum(axis=1)
    for seed in seeds:
        for vm in value_means:
            logp_ref, f = _reference_lm(seed, content, horizon, alpha, logit_std, eos_bias, vm, value_std)
            phi = [np.random.default_rng([seed, 29, t]).normal(0.0, phi_std, size=content**t) for t in range(horizon)]
            r = S.endogenous_rewards(f, alpha)
            r_shaped = S.shape(r, phi)
            logp = S.gather_actions(logp_ref, tokens, states, mask)  # [B, H]
            logq_ref = logp.sum(axis=1)
            q_ref = np.exp(logq_ref)
            values = S.gather_states(S.soft_values(f, alpha), states, mask)
            phi_path = S.gather_states(phi, states, mask)
            r_path = S.gather_actions(r, tokens, states, mask)
            rs_path = S.gather_actions(r_shaped, tokens, states, mask)
            for gamma in gammas:
                R = S.discounted_outcome(r_path, mask, gamma)
                R_shaped = S.discounted_outcome(rs_path, mask, gamma)
                R_logprob = alpha * S.discounted_outcome(logp, mask, gamma)
                shift = R_shaped - R
                n_flip, n_pairs, p_flip = S.ranking_flips(R, R_shaped, q_ref)
                n_flip_lp, _, p_flip_lp = S.ranking_flips(R, R_logprob, q_ref)
                row: Row = {
                    "seed": seed, "value_mean": vm, "gamma": gamma, "pairs": n_pairs,
                    "identity_err": float(np.abs(R - S.value_charge_outcome(logp, values, mask, alpha, gamma)).max()),
                    "endorm_err": float(np.abs(
                        R - S.outcome_via_endorm(f, alpha, tokens, states, mask, "discounted", gamma)).max()),
                    "shift_err": float(np.abs(shift - S.shaping_shift(phi_path, mask, gamma)).max()),
                    "shift_spread": float(np.ptp(shift)),
                    "flips": n_flip, "flip_frac": n_flip / n_pairs, "flip_prob_ref": p_flip,
                    "flips_vs_logprob": n_flip_lp, "flip_prob_ref_vs_logprob": p_flip_lp,
                    "ref_mean_len": float(q_ref @ lengths),
                }
                weighted = [gamma**t * rt for t, rt in enumerate(r)]  # what reward_terms puts on token t
                for beta in betas:
                    opt = S.gibbs_optimum(logq_ref, R, beta)
                    logpi, _ = S.kl_token_solution(logp_ref, weighted, beta)
                    token = S.gather_actions(logpi, tokens, states, mask).sum(axis=1)
                    opt_shaped = np.exp(S.gibbs_optimum(logq_ref, R_shaped, beta))
                    row[f"mean_len_b{beta:g}"] = float(np.exp(opt) @ lengths)
                    row[f"token_err_b{beta:g}"] = float(np.abs(np.exp(token) - np.exp(opt)).max())
                    row[f"tv_shaped_b{beta:g}"] = float(0.5 * np.abs(opt_shaped - np.exp(opt)).sum())
                rows.append(row)
    return rows


def timed(fn: Callable[..., list[Row]], *args, **kwargs) -> tuple[list[Row], float]:
    t0 = time.perf_counter()
    rows = fn(*args, **kwargs)
    return rows, time.perf_counter() - t0
