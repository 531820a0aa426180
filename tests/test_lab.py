"""endorm lab: soft value iteration vs brute force, the recovery identity by hand, the whole lab tiny."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from endorm.lab import experiments as E
from endorm.lab import fit as F
from endorm.lab import mdp as M

# ---------------------------------------------------------------------------------------------
# exact solvers against brute-force enumeration


@pytest.mark.parametrize("alpha", [0.3, 1.0, 2.5])
def test_soft_value_iteration_matches_enumeration(alpha):
    mdp = M.make_mdp(vocab=3, horizon=4, alpha=alpha, scale=1.0, derail_penalty=0.2, seed=3, local=0.5)
    _, logp, values = M.soft_value_iteration(mdp.reward, alpha)
    R = M.trajectory_returns(mdp.reward)  # [81], each R(y) summed by hand over the path
    tokens, states = M.enumerate_trajectories(3, 4)
    # brute force, no DP: with deterministic transitions the MaxEnt trajectory law is exp(R/alpha)/Z
    brute_v = alpha * math.log(np.sum(np.exp(R / alpha)))
    assert values[0][0] == pytest.approx(brute_v, abs=1e-10)
    brute_logp = R / alpha - brute_v / alpha
    assert np.allclose(M.gather(logp, tokens, states).sum(axis=1), brute_logp, atol=1e-10)
    # and the soft return of the expert is its value (it is the maximiser of the MaxEnt objective)
    assert M.evaluate(logp, mdp.reward, alpha)["soft"] == pytest.approx(brute_v, abs=1e-10)


def test_hard_value_iteration_and_evaluation_match_enumeration():
    mdp = M.make_mdp(vocab=2, horizon=5, alpha=1.0, seed=1)
    R = M.trajectory_returns(mdp.reward)
    q, values = M.hard_value_iteration(mdp.reward)
    assert values[0][0] == pytest.approx(R.max())
    assert M.evaluate(M.greedy_logpolicy(q), mdp.reward, 1.0)["hard"] == pytest.approx(R.max())
    # any stochastic policy: expected return by DP equals the enumeration average
    rng = np.random.default_rng(0)
    logp = M.logpolicy_from_logits([rng.normal(size=r.shape) for r in mdp.reward], 1.0)
    tokens, states = M.enumerate_trajectories(2, 5)
    p = np.exp(M.gather(logp, tokens, states).sum(axis=1))
    assert p.sum() == pytest.approx(1.0)
    assert M.evaluate(logp, mdp.reward, 1.0)["hard"] == pytest.approx(float(p @ R))


def test_soft_suboptimality_is_alpha_times_trajectory_kl():
    # V*(s1) - J_soft(pi) = alpha * KL(P_pi || P_E): the identity experiment (c) leans on
    mdp = M.make_mdp(vocab=3, horizon=3, alpha=0.7, seed=2)
    q, logp_e, v = M.soft_value_iteration(mdp.reward, 0.7)
    logp = M.logpolicy_from_logits(F.perturb_logits(q, 0.7, "random", 0.3, np.random.default_rng(1)), 0.7)
    gap = v[0][0] - M.evaluate(logp, mdp.reward, 0.7)["soft"]
    assert gap == pytest.approx(0.7 * M.trajectory_kl(logp, logp_e), abs=1e-12)
    assert 0 < gap <= 0.7 * 3 * M.eps_pi(logp, logp_e)


def test_sampling_follows_the_policy():
    mdp = M.make_mdp(vocab=2, horizon=2, alpha=1.0, seed=0)
    _, logp, _ = M.soft_value_iteration(mdp.reward, 1.0)
    toks = M.sample_trajectories(logp, 40_000, np.random.default_rng(0))
    freq = np.bincount(toks[:, 0] * 2 + toks[:, 1], minlength=4) / len(toks)
    tokens, states = M.enumerate_trajectories(2, 2)
    assert np.allclose(freq, np.exp(M.gather(logp, tokens, states).sum(1)), atol=0.01)


def test_bad_inputs_name_the_field():
    with pytest.raises(ValueError, match="alpha"):
        M.make_mdp(3, 2, alpha=0.0)
    with pytest.raises(ValueError, match=r"reward\[1\]"):
        M.TokenMDP(vocab=2, horizon=2, alpha=1.0, reward=[np.zeros((1, 2)), np.zeros((3, 2))])
    with pytest.raises(ValueError, match="smoothing"):
        F.fit_tabular(np.zeros((3, 2), dtype=int), 2, 1.0, smoothing=0.0)
    with pytest.raises(ValueError, match="perturbation kind"):
        F.perturb_logits([np.zeros((1, 2))], 1.0, "gaussian", 0.1, np.random.default_rng(0))


# ---------------------------------------------------------------------------------------------
# Proposition 1: the recovery identity, on a case computed by hand


def _hand_mdp() -> M.TokenMDP:
    # V = 2, H = 2, alpha = 1. Root s0; after token 0 -> s00 (index 0), after token 1 -> s01 (index 1).
    return M.TokenMDP(vocab=2, horizon=2, alpha=1.0,
                      reward=[np.array([[1.0, 0.0]]), np.array([[0.0, 2.0], [1.0, 1.0]])])


def test_soft_values_by_hand():
    _, logp, values = M.soft_value_iteration(_hand_mdp().reward, 1.0)
    # V(s00) = log(e^0 + e^2), V(s01) = log(2e) = 1 + log 2
    assert values[1] == pytest.approx([math.log(1 + math.e**2), 1 + math.log(2)])
    # Q(s0, .) = [1 + log(1 + e^2), 0 + 1 + log 2];  V(s0) = log(e^Q0 + e^Q1)
    q0, q1 = 1 + math.log(1 + math.e**2), 1 + math.log(2)
    assert values[0][0] == pytest.approx(math.log(math.exp(q0) + math.exp(q1)))
    assert math.exp(logp[0][0, 0]) == pytest.approx(math.exp(q0) / (math.exp(q0) + math.exp(q1)))


def test_recovery_identity_by_hand():
    """Logits = Q* + c(s) (any per-state offset: same policy) give r_hat = r + c(s) - c(s')."""
    mdp = _hand_mdp()
    q, logp_e, _ = M.soft_value_iteration(mdp.reward, 1.0)
    c = [np.array([0.5]), np.array([-1.0, 2.0])]  # c(s0) = 0.5, c(s00) = -1, c(s01) = 2; c(terminal) = 0
    logits = [q[0] + c[0][:, None], q[1] + c[1][:, None]]
    r_hat, R_hat = F.endogenous_reward(logits, 1.0)  # through endorm.rewards
    # by hand: r_hat(s0, 0) = 1 + 0.5 - (-1) = 2.5; r_hat(s0, 1) = 0 + 0.5 - 2 = -1.5;
    #          r_hat(s00, .) = [0, 2] + (-1) - 0 = [-1, 1]; r_hat(s01, .) = [1, 1] + 2 = [3, 3]
    assert np.allclose(r_hat[0], [[2.5, -1.5]], atol=1e-6)
    assert np.allclose(r_hat[1], [[-1.0, 1.0], [3.0, 3.0]], atol=1e-6)
    # responses 00, 01, 10, 11: R_hat = R + c(s0) (shaping telescopes; Phi(terminal) = 0)
    assert np.allclose(R_hat, np.array([1 + 0, 1 + 2, 0 + 1, 0 + 1]) + 0.5, atol=1e-6)
    # the same policy in both: pi_hat = pi_E
    assert M.eps_pi(M.logpolicy_from_logits(logits, 1.0), logp_e) < 1e-12


def test_endogenous_reward_of_hand_logits():
    # f(s0) = [0, log 3] -> V = log 4; f(s00) = [0, 0] -> V = log 2; f(s01) = [log 2, 0] -> V = log 3
    logits = [np.array([[0.0, math.log(3)]]), np.array([[0.0, 0.0], [math.log(2), 0.0]])]
    r_hat, R_hat = F.endogenous_reward(logits, 1.0)
    assert np.allclose(r_hat[0], [[-math.log(2), 0.0]], atol=1e-6)  # f - V(s')
    assert np.allclose(r_hat[1], logits[1], atol=1e-6)  # last step: V(terminal) = 0
    # R = alpha log pi(y) + V(s1): y = 00 -> log(1/4 * 1/2) + log 4 = -log 2
    assert R_hat[0] == pytest.approx(-math.log(2), abs=1e-6)


@pytest.mark.parametrize("alpha", [0.5, 1.0])
def test_shaping_identity_for_arbitrary_logits(alpha):
    """r_hat - r = alpha (log pi - log pi_E) + Phi(s) - Phi(s'), Phi = V_f - V*, for any logits."""
    mdp = M.make_mdp(vocab=3, horizon=4, alpha=alpha, seed=5)
    _, logp_e, v_e = M.soft_value_iteration(mdp.reward, alpha)
    rng = np.random.default_rng(0)
    logits = [rng.normal(scale=3.0, size=r.shape) for r in mdp.reward]
    r_hat, _ = F.endogenous_reward(logits, alpha)
    phi = [a - b for a, b in zip(F.soft_values_of_logits(logits, alpha), v_e, strict=True)]
    logp = M.logpolicy_from_logits(logits, alpha)
    assert E.shaping_residual(r_hat, mdp.reward, logp, logp_e, phi, alpha) < 1e-5
    # and it is not trivially zero: a wrong potential breaks it
    assert E.shaping_residual(r_hat, mdp.reward, logp, logp_e, [p * 0 for p in phi], alpha) > 0.1


def test_soft_rl_on_endogenous_reward_returns_the_same_logits():
    """Section 3.3: Q of r_hat at the same alpha is f itself, so extract-then-RL is a fixed point."""
    rng = np.random.default_rng(1)
    logits = [rng.normal(size=(3**t, 3)) for t in range(4)]
    r_hat, _ = F.endogenous_reward(logits, 0.8)
    q, _, _ = M.soft_value_iteration(r_hat, 0.8)
    assert max(float(np.abs(a - b).max()) for a, b in zip(q, logits, strict=True)) < 1e-5
    q2, _, _ = M.soft_value_iteration(r_hat, 0.4)  # another temperature moves the policy
    assert max(float(np.abs(a - b).max()) for a, b in zip(q2, logits, strict=True)) > 0.1


def test_tabular_fit_converges_and_mlp_learns():
    mdp = M.make_mdp(vocab=3, horizon=3, alpha=1.0, seed=0, local=0.7)
    _, logp_e, _ = M.soft_value_iteration(mdp.reward, 1.0)
    rng = np.random.default_rng(0)
    errs = [M.eps_pi(M.logpolicy_from_logits(F.fit_tabular(M.sample_trajectories(logp_e, n, rng), 3, 1.0), 1.0),
                     logp_e) for n in (30, 30_000)]
    assert errs[1] < 0.25 < errs[0]
    demos = M.sample_trajectories(logp_e, 3000, rng)
    mlp = M.logpolicy_from_logits(F.fit_mlp(demos, 3, 1.0, steps=150), 1.0)
    uniform = [np.full_like(lp, -math.log(3)) for lp in logp_e]
    assert M.trajectory_kl(logp_e, mlp) < 0.5 * M.trajectory_kl(logp_e, uniform)


def test_preference_tv_by_hand():
    R = np.array([0.0, 1.0])
    R_hat = np.array([0.0, 0.0])
    worst, mean = E.preference_tv(R, R_hat, np.array([0.5, 0.5]))
    d = 1 / (1 + math.exp(-1)) - 0.5  # |sigma(0) - sigma(+-1)|
    assert worst == pytest.approx(d)
    assert mean == pytest.approx(0.5 * d)  # the two off-diagonal pairs, each weight 1/4


# ---------------------------------------------------------------------------------------------
# the whole lab at a tiny size


def test_whole_lab_quick(tmp_path, capsys):
    from endorm.cli import main

    assert main(["lab", "--quick", "--seeds", "1", "--out-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "(a) reward recovery" in out and "(d) extract-then-RL" in out
    for name in ("recovery", "preferences", "suboptimality", "fixed_point"):
        assert (tmp_path / f"lab_{name}.png").stat().st_size > 10_000
        assert (tmp_path / f"lab_{name}.csv").exists()
    summary = json.loads((tmp_path / "summary.json").read_text())
    checks = summary["checks"]
    # the theorems hold on every row, and the identities are exact up to float32 rounding
    assert checks["recovery_max_shaping_residual"] < 1e-5
    assert 0 < checks["preferences_max_ratio"] <= 1.0
    assert checks["soft_gap_over_bound_max"] <= 1.0
    assert checks["rl_over_bound_max"] <= 1.0
    assert checks["imit_hard_over_instance_bound_max"] <= 1.0 + 1e-9
    assert checks["imit_hard_over_logratio_bound_max"] <= 1.0 + 1e-9
    assert checks["fixed_point_max_logit_change"] < 1e-5
    with (tmp_path / "lab_recovery.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    tab = {int(r["n_demos"]): float(r["return_rmse"]) for r in rows if r["model"] == "tabular"}
    assert tab[3000] < tab[30]  # recovery improves with data


def test_bad_experiment_name():
    from endorm.lab.cli import Config

    with pytest.raises(ValueError, match="experiments"):
        Config(experiments="recovery,nope")
