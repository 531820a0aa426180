"""The lab's "language models" (softmax policies over logits) and the endogenous reward read from them.

Models (all return a logits table ``f[t]: [V**t, V]``, policy = softmax(f / alpha)):

- ``fit_tabular``: maximum likelihood on demonstrations with additive (Dirichlet) smoothing, i.e. the
  MAP estimate; plain MLE would put log 0 = -inf on unseen actions and make eps_pi infinite. States
  never visited get the uniform policy. Logits are ``alpha * log p``, so their soft value is 0 at every
  state; any per-state offset would give the same policy (the extracted reward then differs by
  potential shaping only).
- ``fit_mlp``: a small MLP over a one-hot encoding of the prefix, shared across all states, trained by
  full-batch Adam on the same likelihood. It generalises to unvisited states and has its own arbitrary
  per-state logit offsets.
- ``perturb_logits``: the expert's logits plus a controlled error (eps_pi set by ``eta``):
  ``random`` i.i.d. uniform noise, or ``adversarial`` (every state shifts mass towards its worst action
  under the true Q*, the sign-coherent error that the worst-case bounds describe).

``endogenous_reward`` reads r(s, a) = f(s, a) - V_f(s') with the same ``endorm.rewards`` functions the
real models use: it enumerates every response, builds the ``[B, H, V]`` logits a causal LM would
emit for it, and scatters the per-token rewards back onto the tree. ``endorm.rewards`` computes in
float32, so extracted rewards carry ~1e-6 relative rounding.
"""

from __future__ import annotations

import numpy as np
import torch

from endorm import rewards
from endorm.lab.mdp import Table, enumerate_trajectories, logsumexp


def counts_table(tokens: np.ndarray, vocab: int) -> Table:
    """n(s, a) from demonstrations ``tokens [N, H]``: table of counts."""
    n, H = tokens.shape
    out: Table = []
    state = np.zeros(n, dtype=np.int64)
    for t in range(H):
        c = np.zeros((vocab**t, vocab))
        np.add.at(c, (state, tokens[:, t]), 1.0)
        out.append(c)
        state = state * vocab + tokens[:, t]
    return out


def fit_tabular(tokens: np.ndarray, vocab: int, alpha: float, smoothing: float = 0.5) -> Table:
    """Smoothed maximum-likelihood logit table: f = alpha * log((n + lam) / (n(s) + V lam)).

    Args: tokens [N, H] demonstrations. Returns: logits table.
    """
    if not smoothing > 0:
        raise ValueError(f"smoothing must be > 0 (plain MLE gives log 0 on unseen actions), got {smoothing}")
    out: Table = []
    for c in counts_table(tokens, vocab):
        p = (c + smoothing) / (c.sum(axis=1, keepdims=True) + vocab * smoothing)
        out.append(alpha * np.log(p))
    return out


