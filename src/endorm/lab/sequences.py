"""Variable-length responses (an EOS action) for the lab: the KL-regularised optimum of the endogenous
reward, and what a discount gamma < 1 does to potential shaping.

Exact by enumeration and backward induction, float64 throughout (``endorm.rewards`` computes in
float32, so it is used as a cross-check of the outcome, not as the exact path).

Layout ("EOS tree"): ``C`` content tokens plus EOS, the action with index ``C``; ``V = C + 1``
actions. A state at depth ``t`` is a prefix of ``t`` content tokens, numbered in base ``C`` (first
token most significant); content action ``a`` leads to state ``i * C + a`` at depth ``t + 1``, EOS
ends the response (V(terminal) = 0). A response has at most ``H`` actions: at depth ``H - 1`` only
EOS is allowed (the others have log-probability -inf). A table is a list of ``H`` arrays,
``table[t]: [C**t, C + 1]``; a state function is a list of ``H`` arrays ``[C**t]``.

Responses are enumerated by length, then lexicographically: ``B = sum_{k<H} C**k`` of them, as
``tokens, states, mask: [B, H]`` (padded with 0 after EOS, ``mask`` marks the actions) and the
per-step quantities of a response are gathered into ``[B, H]`` arrays with 0 off the mask.

The two facts checked here (alpha = the reward's temperature, beta = the KL coefficient):

- With gamma = 1 the endogenous outcome is R(y) = alpha log pi_ref(y) + V(s_1), so the optimum of
  E_pi[R] - beta KL(pi || pi_ref) over response distributions, pi* ∝ pi_ref exp(R / beta), is
  pi_ref^(1 + alpha/beta) / Z: the reference sharpened towards its single most likely response.
- sum_t gamma^(t-1) [alpha log pi_t + V(s_t) - V(s_{t+1})] = sum_t gamma^(t-1) alpha log pi_t + V(s_1)
  - (1 - gamma) sum_{t=2..T} gamma^(t-2) V(s_t): below gamma = 1 the values no longer telescope, and
  likewise a potential Phi shifts the outcome by -Phi(s_1) + (1 - gamma) sum_{t=2..T} gamma^(t-2) Phi(s_t),
  which depends on the response, so rankings and the optimum change.
"""

from __future__ import annotations

import numpy as np
import torch

from endorm import rewards
from endorm.lab.mdp import Table, logsumexp

States = list[np.ndarray]  # states[t]: [C**t]


def _check(content: int, horizon: int) -> None:
    if content < 1 or horizon < 1:
        raise ValueError(f"need content >= 1 and horizon >= 1, got content={content} horizon={horizon}")


def _children(values: States, t: int, content: int) -> np.ndarray:
    """Value of the state each action leads to, ``[C**t, C + 1]``: the child for content, 0 for EOS."""
    nxt = np.zeros((content**t, content + 1))
    if t + 1 < len(values):
        nxt[:, :content] = values[t + 1].reshape(content**t, content)
    return nxt


def make_reference(content: int, horizon: int, rng: np.random.Generator, logit_std: float = 1.0,
                   eos_bias: float = 0.0) -> Table:
    """log pi_ref of a random tabular policy: logits i.i.d. N(0, logit_std), EOS's shifted by eos_bias.

    Returns a table of log-probabilities (rows sum to 1); at depth H-1 only EOS (log-probability 0).
    """
    _check(content, horizon)
    out: Table = []
    for t in range(horizon):
        if t == horizon - 1:
            lp = np.full((content**t, content + 1), -np.inf)
            lp[:, content] = 0.0
        else:
            z = rng.normal(scale=logit_std, size=(content**t, content + 1))
            z[:, content] += eos_bias
            lp = z - logsumexp(z, axis=1)[:, None]
        out.append(lp)
    return out


def logits_with_values(logp: Table, values: States, alpha: float) -> Table:
    """An LM's raw logits for policy ``logp`` whose soft values are ``values``: f = alpha log pi + V(s).

    A causal LM fixes softmax(f / alpha) and leaves each state's offset free; the offset is V_f(s).
    """
    return [alpha * lp + v[:, None] for lp, v in zip(logp, values, strict=True)]


