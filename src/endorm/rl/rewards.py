"""Rewards for GRPO in TRL's ``reward_funcs`` form: the endogenous reward and the baselines it is compared with.

- ``endogenous``: the frozen base model's endogenous reward under RewardConfig's form (default discounted,
  gamma = 0.93; the paper's formula as written, R = alpha*log pi(y|x) + V(s_1), with aggregation sum).
  Under sum, within one GRPO group the prompt and so V(s_1) are shared, so after group normalisation the
  signal is the base model's sequence log-likelihood of the completion: it favours completions the base
  model finds likely, and short ones (fewer negative log-probabilities summed); the discount weighs late
  tokens less, which takes most of that length preference away (docs/RESULTS.md).
- ``mean_logprob``: mean token log pi_base(a_t|s_t) (self-certainty style, length-normalised).
- ``neg_entropy``: minus the mean token entropy of pi_base(.|s_t) over the completion (entropy-minimisation style).
- ``majority``: 1 when the completion's extracted answer equals the most common answer of its group (test-time
  RL style, no labels), else 0; completions without an answer get 0.
- ``correctness``: 1 when the completion's answer matches the dataset's ``answer`` column, graded by math-verify
  (``endorm.mathx.grading.grade``; the supervised upper bound).

Simplification: the intrinsic baselines are computed with the frozen base model (like the endogenous reward),
not with the current policy as in the self-certainty / entropy-minimisation papers, so every reward here is a
fixed function of (prompt, completion) and the runs differ only in the reward.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import torch

from endorm.integrations.trl import EndogenousRewardFunction, split_conversation
from endorm.mathx.grading import extract_answer, grade, is_equiv, normalize_answer

__all__ = ["REWARDS", "MONITORS", "make_reward_func", "masked_token_entropy", "completion_text"]

REWARDS = ("endogenous", "mean_logprob", "neg_entropy", "majority", "correctness")


def completion_text(completion: Any) -> str:
    """The completion as text, for standard (str) or conversational ([{"role", "content"}]) format."""
    if isinstance(completion, str):
        return completion
    return "".join(str(m.get("content", "")) for m in completion if m.get("role") == "assistant")


def masked_token_entropy(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean entropy of softmax(logits) over the positions where ``mask`` is true.

    logits [B, T, V], mask [B, T] (bool) -> [B]; rows with no masked position give 0.
    """
    logp = torch.log_softmax(logits.float(), dim=-1)  # [B, T, V]
    ent = -(logp.exp() * logp).sum(-1)  # [B, T]
    m = mask.float()
    return (ent * m).sum(-1) / m.sum(-1).clamp(min=1.0)


class _BaseModelReward:
    """Shared plumbing: encode (prompt, completion) rows like the endogenous reward model does."""

    def __init__(self, erm: EndogenousRewardFunction, name: str):
        self.erm = erm
        self.__name__ = name

    def _examples(self, prompts: Sequence[Any], completions: Sequence[Any]) -> list:
        from endorm.chat import Example

        out = []
        for i, (p, c) in enumerate(zip(prompts, completions, strict=True)):
            if isinstance(p, str):
                out.append(Example.from_pair(p, completion_text(c), None, row=i))
            else:
                out.append(Example(split_conversation(p, c, i), None, row=i))
        return out


class MeanLogprobReward(_BaseModelReward):
    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float]:
        rm = self.erm.reward_model
        _, stats = rm.stats(self._examples(prompts, completions))
        return [float(s.logprobs.mean()) if len(s.logprobs) else 0.0 for s in stats]


class NegEntropyReward(_BaseModelReward):
    def __init__(self, erm: EndogenousRewardFunction, name: str, batch_size: int = 8):
        super().__init__(erm, name)
        self.batch_size = batch_size

    @torch.no_grad()
    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float]:
        rm = self.erm.reward_model
        enc = [rm.encode(e) for e in self._examples(prompts, completions)]
        device = next(rm.model.parameters()).device
        out: list[float] = []
        for k in range(0, len(enc), self.batch_size):
            chunk = enc[k : k + self.batch_size]
            T = max(len(e.input_ids) for e in chunk)
            ids = torch.full((len(chunk), T), rm._pad_id, dtype=torch.long)
            attn = torch.zeros((len(chunk), T), dtype=torch.long)
            mask = torch.zeros((len(chunk), T), dtype=torch.bool)
            for i, e in enumerate(chunk):
                n = len(e.input_ids)
                ids[i, :n] = torch.tensor(e.input_ids)
                attn[i, :n] = 1
                # the state before response token t is position t-1
                mask[i, e.prompt_len - 1 : n - 1] = True
            logits = rm.model(input_ids=ids.to(device), attention_mask=attn.to(device)).logits
            out.extend((-masked_token_entropy(logits, mask.to(device))).tolist())
        return out


