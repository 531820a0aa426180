"""The token MDP of the lab: exact soft/hard value iteration and exact policy evaluation.

A state is a prefix of tokens; the action appends one token from a vocabulary of size ``V``; after
``H`` actions the episode ends (V(terminal) = 0). Transitions are deterministic, so the states form a
tree and everything is computed exactly by dynamic programming over its levels.

Layout used everywhere in ``endorm.lab``: a *table* is a list of ``H`` arrays, ``table[t]`` of shape
``[V**t, V]``, one row per state at depth ``t`` (prefix of ``t`` tokens, numbered in base ``V`` with
the first token most significant) and one column per action. Taking action ``a`` in state ``i`` at
depth ``t`` leads to state ``i * V + a`` at depth ``t + 1``, so ``next_level.reshape(V**t, V)`` lines
children up with their parent's actions. Numbers are float64 numpy arrays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

Table = list[np.ndarray]  # table[t]: [V**t, V]


@dataclass
class TokenMDP:
    """Deterministic prefix-tree MDP with a known reward ``reward[t]: [V**t, V]`` and temperature alpha."""

    vocab: int
    horizon: int
    alpha: float
    reward: Table

    def __post_init__(self) -> None:
        if self.vocab < 2 or self.horizon < 1:
            raise ValueError(f"need vocab >= 2 and horizon >= 1, got vocab={self.vocab} horizon={self.horizon}")
        if not self.alpha > 0:
            raise ValueError(f"alpha must be > 0, got {self.alpha}")
        for t, r in enumerate(self.reward):
            if r.shape != (self.vocab**t, self.vocab):
                raise ValueError(f"reward[{t}] has shape {r.shape}, expected {(self.vocab**t, self.vocab)}")
        if len(self.reward) != self.horizon:
            raise ValueError(f"reward has {len(self.reward)} levels, expected horizon={self.horizon}")

    @property
    def num_states(self) -> int:
        return sum(self.vocab**t for t in range(self.horizon))


def make_mdp(
    vocab: int,
    horizon: int,
    alpha: float = 1.0,
    scale: float = 1.0,
    derail_penalty: float = 0.0,
    seed: int = 0,
    local: float = 0.0,
) -> TokenMDP:
    """Ground truth: r(s, a) = scale * ((1 - local) * z(s, a) + local * B[last(s), a])
    - derail_penalty * [prefix s + a contains token V-1].

    ``z`` is i.i.d. standard normal per state-action: no structure a model could share across
    states. ``B`` is a standard normal ``[V + 1, V]`` table indexed by the previous token (``V`` at
    the empty prefix): a bigram-like part that a parameter-sharing model can learn from few visits.
    The derail term makes one token a persistent
    mistake: every step after it is taken costs ``derail_penalty``, the classic structure under which
    imitation errors compound (an early mistake changes the reward rate of the whole future).
    """
    if not 0.0 <= local <= 1.0:
        raise ValueError(f"local must be in [0, 1], got {local}")
    rng = np.random.default_rng(seed)
    bigram = np.random.default_rng([seed, 1]).standard_normal((vocab + 1, vocab))
    reward: Table = []
    derailed = np.zeros(1, dtype=bool)  # [V**t]: does prefix s already contain token V-1
    for t in range(horizon):
        z = rng.standard_normal((vocab**t, vocab))
        last = np.arange(vocab**t) % vocab if t > 0 else np.array([vocab])
        z = (1.0 - local) * z + local * bigram[last]
        after = derailed[:, None] | (np.arange(vocab) == vocab - 1)[None, :]  # [V**t, V]
        reward.append(scale * z - derail_penalty * after)
        derailed = after.reshape(-1)
    return TokenMDP(vocab=vocab, horizon=horizon, alpha=alpha, reward=reward)


def logsumexp(x: np.ndarray, axis: int = -1) -> np.ndarray:
    m = np.max(x, axis=axis, keepdims=True)
    return (m + np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True))).squeeze(axis)


def soft_value_iteration(reward: Table, alpha: float) -> tuple[Table, Table, list[np.ndarray]]:
    """MaxEnt-optimal Q, log-policy and V by backward induction (exact, gamma = 1).

    Q(s, a) = r(s, a) + V(s'),  V(s) = alpha * logsumexp(Q(s, .) / alpha),  V(terminal) = 0,
    log pi(a|s) = (Q(s, a) - V(s)) / alpha.

    Returns: (Q table, log-pi table, values) with ``values[t]: [V**t]``.
    """
    H, vocab = len(reward), reward[0].shape[1]
    q: Table = [np.empty(0)] * H
    logp: Table = [np.empty(0)] * H
    values: list[np.ndarray] = [np.empty(0)] * H
    v_next = np.zeros(vocab**H)  # terminal
    for t in reversed(range(H)):
        q[t] = reward[t] + v_next.reshape(vocab**t, vocab)
        values[t] = alpha * logsumexp(q[t] / alpha, axis=1)
        logp[t] = (q[t] - values[t][:, None]) / alpha
        v_next = values[t]
    return q, logp, values


def hard_value_iteration(reward: Table) -> tuple[Table, list[np.ndarray]]:
    """Unregularised optimum: Q(s, a) = r(s, a) + max_a' Q(s', a'). Returns (Q table, values)."""
    H, vocab = len(reward), reward[0].shape[1]
    q: Table = [np.empty(0)] * H
    values: list[np.ndarray] = [np.empty(0)] * H
    v_next = np.zeros(vocab**H)
    for t in reversed(range(H)):
        q[t] = reward[t] + v_next.reshape(vocab**t, vocab)
        values[t] = q[t].max(axis=1)
        v_next = values[t]
    return q, values


def greedy_logpolicy(q: Table) -> Table:
    """log of the deterministic argmax policy (ties go to the lowest token); -inf elsewhere."""
    out: Table = []
    for qt in q:
        lp = np.full(qt.shape, -np.inf)
        lp[np.arange(qt.shape[0]), qt.argmax(axis=1)] = 0.0
        out.append(lp)
    return out


def logpolicy_from_logits(logits: Table, alpha: float) -> Table:
    """log softmax(f / alpha) per state."""
    return [ft / alpha - logsumexp(ft / alpha, axis=1)[:, None] for ft in logits]


def occupancy(logp: Table) -> list[np.ndarray]:
    """Exact state distribution d_t(s) of a policy, ``d[t]: [V**t]`` (d[0] = [1])."""
    d = [np.ones(1)]
    for t in range(len(logp) - 1):
        d.append((d[t][:, None] * np.exp(logp[t])).reshape(-1))
    return d


def evaluate(logp: Table, reward: Table, alpha: float) -> dict[str, float]:
    """Exact expected return of a policy under ``reward``.

    Returns ``hard`` = E[sum_t r], ``entropy`` = E[sum_t H(pi(.|s_t))] and
    ``soft`` = hard + alpha * entropy (the MaxEnt objective the expert maximises).
    """
    d = occupancy(logp)
    hard = ent = 0.0
    for t, lp in enumerate(logp):
        p = np.exp(lp)
        hard += float(np.sum(d[t][:, None] * p * reward[t]))
        plogp = np.where(p > 0, p * np.where(np.isfinite(lp), lp, 0.0), 0.0)
        ent -= float(np.sum(d[t][:, None] * plogp))
    return {"hard": hard, "entropy": ent, "soft": hard + alpha * ent}


def trajectory_kl(logp: Table, logp_ref: Table) -> float:
    """KL(P_pi || P_ref) between the trajectory distributions, exactly: sum_t E_{s~d_t^pi} KL_s."""
    d = occupancy(logp)
    total = 0.0
    for t in range(len(logp)):
        p = np.exp(logp[t])
        diff = np.where(p > 0, logp[t] - logp_ref[t], 0.0)
        total += float(np.sum(d[t][:, None] * p * diff))
    return total


def eps_pi(logp: Table, logp_ref: Table) -> float:
    """max over all states and actions of |log pi(a|s) - log pi_ref(a|s)|."""
    return max(float(np.max(np.abs(a - b))) for a, b in zip(logp, logp_ref, strict=True))


def enumerate_trajectories(vocab: int, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """All ``V**H`` complete responses.

    Returns: (tokens [V**H, H], states [V**H, H]) where ``states[b, t]`` is the index at depth ``t``
    of the prefix before token ``t`` of trajectory ``b``.
    """
    b = np.arange(vocab**horizon)
    tokens = np.stack([(b // vocab ** (horizon - 1 - t)) % vocab for t in range(horizon)], axis=1)
    states = np.stack([b // vocab ** (horizon - t) for t in range(horizon)], axis=1)
    return tokens, states


def gather(table: Table, tokens: np.ndarray, states: np.ndarray) -> np.ndarray:
    """table[t][states[:, t], tokens[:, t]] for every trajectory and step: [B, H]."""
    return np.stack([table[t][states[:, t], tokens[:, t]] for t in range(len(table))], axis=1)


def trajectory_returns(reward: Table) -> np.ndarray:
    """R(y) = sum_t r(s_t, a_t) for all ``V**H`` trajectories (enumeration order): [V**H]."""
    vocab, H = reward[0].shape[1], len(reward)
    tokens, states = enumerate_trajectories(vocab, H)
    return gather(reward, tokens, states).sum(axis=1)


def sample_trajectories(logp: Table, n: int, rng: np.random.Generator) -> np.ndarray:
    """n i.i.d. responses from a policy: tokens [n, H]."""
    vocab = logp[0].shape[1]
    state = np.zeros(n, dtype=np.int64)
    out = np.empty((n, len(logp)), dtype=np.int64)
    for t, lp in enumerate(logp):
        cdf = np.cumsum(np.exp(lp[state]), axis=1)  # [n, V]
        u = rng.random(n)[:, None] * cdf[:, -1:]
        a = np.minimum((u > cdf).sum(axis=1), vocab - 1)
        out[:, t] = a
        state = state * vocab + a
    return out