def soft_values(logits: Table, alpha: float) -> States:
    """V_f(s) = alpha * logsumexp(f(s, .) / alpha): ``[C**t]`` per depth."""
    return [alpha * logsumexp(f / alpha, axis=1) for f in logits]


def endogenous_rewards(logits: Table, alpha: float) -> Table:
    """r(s, a) = f(s, a) - V_f(s'), V(terminal) = 0 (so r(s, EOS) = f(s, EOS)): a table."""
    v = soft_values(logits, alpha)
    content = logits[0].shape[1] - 1
    return [f - _children(v, t, content) for t, f in enumerate(logits)]


def shape(reward: Table, phi: States) -> Table:
    """Potential-based shaping r'(s, a, s') = r(s, a) + Phi(s') - Phi(s), Phi(terminal) = 0."""
    content = reward[0].shape[1] - 1
    return [r + _children(phi, t, content) - p[:, None] for t, (r, p) in enumerate(zip(reward, phi, strict=True))]


def enumerate_sequences(content: int, horizon: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All responses ``w EOS`` with ``|w| < H``. Returns (tokens, states, mask), each ``[B, H]``.

    ``states[b, t]`` is the index at depth t of the prefix before action t; padding after EOS is 0.
    """
    _check(content, horizon)
    toks, sts, masks = [], [], []
    for k in range(horizon):  # k content tokens, then EOS
        idx = np.arange(content**k)
        tok = np.zeros((len(idx), horizon), dtype=np.int64)
        st = np.zeros_like(tok)
        for t in range(k):
            tok[:, t] = (idx // content ** (k - 1 - t)) % content
            st[:, t] = idx // content ** (k - t)
        tok[:, k], st[:, k] = content, idx
        m = np.zeros(tok.shape, dtype=bool)
        m[:, : k + 1] = True
        toks.append(tok)
        sts.append(st)
        masks.append(m)
    return np.concatenate(toks), np.concatenate(sts), np.concatenate(masks)


def gather_actions(table: Table, tokens: np.ndarray, states: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """table[t][states[:, t], tokens[:, t]] along every response, 0 off the mask: [B, H]."""
    out = np.zeros(tokens.shape)
    for t, tab in enumerate(table):
        on = mask[:, t]
        out[on, t] = tab[states[on, t], tokens[on, t]]
    return out


def gather_states(values: States, states: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """values[t][states[:, t]] for the state before each action, 0 off the mask: [B, H]."""
    out = np.zeros(states.shape)
    for t, v in enumerate(values):
        on = mask[:, t]
        out[on, t] = v[states[on, t]]
    return out


def discounted_outcome(per_step: np.ndarray, mask: np.ndarray, gamma: float) -> np.ndarray:
    """R = sum_t gamma^(t-1) x_t over each response's actions (t = 1 at the first). [B, H] -> [B]."""
    w = gamma ** np.arange(per_step.shape[1])  # [H]
    return np.sum(np.where(mask, per_step, 0.0) * w, axis=1)


def value_charge_outcome(logp: np.ndarray, values: np.ndarray, mask: np.ndarray, alpha: float,
                         gamma: float) -> np.ndarray:
    """The discounted endogenous outcome in closed form (V(terminal) = 0):

        sum_t gamma^(t-1) alpha log pi_t + V(s_1) - (1 - gamma) sum_{t=2..T} gamma^(t-2) V(s_t).

    Args: logp [B, H] = log pi(a_t|s_t), values [B, H] = V(s_t), mask [B, H]. Returns: [B].
    """
    return alpha * discounted_outcome(logp, mask, gamma) + values[:, 0] - (1.0 - gamma) * discounted_outcome(
        values[:, 1:], mask[:, 1:], gamma)


def shaping_shift(phi: np.ndarray, mask: np.ndarray, gamma: float) -> np.ndarray:
    """How shaping by Phi moves the discounted outcome: -Phi(s_1) + (1 - gamma) sum_{t=2..T} gamma^(t-2) Phi(s_t).

    At gamma = 1 this is the per-prompt constant -Phi(s_1). Args: phi [B, H] = Phi(s_t), mask [B, H]. Returns: [B].
    """
    return -phi[:, 0] + (1.0 - gamma) * discounted_outcome(phi[:, 1:], mask[:, 1:], gamma)


def outcome_via_endorm(logits: Table, alpha: float, tokens: np.ndarray, states: np.ndarray, mask: np.ndarray,
                       aggregation: str, gamma: float) -> np.ndarray:
    """The outcome reward of every response as endorm computes it (``endorm.rewards``, float32): [B].

    Builds the ``[B, H, V]`` logits a causal LM would emit along each response (0 after EOS).
    """
    f = np.zeros(tokens.shape + (logits[0].shape[1],))
    for t, ft in enumerate(logits):
        on = mask[:, t]
        f[on, t] = ft[states[on, t]]
    f_t, labels, m = torch.from_numpy(f), torch.from_numpy(tokens), torch.from_numpy(mask)
    r = rewards.token_rewards_from_logits(f_t, labels, m, alpha)  # [B, H]
    logp = rewards.action_logprobs(f_t, labels, alpha)  # [B, H]
    return rewards.aggregate(r, logp, m, aggregation, gamma, alpha).double().numpy()


def log_normalise(x: np.ndarray) -> np.ndarray:
    """x - logsumexp(x) over responses: [B] -> [B]."""
    return x - logsumexp(x, axis=0)


def gibbs_optimum(logq_ref: np.ndarray, outcome: np.ndarray, beta: float) -> np.ndarray:
    """argmax_q E_q[R] - beta KL(q || q_ref) over response distributions: log(q_ref exp(R / beta) / Z). [B] -> [B]."""
    return log_normalise(logq_ref + outcome / beta)


def sharpened(logq_ref: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    """log(q_ref^(1 + alpha/beta) / Z): the optimum above for the gamma = 1 endogenous reward. [B] -> [B]."""
    return log_normalise((1.0 + alpha / beta) * logq_ref)


def kl_objective(logq: np.ndarray, logq_ref: np.ndarray, outcome: np.ndarray, beta: float) -> float:
    """E_q[R] - beta KL(q || q_ref) of a response distribution q (all [B])."""
    q = np.exp(logq)
    diff = np.where(q > 0, logq - logq_ref, 0.0)
    return float(np.sum(q * (outcome - beta * diff)))


def kl_token_solution(logp_ref: Table, reward: Table, beta: float) -> tuple[Table, float]:
    """Token-level optimum of E[sum_t r_t] - beta KL(pi || pi_ref), by backward induction:

        Q(s, a) = r(s, a) + V(s'),  V(s) = beta log sum_a pi_ref(a|s) exp(Q(s, a) / beta),
        log pi(a|s) = log pi_ref(a|s) + (Q(s, a) - V(s)) / beta,  V(terminal) = 0

    (soft value iteration at temperature beta on the reward r + beta log pi_ref). Pass per-token rewards
    already weighted by gamma^(t-1) for a discounted outcome. Returns (log pi table, V(root)).
    """
    content = reward[0].shape[1] - 1
    H = len(reward)
    values: States = [np.zeros(content**t) for t in range(H)]
    logpi: Table = [np.empty(0)] * H
    for t in reversed(range(H)):
        z = logp_ref[t] + (reward[t] + _children(values, t, content)) / beta  # [C**t, C+1]; -inf where forbidden
        lse = logsumexp(z, axis=1)
        logpi[t] = z - lse[:, None]
        values[t] = beta * lse
    return logpi, float(values[0][0])


def ranking_flips(a: np.ndarray, b: np.ndarray, weights: np.ndarray | None = None,
                  tol: float = 1e-9) -> tuple[int, int, float]:
    """Pairs of responses that two outcomes order oppositely.

    A pair (i, j) flips when (a_i - a_j)(b_i - b_j) < 0 with both gaps above ``tol`` (float rounding
    cannot make a flip). Args: a, b [B], weights [B] (a response distribution; uniform if None).
    Returns: (flipped unordered pairs, all unordered pairs, the weights-probability that two
    independent draws i != j flip).
    """
    da, db = a[:, None] - a[None, :], b[:, None] - b[None, :]  # [B, B]
    flip = (da * db < 0) & (np.abs(da) > tol) & (np.abs(db) > tol)
    n = len(a)
    w = np.full(n, 1.0 / n) if weights is None else weights
    ww = np.outer(w, w)
    np.fill_diagonal(ww, 0.0)
    return int(np.triu(flip, 1).sum()), n * (n - 1) // 2, float(np.sum(ww * flip) / np.sum(ww))