class MajorityVoteReward:
    """1.0 when the answer agrees with the group's most common answer (groups = equal consecutive prompts)."""

    __name__ = "majority"

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float]:
        answers = [extract_answer(completion_text(c)) for c in completions]
        keys = [normalize_answer(a) if a is not None else None for a in answers]
        groups: dict[str, list[int]] = {}
        for i, p in enumerate(prompts):
            groups.setdefault(repr(p), []).append(i)
        rewards = [0.0] * len(completions)
        for idx in groups.values():
            votes = Counter(keys[i] for i in idx if keys[i])
            if not votes:
                continue
            top = votes.most_common(1)[0][0]
            for i in idx:
                rewards[i] = 1.0 if keys[i] and (keys[i] == top or is_equiv(keys[i], top)) else 0.0
        return rewards


class CorrectnessReward:
    """1.0 when the completion's answer matches the dataset column ``answer`` (ground truth; ``grade``), else 0.0."""

    __name__ = "correctness"

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float]:
        gold = kwargs.get("answer")
        if gold is None:
            raise ValueError("the correctness reward needs a dataset column 'answer'")
        if len(gold) != len(completions):
            raise ValueError(f"column 'answer' has {len(gold)} values for {len(completions)} completions")
        return [float(grade(completion_text(c), g)) for c, g in zip(completions, gold, strict=True)]


def _group_indices(prompts: Sequence[Any]) -> list[list[int]]:
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(prompts):
        groups.setdefault(repr(p), []).append(i)
    return list(groups.values())


class AnsweredMonitor:
    """1.0 when the completion has an extractable final answer (logged with weight 0: a curve, not a reward)."""

    __name__ = "answered"

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float]:
        return [float(extract_answer(completion_text(c)) is not None) for c in completions]


class DistinctAnswersMonitor:
    """The share of distinct answers in the completion's group (1 = all differ, 1/G = all agree; no answer
    counts as one more answer); logged with weight 0, it shows a collapse to one answer."""

    __name__ = "distinct_answers"

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float]:
        keys = [extract_answer(completion_text(c)) for c in completions]
        keys = [normalize_answer(k) if k is not None else None for k in keys]
        out = [0.0] * len(completions)
        for idx in _group_indices(prompts):
            share = len({keys[i] for i in idx}) / len(idx)
            for i in idx:
                out[i] = share
        return out


# reward functions with weight 0: TRL logs their means per step (rewards/<name>/mean), the loss ignores them
MONITORS = (AnsweredMonitor, DistinctAnswersMonitor)


def gate_unanswered(rewards: Sequence[float], answered: Sequence[bool], groups: Sequence[Sequence[int]]) -> list[float]:
    """RENT's format gate: inside each group, a completion without a final answer gets the group's lowest reward.

    rewards, answered: (n,) per completion; groups: index lists partitioning range(n). A group with no
    answered completion is left as it is (its advantages are its own business).
    """
    out = [float(r) for r in rewards]
    for idx in groups:
        if not any(answered[i] for i in idx):
            continue
        low = min(out[i] for i in idx)
        for i in idx:
            if not answered[i]:
                out[i] = low
    return out


class FormatGate:
    """Wraps a reward function with ``gate_unanswered`` (groups = equal consecutive prompts, as GRPO's)."""

    def __init__(self, inner: Any):
        self.inner = inner
        self.__name__ = getattr(inner, "__name__", type(inner).__name__)

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float]:
        rewards = self.inner(prompts, completions, **kwargs)
        answered = [extract_answer(completion_text(c)) is not None for c in completions]
        return gate_unanswered(rewards, answered, _group_indices(prompts))


def make_reward_func(name: str, erm: EndogenousRewardFunction | None = None) -> Any:
    """The reward function called ``name`` (one of ``REWARDS``); ``erm`` supplies the frozen base model."""
    if name not in REWARDS:
        raise ValueError(f"unknown reward {name!r}: use one of {', '.join(REWARDS)}")
    if name == "majority":
        return MajorityVoteReward()
    if name == "correctness":
        return CorrectnessReward()
    if erm is None:
        raise ValueError(f"reward {name!r} needs the frozen base model (an EndogenousRewardFunction)")
    if name == "endogenous":
        return erm
    if name == "mean_logprob":
        return MeanLogprobReward(erm, name)
    return NegEntropyReward(erm, name)
