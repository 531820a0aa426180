"""Model forward passes that feed ``endorm.rewards``: per response token, log pi(a_t|s_t) and V(s_t).

Memory: the decoder returns final hidden states [B, T, H]; the output layer is applied only at the
response positions, ``chunk_size`` positions at a time, and each [chunk, vocab] block is reduced to
log pi and logsumexp in float32 at once. Peak memory grows with chunk x vocabulary, never with
batch x length x vocabulary.

Shared prompts: responses to the same prompt (RM-Bench's six, best-of-N's N) reuse one key/value
cache of the prompt, so the prompt is run once per group, not once per response. With sharing on,
every row goes through this two-stage path, a row whose prompt nobody shares too: float32 kernels
round differently in the cached and the one-pass computation (about 1e-5 per token), and a row's
score must not depend on whether other rows in the input happen to share its prompt.

Every row gets explicit position ids, so scores do not depend on padding side or batch company.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from endorm.chat import Encoded, RowError
from endorm.rewards import (
    action_logprobs,
    entropy_and_kl_uniform,
    logprobs_and_values,
    shift_logits_and_labels,
    soft_values,
)

HeadFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class TokenStats:
    """Per response token of one example: the action ids, log pi(a_t|s_t) and V(s_t) (float32, CPU).

    With ``extra=True`` in ``compute_stats`` also the entropy H(pi(.|s_t)) and KL(U || pi(.|s_t)) (the
    intrinsic baselines' per-token terms); otherwise those are None.
    """

    token_ids: list[int]
    logprobs: torch.Tensor  # [n]
    values: torch.Tensor  # [n]
    entropy: torch.Tensor | None = None  # [n]
    kl_uniform: torch.Tensor | None = None  # [n]


def output_head(model: torch.nn.Module) -> HeadFn:
    """hidden [..., H] -> logits [..., V], including the final logit transforms some families apply."""
    head = model.get_output_embeddings()
    cfg = model.config
    cfg = getattr(cfg, "text_config", cfg) if getattr(cfg, "final_logit_softcapping", None) is None else cfg
    softcap = getattr(cfg, "final_logit_softcapping", None)
    scale = getattr(cfg, "logit_scale", None)  # Cohere multiplies
    divide = getattr(cfg, "logits_scaling", None)  # Granite divides

    def apply(h: torch.Tensor) -> torch.Tensor:
        logits = head(h)
        if scale is not None:
            logits = logits * scale
        if divide is not None:
            logits = logits / divide
        if softcap is not None:
            logits = torch.tanh(logits / softcap) * softcap
        return logits

    return apply


def reduce_chunked(
    head: HeadFn, hidden: torch.Tensor, labels: torch.Tensor, alpha: float, chunk_size: int, extra: bool = False
) -> tuple[torch.Tensor, ...]:
    """log pi and V (and with ``extra`` the entropy and KL(U || pi)) for N states without materialising
    [N, V] logits.

    Args: hidden [N, H] (states), labels [N] (actions).
    Returns: (logprobs [N], values [N]) float32, or (logprobs, values, entropy, kl_uniform) with ``extra``.
    """
    cols: list[list[torch.Tensor]] = [[], [], [], []] if extra else [[], []]
    for i in range(0, hidden.shape[0], chunk_size):
        logits = head(hidden[i : i + chunk_size])  # [C, V]: the only vocabulary-sized tensors live here
        if extra:  # before logprobs_and_values, which may scale the logits in place
            ent, klu = entropy_and_kl_uniform(logits, alpha)  # [C], [C]
            cols[2].append(ent)
            cols[3].append(klu)
        lp, v = logprobs_and_values(logits, labels[i : i + chunk_size], alpha)  # [C], [C]
        cols[0].append(lp)
        cols[1].append(v)
    if not cols[0]:
        return tuple(hidden.new_zeros(0, dtype=torch.float32) for _ in cols)
    return tuple(torch.cat(c) for c in cols)  # each [N]


def _decoder(model: torch.nn.Module) -> torch.nn.Module:
    dec = model.get_decoder() if hasattr(model, "get_decoder") else None
    if dec is None or dec is model:
        raise ValueError(f"{type(model).__name__} exposes no decoder (get_decoder); use full_logits=True")
    return dec


def _run_with_cache(dec: torch.nn.Module, cache: object | None = None, **inputs: torch.Tensor) -> tuple:
    """(last hidden state, cache) of a decoder forward pass that reads and extends ``cache``.

    transformers 5.2x renamed the forward argument and output field ``past_key_values`` to ``cache``
    (the old name warns and goes in 5.40); older releases only know ``past_key_values``.
    """
    name = "cache" if "cache" in inspect.signature(dec.forward).parameters else "past_key_values"
    out = dec(**inputs, **({name: cache} if cache is not None else {}), use_cache=True)
    new = out["cache"] if "cache" in out.keys() else out["past_key_values"]
    return out[0], new


def pad_batch(
    batch: Sequence[Encoded], pad_id: int, padding_side: str = "right"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pad a batch. Returns input_ids, attention_mask, response_mask, position_ids, each [B, T]."""
    T = max(len(e.input_ids) for e in batch)
    ids = torch.full((len(batch), T), pad_id, dtype=torch.long)
    attn = torch.zeros((len(batch), T), dtype=torch.long)
    resp = torch.zeros((len(batch), T), dtype=torch.bool)
    for b, e in enumerate(batch):
        n = len(e.input_ids)
        off = 0 if padding_side == "right" else T - n
        ids[b, off : off + n] = torch.tensor(e.input_ids)
        attn[b, off : off + n] = 1
        resp[b, off + e.prompt_len : off + n] = True
    pos = (attn.cumsum(-1) - 1).clamp(min=0)  # [B, T]: positions count real tokens only
    return ids, attn, resp, pos


@torch.no_grad()
def stats_padded(
    model: torch.nn.Module,
    batch: Sequence[Encoded],
    alpha: float = 1.0,
    chunk_size: int = 1024,
    padding_side: str = "right",
    full_logits: bool = False,
    pad_id: int = 0,
    extra: bool = False,
) -> list[TokenStats]:
    """Score a batch of independent examples in one padded forward pass."""
    device = next(model.parameters()).device
    ids, attn, resp, pos = (t.to(device) for t in pad_batch(batch, pad_id, padding_side))
    if full_logits:  # reference path: the model's own logits, [B, T, V]
        logits = model(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=False).logits
        states, labels, act = shift_logits_and_labels(logits, ids, resp)
        logp = action_logprobs(states[act], labels[act], alpha)  # [N]
        vals = soft_values(states[act], alpha)  # [N]
        cols = (logp, vals, *entropy_and_kl_uniform(states[act], alpha)) if extra else (logp, vals)
    else:
        hidden = _decoder(model)(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=False)[0]
        states, labels, act = shift_logits_and_labels(hidden, ids, resp)  # states [B, T-1, H]
        cols = reduce_chunked(output_head(model), states[act], labels[act], alpha, chunk_size, extra)  # each [N]
    return _split(batch, *cols)


@torch.no_grad()
def stats_shared_prompt(
    model: torch.nn.Module,
    group: Sequence[Encoded],
    alpha: float = 1.0,
    chunk_size: int = 1024,
    batch_size: int = 8,
    pad_id: int = 0,
    one_per_pass: bool | None = None,
    extra: bool = False,
) -> list[TokenStats]:
    """Score responses that share one prompt: the prompt is run once and its cache reused.

    ``one_per_pass`` (default: on a CPU) feeds one response per forward pass instead of length-batches.

    The cache holds prompt[:-1]; each response is fed as [prompt[-1], response...], so hidden state j
    is the state before response token j (the last prompt token's state s_1 comes first).
    """
    prompt = group[0].input_ids[: group[0].prompt_len]
    if any(e.input_ids[: e.prompt_len] != prompt for e in group):
        raise ValueError("stats_shared_prompt needs examples with identical prompt tokens")
    if len(prompt) < 2:
        return stats_padded(model, group, alpha, chunk_size, pad_id=pad_id, extra=extra)
    device = next(model.parameters()).device
    dec, head = _decoder(model), output_head(model)
    P = len(prompt) - 1
    _, prefix_cache = _run_with_cache(dec, input_ids=torch.tensor([prompt[:-1]], device=device))
    results: list[TokenStats | None] = [None] * len(group)
    if one_per_pass is None:
        one_per_pass = device.type == "cpu"
    if one_per_pass:
        # on a CPU padded positions cost as much as real ones, so batching responses buys nothing, and
        # one response per pass makes its score bit-identical whatever rows come with it
        batches = [[i] for i in range(len(group))]
    else:
        batches = length_batches([len(e.response_ids) for e in group], batch_size)
    for idx in batches:
        chunk = [group[i] for i in idx]
        S = 1 + max(len(e.response_ids) for e in chunk)
        ids = torch.full((len(chunk), S), pad_id, dtype=torch.long, device=device)
        attn = torch.zeros((len(chunk), P + S), dtype=torch.long, device=device)
        attn[:, :P] = 1
        resp = torch.zeros((len(chunk), S), dtype=torch.bool, device=device)
        for b, e in enumerate(chunk):
            seq = [prompt[-1]] + e.response_ids
            ids[b, : len(seq)] = torch.tensor(seq, device=device)
            attn[b, P : P + len(seq)] = 1
            resp[b, 1 : len(seq)] = True  # everything fed after the last prompt token is response
        cache = copy.deepcopy(prefix_cache)
        cache.batch_repeat_interleave(len(chunk))
        pos = torch.arange(P, P + S, device=device).expand(len(chunk), S)  # [b, S]
        # no cache_position: every release computes it from the cache length P, as position_ids here
        hidden, _ = _run_with_cache(dec, cache, input_ids=ids, attention_mask=attn, position_ids=pos)  # [b, S, H]
        states, labels, act = shift_logits_and_labels(hidden, ids, resp)  # [b, S-1, H], [b, S-1]
        cols = reduce_chunked(head, states[act], labels[act], alpha, chunk_size, extra)  # each [N]
        for i, st in zip(idx, _split(chunk, *cols), strict=True):
            results[i] = st
    return results  # type: ignore[return-value]


def length_batches(lengths: Sequence[int], batch_size: int, max_padding: float = 0.25) -> list[list[int]]:
    """Group indices into batches of similar length, longest first.

    A batch closes when it holds ``batch_size`` rows or when adding the next row would make padding
    more than ``max_padding`` of the batch's real tokens: on a CPU padded positions cost as much as
    real ones, so mixing a 50-token and a 600-token response in one batch wastes most of the work.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    batches: list[list[int]] = []
    cur: list[int] = []
    real = 0
    for i in order:
        if cur and (len(cur) == batch_size or lengths[cur[0]] * (len(cur) + 1) > (1 + max_padding) * (real + lengths[i])):
            batches.append(cur)
            cur, real = [], 0
        cur.append(i)
        real += lengths[i]
    if cur:
        batches.append(cur)
    return batches


def _split(batch: Sequence[Encoded], logp: torch.Tensor, vals: torch.Tensor,
           ent: torch.Tensor | None = None, klu: torch.Tensor | None = None) -> list[TokenStats]:
    out, i = [], 0
    for e in batch:
        n = len(e.response_ids)
        extra = {} if ent is None else {"entropy": ent[i : i + n].cpu(), "kl_uniform": klu[i : i + n].cpu()}
        out.append(TokenStats(e.response_ids, logp[i : i + n].cpu(), vals[i : i + n].cpu(), **extra))
        i += n
    return out


def compute_stats(
    model: torch.nn.Module,
    examples: Sequence[Encoded],
    alpha: float = 1.0,
    batch_size: int = 8,
    chunk_size: int = 1024,
    share_prompts: bool = True,
    padding_side: str = "right",
    full_logits: bool = False,
    pad_id: int = 0,
    extra: bool = False,
) -> list[TokenStats]:
    """TokenStats for every example, in input order; groups shared prompts, batches the rest by length.
    ``extra`` adds each token's entropy and KL(U || pi) (see ``TokenStats``)."""
    results: list[TokenStats | None] = [None] * len(examples)
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, e in enumerate(examples):
        groups.setdefault(tuple(e.input_ids[: e.prompt_len]), []).append(i)
    singles: list[int] = []
    for idx in groups.values():
        if share_prompts and not full_logits:  # a lone row too: its score must not depend on company
            for i, s in zip(idx, stats_shared_prompt(model, [examples[i] for i in idx], alpha, chunk_size,
                                                     batch_size, pad_id, extra=extra), strict=True):
                results[i] = s
        else:
            singles.extend(idx)
    for batch in length_batches([len(examples[i].input_ids) for i in singles], batch_size):
        idx = [singles[b] for b in batch]
        stats = stats_padded(model, [examples[i] for i in idx], alpha, chunk_size, padding_side, full_logits, pad_id,
                             extra)
        for i, s in zip(idx, stats, strict=True):
            results[i] = s
    for e, s in zip(examples, results, strict=True):
        assert s is not None
        if not (torch.isfinite(s.logprobs).all() and torch.isfinite(s.values).all()):
            raise RowError(e.row, "the model returned non-finite log-probabilities or values (nan/inf) for this "
                           "response: its weights are broken or its dtype overflows (try --dtype float32)")
    return results  # type: ignore[return-value]