def state_features(vocab: int, horizon: int, t: int) -> np.ndarray:
    """One-hot encoding of every prefix at depth t: [V**t, (H-1)*V + H + V + 1] (tokens, depth, last token)."""
    idx = np.arange(vocab**t)
    feats = np.zeros((vocab**t, _feature_dim(vocab, horizon)), dtype=np.float32)
    for k in range(t):
        tok = (idx // vocab ** (t - 1 - k)) % vocab
        feats[idx, k * vocab + tok] = 1.0
    feats[:, (horizon - 1) * vocab + t] = 1.0
    last = idx % vocab if t > 0 else np.full(1, vocab)
    feats[idx, (horizon - 1) * vocab + horizon + last] = 1.0
    return feats


def _feature_dim(vocab: int, horizon: int) -> int:
    return (horizon - 1) * vocab + horizon + vocab + 1


def fit_mlp(
    tokens: np.ndarray,
    vocab: int,
    alpha: float,
    hidden: int = 64,
    steps: int = 500,
    lr: float = 1e-2,
    weight_decay: float = 1e-2,
    seed: int = 0,
) -> Table:
    """Shared-parameter policy: MLP(prefix one-hot) -> logits, fitted by maximum likelihood.

    The likelihood only needs visit counts, so the N demonstrations are compressed to one row per
    visited state with its action counts (same loss, much cheaper).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a few-thousand-parameter MLP: extra threads only add contention
    try:
        return _fit_mlp(tokens, vocab, alpha, hidden, steps, lr, weight_decay, seed)
    finally:
        torch.set_num_threads(threads)


def _fit_mlp(
    tokens: np.ndarray, vocab: int, alpha: float, hidden: int, steps: int, lr: float, weight_decay: float, seed: int
) -> Table:
    H = tokens.shape[1]
    torch.manual_seed(seed)
    dim = _feature_dim(vocab, H)
    net = torch.nn.Sequential(
        torch.nn.Linear(dim, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, hidden), torch.nn.Tanh(),
        torch.nn.Linear(hidden, vocab),
    )
    xs, ns = [], []
    for t, c in enumerate(counts_table(tokens, vocab)):
        seen = c.sum(axis=1) > 0
        xs.append(state_features(vocab, H, t)[seen])
        ns.append(c[seen])
    x = torch.from_numpy(np.concatenate(xs))  # [S_seen, dim]
    n = torch.from_numpy(np.concatenate(ns)).float()  # [S_seen, V]
    total = n.sum()
    opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in range(steps):
        opt.zero_grad()
        logp = torch.log_softmax(net(x) / alpha, dim=-1)  # [S_seen, V]
        loss = -(n * logp).sum() / total
        loss.backward()
        opt.step()
    with torch.no_grad():
        return [net(torch.from_numpy(state_features(vocab, H, t))).double().numpy() for t in range(H)]


def perturb_logits(q_star: Table, alpha: float, kind: str, eta: float, rng: np.random.Generator) -> Table:
    """Expert logits Q* plus an error of size eta (in units of alpha * log-probability).

    - ``random``: f = Q* + alpha * eta * u(s, a), u ~ Uniform[-1, 1] i.i.d.
    - ``adversarial``: f = Q* + alpha * eta * (+1 on the worst action under Q*, -1 elsewhere).
    Either way |log pi - log pi_E| <= 2 * eta; ``eps_pi`` measures it exactly.
    """
    out: Table = []
    for q in q_star:
        if kind == "random":
            u = rng.uniform(-1.0, 1.0, size=q.shape)
        elif kind == "adversarial":
            u = -np.ones_like(q)
            u[np.arange(q.shape[0]), q.argmin(axis=1)] = 1.0
        else:
            raise ValueError(f"unknown perturbation kind {kind!r}; choose random or adversarial")
        out.append(q + alpha * eta * u)
    return out


def endogenous_reward(logits: Table, alpha: float) -> tuple[Table, np.ndarray]:
    """r_hat(s, a) = f(s, a) - V_f(s') for every state-action, via ``endorm.rewards``.

    Returns: (reward table r_hat, R_hat [V**H] = sum_t r_hat over each enumerated response, which
    ``endorm.rewards.aggregate(..., "sum")`` computes and equals alpha * log pi(y) + V_f(s_1)).
    """
    vocab, H = logits[0].shape[1], len(logits)
    tokens, states = enumerate_trajectories(vocab, H)
    f = torch.from_numpy(np.stack([logits[t][states[:, t]] for t in range(H)], axis=1))  # [B, H, V]
    labels = torch.from_numpy(tokens)  # [B, H]
    mask = torch.ones(labels.shape, dtype=torch.bool)  # every position is a response token
    r = rewards.token_rewards_from_logits(f, labels, mask, alpha)  # [B, H]
    logp = rewards.action_logprobs(f, labels, alpha)
    total = rewards.aggregate(r, logp, mask, "sum").double().numpy()  # [B]
    r_np = r.double().numpy()
    table: Table = []
    for t in range(H):
        rt = np.empty((vocab**t, vocab))
        rt[states[:, t], tokens[:, t]] = r_np[:, t]  # every (s, a) occurs; duplicates agree
        table.append(rt)
    return table, total


def soft_values_of_logits(logits: Table, alpha: float) -> list[np.ndarray]:
    """V_f(s) = alpha * logsumexp(f(s, .) / alpha) per level (float64): [V**t]."""
    return [alpha * logsumexp(f / alpha, axis=1) for f in logits]
