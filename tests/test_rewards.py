"""The reward math against a naive per-position loop and against values computed by hand."""

import math

import pytest
import torch

from endorm import rewards as R


def naive_rewards(logits, labels, mask, alpha):
    """Per row, per action, straight from the definitions with Python floats."""
    B, T, V = logits.shape
    out = torch.zeros(B, T, dtype=torch.float64)
    for b in range(B):
        acts = [t for t in range(T) if mask[b, t]]
        for k, t in enumerate(acts):
            f = logits[b, t].double()
            if k + 1 < len(acts):
                nxt = logits[b, acts[k + 1]].double()
                v_next = alpha * math.log(sum(math.exp(x / alpha) for x in nxt.tolist()))
            else:
                v_next = 0.0  # terminal
            out[b, t] = f[labels[b, t]].item() - v_next
    return out


def random_case(seed=0, B=3, T=7, V=11):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, T, V, generator=g) * 3
    labels = torch.randint(0, V, (B, T), generator=g)
    mask = torch.zeros(B, T, dtype=torch.bool)
    mask[0, 2:7] = True
    mask[1, 0:3] = True
    mask[2, 4:6] = True
    return logits, labels, mask


@pytest.mark.parametrize("alpha", [1.0, 0.5, 2.0])
def test_token_rewards_match_naive_loop(alpha):
    logits, labels, mask = random_case()
    fast = R.token_rewards_from_logits(logits, labels, mask, alpha)
    slow = naive_rewards(logits, labels, mask, alpha)
    torch.testing.assert_close(fast.double(), slow, atol=1e-4, rtol=1e-5)


def test_hand_computed_three_token_vocab():
    # vocab {0,1,2}; a 2-token response. State s1 logits [0, ln 2, ln 3] -> exp = 1,2,3; logsumexp = ln 6.
    # State s2 logits [0, 0, 0] -> logsumexp = ln 3. Actions a1 = 2, a2 = 0. alpha = 1.
    logits = torch.tensor([[[0.0, math.log(2), math.log(3)], [0.0, 0.0, 0.0]]])
    labels = torch.tensor([[2, 0]])
    mask = torch.tensor([[True, True]])
    logp = R.action_logprobs(logits, labels)
    torch.testing.assert_close(logp, torch.tensor([[math.log(3 / 6), math.log(1 / 3)]]))
    V = R.soft_values(logits)
    torch.testing.assert_close(V, torch.tensor([[math.log(6), math.log(3)]]))
    r = R.token_rewards(logp, V, mask)
    # r1 = f(s1,a1) - V(s2) = ln 3 - ln 3 = 0 ; r2 = f(s2,a2) - V(terminal) = 0 - 0 = 0
    torch.testing.assert_close(r, torch.tensor([[0.0, 0.0]]), atol=1e-6, rtol=0)
    # sum = log pi(y|x) + V(s1) = ln(1/2) + ln(1/3) + ln 6 = 0
    assert abs(R.aggregate(r, logp, mask).item()) < 1e-6
    # alpha = 2: V(s1) = 2 ln(1 + 2^(1/2) + 3^(1/2))
    V2 = R.soft_values(logits, 2.0)
    assert abs(V2[0, 0].item() - 2 * math.log(1 + math.sqrt(2) + math.sqrt(3))) < 1e-5


