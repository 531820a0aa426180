"""The endogenous reward (arXiv 2506.23235) as pure functions on tensors.

A causal LM's logits f(s, .) are read as a soft Q-function. With temperature alpha:

    V(s)         = alpha * logsumexp(f(s, .) / alpha)          soft value
    log pi(a|s)  = (f(s, a) - V(s)) / alpha                    policy = softmax(f / alpha)
    r(s_t, a_t)  = f(s_t, a_t) - V(s_{t+1})                    inverse soft Bellman operator
                 = alpha * log pi(a_t|s_t) + V(s_t) - V(s_{t+1})
    V(terminal)  = 0

and summed with gamma = 1 the outcome reward telescopes to alpha * log pi(y|x) + V(s_1).

Conventions: ``B`` batch, ``T`` positions, ``V`` vocabulary. ``mask`` marks the positions that are
actions (response tokens); the response must be one contiguous run per row, and the state after its
last token is terminal. Nothing here knows about models or tokenizers: ``endorm.scoring`` feeds these
functions, and ``endorm.lab`` uses them on tabular policies.
"""

from __future__ import annotations

import torch

AGGREGATIONS = ("sum", "mean", "discounted", "logprob")


def shift_logits_and_labels(
    logits: torch.Tensor, input_ids: torch.Tensor, response_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Align next-token logits with the tokens they predict. The only place the one-token shift lives.

    The logits at position p are f(s, .) for the state s = tokens[0..p]; they score token p+1::

        input_ids      x0   x1   x2   y0   y1   y2=<eos>
        position        0    1    2    3    4    5
        state           s1 = x0..x2 -> logits[2] predict y0   (action a1)
                        s2 = ..y0   -> logits[3] predict y1   (action a2)
                        s3 = ..y1   -> logits[4] predict y2   (action a3)
                        terminal    =  logits[5] is never used (V = 0)

    Args:
        logits: [B, T, V] (or hidden states [B, T, H]: anything indexed by position).
        input_ids: [B, T] token ids.
        response_mask: [B, T] bool, True on response tokens (the actions).
    Returns:
        (logits [B, T-1, V], labels [B, T-1], action_mask [B, T-1]): row p holds the state before
        action labels[p]; action_mask[p] says whether that action is a response token.
    """
    states = logits[:, :-1]  # [B, T-1, V]: drop the last position, it predicts nothing we score
    labels = input_ids[:, 1:]  # [B, T-1]: token p+1 is the action taken in state p
    action_mask = response_mask[:, 1:].bool()  # [B, T-1]
    return states, labels, action_mask


def soft_values(logits: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """V(s) = alpha * logsumexp(f(s, .) / alpha), in float32.

    Args: logits [..., V]. Returns: [...].
    """
    _check_alpha(alpha)
    return alpha * torch.logsumexp(logits.float() / alpha, dim=-1)  # [...]


def action_logprobs(logits: torch.Tensor, labels: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """log pi(a|s) with pi = softmax(f / alpha), in float32.

    Args: logits [..., V], labels [...] (int). Returns: [...].
    """
    _check_alpha(alpha)
    scaled = logits.float() / alpha  # [..., V]
    chosen = scaled.gather(-1, labels.unsqueeze(-1)).squeeze(-1)  # [...]
    return chosen - torch.logsumexp(scaled, dim=-1)  # [...]


def logprobs_and_values(
    logits: torch.Tensor, labels: torch.Tensor, alpha: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """log pi(a|s) and V(s) together, with one logsumexp (the memory-lean path's inner step).

    Args: logits [..., V], labels [...] (int). Returns: (logprobs [...], values [...]) float32.
    May scale ``logits`` in place when it is already float32 and alpha != 1 (callers pass a temporary).
    """
    _check_alpha(alpha)
    scaled = logits.float()  # no copy if already float32
    if alpha != 1.0:
        scaled = scaled.div_(alpha) if scaled is logits else scaled / alpha  # [..., V]
    lse = torch.logsumexp(scaled, dim=-1)  # [...]
    chosen = scaled.gather(-1, labels.unsqueeze(-1)).squeeze(-1)  # [...]
    return chosen - lse, alpha * lse


def entropy_and_kl_uniform(logits: torch.Tensor, alpha: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Per state: the entropy H(pi(.|s)) and KL(U || pi(.|s)) from the uniform distribution U, pi = softmax(f / alpha).

    KL(U || pi) is the per-token term of Intuitor's self-certainty (arXiv 2505.19590): its mean over a
    response's tokens is that response's self-certainty. With lse = logsumexp(f / alpha) and |V| words,
    log pi_j = f_j / alpha - lse, so H = lse - sum_j pi_j f_j / alpha and KL(U || pi) = lse - mean_j f_j / alpha - log |V|.

    Args: logits [..., V]. Returns: (entropy [...], kl_uniform [...]) float32.
    """
    _check_alpha(alpha)
    scaled = logits.float() / alpha  # [..., V]
    lse = torch.logsumexp(scaled, dim=-1)  # [...]
    probs = torch.softmax(scaled, dim=-1)  # [..., V]
    entropy = lse - (probs * scaled).sum(-1)  # [...]
    kl_uniform = lse - scaled.mean(-1) - torch.log(torch.tensor(float(scaled.shape[-1])))  # [...]
    return entropy, kl_uniform


def next_state_values(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """V(s_{t+1}) for every action position: the value at the next action, 0 after the last one.

    Args: values [B, T] = V(s_t) at action positions, mask [B, T] bool (one contiguous run per row).
    Returns: [B, T], zero where mask is False.
    """
    nxt = torch.zeros_like(values)  # [B, T]
    nxt[:, :-1] = values[:, 1:] * mask[:, 1:]  # the next position is a state only if it is an action
    return nxt * mask  # terminal state (past the last action) has V = 0


def token_rewards(
    logprobs: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, alpha: float = 1.0
) -> torch.Tensor:
    """r_t = alpha * log pi(a_t|s_t) + V(s_t) - V(s_{t+1}), V(terminal) = 0.

    Args: logprobs [B, T], values [B, T] (V(s_t)), mask [B, T] bool. Returns: [B, T], 0 off the mask.
    """
    mask = mask.bool()
    r = alpha * logprobs + values - next_state_values(values, mask)  # [B, T]
    return torch.where(mask, r, torch.zeros_like(r))


def token_rewards_from_logits(
    logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor, alpha: float = 1.0
) -> torch.Tensor:
    """r_t = f(s_t, a_t) - V(s_{t+1}) straight from (already shifted) logits.

    Args: logits [B, T, V], labels [B, T], mask [B, T] bool. Returns: [B, T].
    """
    logp = action_logprobs(logits, labels, alpha)  # [B, T]
    values = soft_values(logits, alpha)  # [B, T]
    return token_rewards(logp, values, mask, alpha)


def discount_weights(mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """gamma^(t-1) for the t-th action of each row (t = 1 at the first response token).

    Args: mask [B, T] bool. Returns: [B, T] float32, 0 off the mask.
    """
    if not 0.0 < gamma <= 1.0:
        raise ValueError(f"gamma must be in (0, 1], got {gamma}")
    mask = mask.bool()
    t = torch.cumsum(mask.long(), dim=-1) - 1  # [B, T]: 0 at the first action
    w = torch.pow(torch.full_like(t, gamma, dtype=torch.float32), t.clamp(min=0).float())
    return torch.where(mask, w, torch.zeros_like(w))


def reward_terms(
    rewards: torch.Tensor,
    logprobs: torch.Tensor,
    mask: torch.Tensor,
    aggregation: str = "sum",
    gamma: float = 1.0,
    alpha: float = 1.0,
) -> torch.Tensor:
    """Each action's term of the outcome reward: summed over T they give ``aggregate``'s R.

    - ``sum``:        r_t                                        (the paper; sums to alpha log pi(y|x) + V(s_1))
    - ``mean``:       r_t / n                                    (n = number of response tokens)
    - ``discounted``: gamma^(t-1) r_t
    - ``logprob``:    gamma^(t-1) alpha log pi(a_t|s_t)          (no value terms)

    ``sum`` and ``mean`` ignore gamma (they are the gamma = 1 forms). These are what a token-level RL
    framework (verl) should put on each token so that its undiscounted return is endorm's outcome.

    Args: rewards [B, T], logprobs [B, T], mask [B, T] bool. Returns: [B, T], 0 off the mask.
    """
    mask = mask.bool()
    if aggregation == "sum":
        return rewards * mask  # [B, T]
    if aggregation == "mean":
        n = mask.sum(-1, keepdim=True).clamp(min=1)  # [B, 1]
        return rewards * mask / n  # [B, T]
    if aggregation == "discounted":
        return rewards * discount_weights(mask, gamma)  # [B, T]
    if aggregation == "logprob":
        return alpha * logprobs * discount_weights(mask, gamma)  # [B, T]
    raise ValueError(f"unknown aggregation {aggregation!r}; choose one of {', '.join(AGGREGATIONS)}")


def aggregate(
    rewards: torch.Tensor,
    logprobs: torch.Tensor,
    mask: torch.Tensor,
    aggregation: str = "sum",
    gamma: float = 1.0,
    alpha: float = 1.0,
) -> torch.Tensor:
    """Outcome reward per row: the sum of ``reward_terms`` (see there for each aggregation).

    Args: rewards [B, T], logprobs [B, T], mask [B, T] bool. Returns: [B].
    """
    return reward_terms(rewards, logprobs, mask, aggregation, gamma, alpha).sum(-1)  # [B]


def outcome(
    logprobs: torch.Tensor, values: torch.Tensor, aggregation: str = "sum", gamma: float = 1.0, alpha: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rewards and the outcome reward of one response from its stored log pi and V(s_t).

    Args: logprobs [n], values [n] (one response, all tokens are actions). Returns: (r [n], R []).
    """
    logp, vals = logprobs[None], values[None]  # [1, n]
    mask = torch.ones_like(logp, dtype=torch.bool)  # [1, n]
    r = token_rewards(logp, vals, mask, alpha)  # [1, n]
    return r[0], aggregate(r, logp, mask, aggregation, gamma, alpha)[0]


def _check_alpha(alpha: float) -> None:
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
