"""endorm lab: soft value iteration vs brute force, the recovery identity by hand, the KL-regularised optimum
and the value charge of gamma < 1 by hand and against naive loops, the whole lab tiny."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from endorm.lab import experiments as E
from endorm.lab import fit as F
from endorm.lab import mdp as M
from endorm.lab import sequences as S

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


# ---------------------------------------------------------------------------------------------
# variable-length responses: the KL-regularised optimum (sharpening) and gamma < 1 (shaping)

def _toy() -> tuple[list[np.ndarray], list[np.ndarray]]:
    """C = 2 content tokens (a, b) + EOS, H = 2: responses EOS, a EOS, b EOS.

    pi_ref(a, b, EOS | root) = 1/2, 1/4, 1/4; after a or b only EOS. Soft values V(root) = 3, V(a) = 5,
    V(b) = 1 (the logits' per-state offsets). Returns (log pi_ref, logits) with alpha = 1.
    """
    logp = [np.log([[0.5, 0.25, 0.25]]), np.array([[-np.inf, -np.inf, 0.0]] * 2)]
    return logp, S.logits_with_values(logp, [np.array([3.0]), np.array([5.0, 1.0])], 1.0)


def test_enumerate_sequences_by_hand():
    tokens, states, mask = S.enumerate_sequences(2, 3)
    assert mask.sum(1).tolist() == [1, 2, 2, 3, 3, 3, 3]
    assert tokens[:, 0].tolist() == [2, 0, 1, 0, 0, 1, 1]  # EOS; a; b; aa ab ba bb
    assert tokens[4, :3].tolist() == [0, 1, 2] and states[4, :3].tolist() == [0, 0, 1]  # a b EOS: root, a, ab
    assert states[6, 2] == 3  # the prefix bb is state 3 at depth 2
    logp = S.make_reference(2, 3, np.random.default_rng(0))
    assert np.exp(S.gather_actions(logp, tokens, states, mask).sum(1)).sum() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="content"):
        S.enumerate_sequences(0, 3)


def test_toy_rewards_outcomes_and_optimum_by_hand():
    logp, f = _toy()
    tokens, states, mask = S.enumerate_sequences(2, 2)
    r = S.endogenous_rewards(f, 1.0)
    # r(root, EOS) = log 1/4 + 3; r(root, a) = log 1/2 + 3 - 5; r(a, EOS) = 5; r(root, b) = log 1/4 + 3 - 1; r(b, EOS) = 1
    assert r[0][0].tolist() == pytest.approx([math.log(0.5) - 2, math.log(0.25) + 2, math.log(0.25) + 3])
    assert r[1][:, 2].tolist() == pytest.approx([5.0, 1.0])
    path = S.gather_actions(r, tokens, states, mask)
    # gamma = 1: alpha log pi_ref(y) + V(s_1)
    assert S.discounted_outcome(path, mask, 1.0).tolist() == pytest.approx([math.log(0.25) + 3, math.log(0.5) + 3,
                                                                            math.log(0.25) + 3])
    # gamma = 0.5: each two-token response pays (1 - gamma) V(s_2): 0.5 * 5 after a, 0.5 * 1 after b
    R = S.discounted_outcome(path, mask, 0.5)
    assert R.tolist() == pytest.approx([math.log(0.25) + 3, math.log(0.5) + 0.5, math.log(0.25) + 2.5])
    # and endorm.rewards (float32) computes the same outcomes
    assert S.outcome_via_endorm(f, 1.0, tokens, states, mask, "discounted", 0.5) == pytest.approx(R, abs=1e-5)
    # the KL-regularised optimum at beta = 1, gamma = 1: pi_ref^2 / Z = (1/16, 1/4, 1/16) / (3/8)
    logpi, v_root = S.kl_token_solution(logp, r, 1.0)
    q = np.exp(S.gather_actions(logpi, tokens, states, mask).sum(1))
    assert q.tolist() == pytest.approx([1 / 6, 2 / 3, 1 / 6], abs=1e-12)
    assert float(q @ mask.sum(1)) == pytest.approx(11 / 6)  # E|y|: pi_ref's is 7/4
    # V(root) = beta log E_ref exp(R / beta) = log(1/16 + 1/4 + 1/16) + 3
    assert v_root == pytest.approx(math.log(3 / 8) + 3)
    # at gamma = 0.5 the token rewards carry gamma^(t-1): optimum ∝ pi_ref exp(R_0.5)
    logpi, _ = S.kl_token_solution(logp, [0.5**t * rt for t, rt in enumerate(r)], 1.0)
    q = np.exp(S.gather_actions(logpi, tokens, states, mask).sum(1))
    w = np.array([math.exp(3) / 16, math.exp(0.5) / 4, math.exp(2.5) / 16])
    assert q == pytest.approx(w / w.sum(), abs=1e-12)


def test_toy_shaping_flips_by_hand():
    logp, f = _toy()
    tokens, states, mask = S.enumerate_sequences(2, 2)
    r = S.endogenous_rewards(f, 1.0)
    phi = [np.array([0.7]), np.array([-2.0, 2.0])]  # Phi(root), Phi(a), Phi(b)
    r_shaped = S.shape(r, phi)
    assert r_shaped[0][0].tolist() == pytest.approx((r[0][0] + np.array([-2.0, 2.0, 0.0]) - 0.7).tolist())
    for gamma, shift in ((1.0, [-0.7, -0.7, -0.7]), (0.5, [-0.7, -1.7, 0.3])):
        R = S.discounted_outcome(S.gather_actions(r, tokens, states, mask), mask, gamma)
        R2 = S.discounted_outcome(S.gather_actions(r_shaped, tokens, states, mask), mask, gamma)
        assert (R2 - R).tolist() == pytest.approx(shift)
        assert S.shaping_shift(S.gather_states(phi, states, mask), mask, gamma).tolist() == pytest.approx(shift)
        # gamma = 0.5: R = [1.61, -0.19, 1.11] -> [0.91, -1.89, 1.41]: EOS vs b EOS swaps
        assert S.ranking_flips(R, R2)[0] == (0 if gamma == 1.0 else 1)


def test_ranking_flips_against_a_loop():
    rng = np.random.default_rng(0)
    a, b, w = rng.normal(size=12), rng.normal(size=12), rng.dirichlet(np.ones(12))
    n, pairs, p = S.ranking_flips(a, b, w)
    loop = [(i, j) for i in range(12) for j in range(12) if i != j and (a[i] - a[j]) * (b[i] - b[j]) < 0]
    assert pairs == 66 and n == len(loop) // 2 > 0
    assert p == pytest.approx(sum(w[i] * w[j] for i, j in loop) / (1 - np.sum(w**2)))
    assert S.ranking_flips(a, a + 3.0)[0] == 0  # a constant shift never flips


@pytest.mark.parametrize("beta", [10.0, 1.0, 0.1, 0.01])
def test_kl_optimum_is_sharpened_reference(beta):
    """pi_ref exp(R/beta)/Z = pi_ref^(1+alpha/beta)/Z = the token-level solution on r_t, to 1e-4."""
    alpha, C, H = 0.7, 3, 4
    rng = np.random.default_rng(1)
    logp = S.make_reference(C, H, rng)
    f = S.logits_with_values(logp, [rng.normal(27.0, 2.0, size=C**t) for t in range(H)], alpha)
    tokens, states, mask = S.enumerate_sequences(C, H)
    logq_ref = S.gather_actions(logp, tokens, states, mask).sum(1)
    r = S.endogenous_rewards(f, alpha)
    R = S.discounted_outcome(S.gather_actions(r, tokens, states, mask), mask, 1.0)
    sharp = S.sharpened(logq_ref, alpha, beta)
    assert np.abs(np.exp(S.gibbs_optimum(logq_ref, R, beta)) - np.exp(sharp)).max() < 1e-4
    logpi, v_root = S.kl_token_solution(logp, r, beta)
    assert np.abs(np.exp(S.gather_actions(logpi, tokens, states, mask).sum(1)) - np.exp(sharp)).max() < 1e-4
    # V(root) is the optimal objective, reached by the sharpened law and by no other (a perturbed one is worse)
    assert v_root == pytest.approx(S.kl_objective(sharp, logq_ref, R, beta), abs=1e-8)
    other = S.log_normalise(sharp + 0.05 * rng.normal(size=sharp.shape))
    assert S.kl_objective(other, logq_ref, R, beta) < v_root - 1e-9
    # the endorm.rewards (float32) outcome gives the same law to 1e-4
    R32 = S.outcome_via_endorm(f, alpha, tokens, states, mask, "sum", 1.0)
    assert np.abs(np.exp(S.gibbs_optimum(logq_ref, R32, beta)) - np.exp(sharp)).max() < 1e-4


@pytest.mark.parametrize("beta", [1.0, 0.1])
def test_exact_policy_gradient_converges_to_the_sharpened_reference(beta):
    """Maximise E_q[R] - beta KL over tabular token logits with the exact gradient (all responses enumerated;
    L-BFGS steps), starting from uniform: no closed form involved, and it lands on pi_ref^(1+alpha/beta)/Z."""
    import torch

    alpha, C, H = 1.0, 2, 3
    rng = np.random.default_rng(2)
    logp = S.make_reference(C, H, rng)
    f = S.logits_with_values(logp, [rng.normal(5.0, 1.0, size=C**t) for t in range(H)], alpha)
    tokens, states, mask = S.enumerate_sequences(C, H)
    logq_ref = torch.from_numpy(S.gather_actions(logp, tokens, states, mask).sum(1))
    R = torch.from_numpy(S.discounted_outcome(S.gather_actions(S.endogenous_rewards(f, alpha), tokens, states, mask),
                                              mask, 1.0))
    forbid = [torch.from_numpy(np.where(np.isfinite(lp), 0.0, -np.inf)) for lp in logp]
    theta = [torch.zeros(lp.shape, dtype=torch.float64, requires_grad=True) for lp in logp]
    st, tk, m = torch.from_numpy(states), torch.from_numpy(tokens), torch.from_numpy(mask)

    def objective() -> tuple[torch.Tensor, torch.Tensor]:
        logq = sum(torch.where(m[:, t], torch.log_softmax(theta[t] + forbid[t], -1)[st[:, t], tk[:, t]], 0.0)
                   for t in range(H))
        return (logq.exp() * (R - beta * (logq - logq_ref))).sum(), logq.exp()

    opt = torch.optim.LBFGS(theta, max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-15,
                            line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = -objective()[0]
        loss.backward()
        return loss

    start = objective()[0].item()
    for _ in range(5):
        opt.step(closure)
    value, q = objective()
    sharp = np.exp(S.sharpened(logq_ref.numpy(), alpha, beta))
    assert value.item() > start + 0.1  # it did climb from the uniform policy
    assert np.abs(q.detach().numpy() - sharp).max() < 1e-4


@pytest.mark.parametrize("gamma", [1.0, 0.93, 0.5])
def test_value_charge_identity_against_naive_loops(gamma):
    """sum_t gamma^(t-1) r_t = sum_t gamma^(t-1) alpha log pi_t + V(s_1) - (1-gamma) sum_{t>=2} gamma^(t-2) V(s_t)."""
    alpha, C, H = 0.8, 2, 4
    rng = np.random.default_rng(3)
    logp = S.make_reference(C, H, rng)
    f = S.logits_with_values(logp, [rng.normal(27.0, 3.0, size=C**t) for t in range(H)], alpha)
    tokens, states, mask = S.enumerate_sequences(C, H)

    def v(t: int, s: int) -> float:  # V(s) = alpha log sum_a exp(f(s, a) / alpha), one state at a time
        return alpha * math.log(sum(math.exp(x / alpha) for x in f[t][s] if np.isfinite(x)))

    direct = []
    for toks in tokens:
        s, total = 0, 0.0
        for t, a in enumerate(toks):
            nxt = 0.0 if a == C else v(t + 1, s * C + a)  # EOS ends the response: V(terminal) = 0
            total += gamma**t * (f[t][s, a] - nxt)
            if a == C:
                break
            s = s * C + a
        direct.append(total)
    direct = np.array(direct)
    closed = S.value_charge_outcome(S.gather_actions(logp, tokens, states, mask),
                                    S.gather_states(S.soft_values(f, alpha), states, mask), mask, alpha, gamma)
    assert np.abs(direct - closed).max() < 1e-6
    assert np.abs(S.discounted_outcome(S.gather_actions(S.endogenous_rewards(f, alpha), tokens, states, mask), mask,
                                       gamma) - direct).max() < 1e-6
    assert np.abs(S.outcome_via_endorm(f, alpha, tokens, states, mask, "discounted", gamma) - direct).max() < 1e-4
    if gamma < 1:  # the charge is real: without it the closed form is off by (1-gamma) * sum gamma^(t-2) * ~27
        assert np.abs(direct - closed - (1 - gamma) * S.discounted_outcome(
            S.gather_states(S.soft_values(f, alpha), states, mask)[:, 1:], mask[:, 1:], gamma)).max() > 1.0


def test_shaping_flips_only_below_gamma_one():
    C, H = 3, 4
    rng = np.random.default_rng(4)
    logp = S.make_reference(C, H, rng)
    f = S.logits_with_values(logp, [rng.normal(0.0, 1.0, size=C**t) for t in range(H)], 1.0)
    phi = [rng.normal(size=C**t) for t in range(H)]
    tokens, states, mask = S.enumerate_sequences(C, H)
    r = S.endogenous_rewards(f, 1.0)
    path, shaped = (S.gather_actions(x, tokens, states, mask) for x in (r, S.shape(r, phi)))
    phi_path = S.gather_states(phi, states, mask)
    for gamma in (1.0, 0.99, 0.93, 0.5):
        R, R2 = S.discounted_outcome(path, mask, gamma), S.discounted_outcome(shaped, mask, gamma)
        assert np.abs(R2 - R - S.shaping_shift(phi_path, mask, gamma)).max() < 1e-9
        flips = S.ranking_flips(R, R2)[0]
        if gamma == 1.0:
            assert flips == 0 and np.ptp(R2 - R) < 1e-9 and (R2 - R)[0] == pytest.approx(-phi[0][0])
        else:
            assert flips > 0


def test_new_experiments_quick(tmp_path, capsys):
    from endorm.cli import main

    assert main(["lab", "--quick", "--seeds", "2", "--experiments", "sharpening,shaping",
                 "--out-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "(e) KL-regularised optimum" in out and "(f) gamma < 1" in out
    summary = json.loads((tmp_path / "summary.json").read_text())
    c = summary["checks"]
    assert c["sharpening_max_token_vs_sharpened"] < 1e-4 and c["sharpening_max_gibbs_vs_sharpened"] < 1e-4
    assert c["sharpening_max_endorm_vs_sharpened"] < 1e-4
    assert c["shaping_max_identity_err"] < 1e-6 and c["shaping_max_shift_err"] < 1e-6
    assert c["shaping_flips_at_gamma1"] == 0 and c["shaping_min_flips_at_gamma0.5"] > 0
    by_beta = {d["beta"]: d for d in summary["tables"]["sharpening"]["by_beta"] if "mode_mass" in d}
    # sharpening concentrates pi_ref on its most likely response
    assert by_beta[0.01]["mode_mass"]["mean"] > 0.9 > by_beta["inf"]["mode_mass"]["mean"]
    with (tmp_path / "lab_shaping.csv").open() as fh:
        assert len(list(csv.DictReader(fh))) == 2 * 2 * 5  # seeds x value means x gammas


def test_bad_sequence_flags():
    from endorm.lab.cli import Config

    with pytest.raises(ValueError, match="shaping-gammas"):
        Config(shaping_gammas="1,1.5")
    with pytest.raises(ValueError, match="betas"):
        Config(sharpen_betas="1,0")