@pytest.mark.parametrize("alpha", [1.0, 0.3, 3.0])
def test_telescoping_identity(alpha):
    logits, labels, mask = random_case(seed=1)
    logp = R.action_logprobs(logits, labels, alpha)
    V = R.soft_values(logits, alpha)
    r = R.token_rewards(logp, V, mask, alpha)
    total = R.aggregate(r, logp, mask, "sum")
    first = mask.float().argmax(-1)  # index of s_1 per row
    expected = alpha * (logp * mask).sum(-1) + V.gather(1, first[:, None]).squeeze(1)
    torch.testing.assert_close(total, expected, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("gamma", [0.93, 0.8, 0.5])
def test_discounted_values_leave_a_per_token_charge(gamma):
    # below gamma = 1 the V terms stop telescoping: with V(terminal) = 0,
    # sum_t g^(t-1) r_t = sum_t g^(t-1) alpha log pi_t + V(s_1) - (1 - g) sum_{t>=2} g^(t-2) V(s_t)
    # (docs/RESULTS.md uses this to explain why the discounted reward still prefers very short completions)
    g = torch.Generator().manual_seed(3)
    alpha, n = 0.7, 9
    logp = -torch.rand(n, generator=g) * 3  # [n]
    vals = torch.rand(n, generator=g) * 30  # [n], positive like a real model's V
    _, total = R.outcome(logp, vals, "discounted", gamma, alpha)
    w = gamma ** torch.arange(n, dtype=torch.float32)  # [n]: g^(t-1)
    charge = (1 - gamma) * (w[:-1] * vals[1:]).sum()
    expected = alpha * (w * logp).sum() + vals[0] - charge
    assert abs(total.item() - expected.item()) < 1e-4
    # the charge grows with length while it is short: one more token of the same V costs more reward
    _, longer = R.outcome(torch.cat([logp, torch.zeros(1)]), torch.cat([vals, vals[-1:]]), "discounted", gamma, alpha)
    assert longer.item() < total.item()


def test_alpha_scaling():
    # scaling logits and alpha together scales every reward by the same factor
    logits, labels, mask = random_case(seed=2)
    r1 = R.token_rewards_from_logits(logits, labels, mask, alpha=1.0)
    r3 = R.token_rewards_from_logits(3 * logits, labels, mask, alpha=3.0)
    torch.testing.assert_close(r3, 3 * r1, atol=1e-4, rtol=1e-5)
    # and log pi at temperature alpha is log softmax(f / alpha)
    lp = R.action_logprobs(logits, labels, 2.0)
    ref = torch.log_softmax(logits / 2.0, -1).gather(-1, labels[..., None]).squeeze(-1)
    torch.testing.assert_close(lp, ref)


def test_terminal_value_is_zero():
    logits, labels, mask = random_case(seed=3)
    V = R.soft_values(logits)
    nxt = R.next_state_values(V, mask)
    for b in range(mask.shape[0]):
        last = mask[b].nonzero().max().item()
        assert nxt[b, last].item() == 0.0
        # the last reward is f(s_T, a_T) exactly
        r = R.token_rewards_from_logits(logits, labels, mask)
        assert abs(r[b, last].item() - logits[b, last, labels[b, last]].item()) < 1e-5
    assert (nxt[~mask] == 0).all()


def test_aggregations():
    logits, labels, mask = random_case(seed=4)
    logp = R.action_logprobs(logits, labels, 1.0)
    V = R.soft_values(logits)
    r = R.token_rewards(logp, V, mask)
    s = R.aggregate(r, logp, mask, "sum")
    torch.testing.assert_close(R.aggregate(r, logp, mask, "mean"), s / mask.sum(-1))
    torch.testing.assert_close(R.aggregate(r, logp, mask, "discounted", gamma=1.0), s)
    g = 0.9
    disc = R.aggregate(r, logp, mask, "discounted", gamma=g)
    lp = R.aggregate(r, logp, mask, "logprob", gamma=g, alpha=0.5)
    for b in range(mask.shape[0]):
        acts = mask[b].nonzero().flatten().tolist()
        assert abs(disc[b].item() - sum(g**k * r[b, t].item() for k, t in enumerate(acts))) < 1e-4
        assert abs(lp[b].item() - sum(g**k * 0.5 * logp[b, t].item() for k, t in enumerate(acts))) < 1e-4
    # each token's term, against a naive loop: gamma^k r_t (discounted), r_t / n (mean), 0 off the mask
    terms = R.reward_terms(r, logp, mask, "discounted", gamma=g)
    mean_terms = R.reward_terms(r, logp, mask, "mean")
    for b in range(mask.shape[0]):
        acts = mask[b].nonzero().flatten().tolist()
        for k, t in enumerate(acts):
            assert abs(terms[b, t].item() - g**k * r[b, t].item()) < 1e-5
            assert abs(mean_terms[b, t].item() - r[b, t].item() / len(acts)) < 1e-5
    assert (terms[~mask] == 0).all() and (mean_terms[~mask] == 0).all()
    with pytest.raises(ValueError, match="unknown aggregation"):
        R.aggregate(r, logp, mask, "max")
    with pytest.raises(ValueError, match="gamma"):
        R.discount_weights(mask, 0.0)
    with pytest.raises(ValueError, match="alpha"):
        R.soft_values(logits, 0.0)


def test_shift_alignment():
    ids = torch.tensor([[10, 11, 12, 20, 21, 22]])
    resp = torch.tensor([[False, False, False, True, True, True]])
    pos = torch.arange(6).float()[None, :, None]  # "logits" that remember their position
    states, labels, act = R.shift_logits_and_labels(pos, ids, resp)
    assert labels[act].tolist() == [20, 21, 22]
    assert states[act].flatten().tolist() == [2.0, 3.0, 4.0]  # s_1 is the last prompt position


@pytest.mark.parametrize("alpha", [1.0, 0.7])
def test_fused_logprobs_and_values(alpha):
    logits, labels, _ = random_case(seed=5)
    lp, v = R.logprobs_and_values(logits.clone(), labels, alpha)
    torch.testing.assert_close(lp, R.action_logprobs(logits, labels, alpha))
    torch.testing.assert_close(v, R.soft_values(logits, alpha))
