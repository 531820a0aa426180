"""The reward methods compared by ``endorm eval``, all on the same base model and the same items.

Pointwise methods score a list of ``Example`` (``messages[-1]`` is the response; ``system`` the
system prompt / principle it was written under) -> list[float]; higher is better:

- ``endorm``           the endogenous outcome reward of arXiv 2506.23235 in RewardConfig's form (default
                       discounted, gamma = 0.93; ``--aggregation sum --gamma 1`` is the paper's
                       R = alpha log pi(y|x) + V(s_1));
- ``genrm-pointwise``  the model, as a judge, rates the response 1-10; the score is the expected rating
                       sum_k k P(k) over the rating answers (or the greedily generated rating);
- ``verifier``         Generative Verifier: P(Yes) / (P(Yes) + P(No)) to "Is this response correct and
                       helpful?";
- ``logprob-mean``     length-normalised log-likelihood (1/n) sum_t log pi(a_t|s_t);
- ``dpo-implicit``     beta (log pi(y|x) - log pi_ref(y|x)) with a reference model;
- ``classifier``       a trained sequence-classification reward model's scalar output.

The pairwise method ``genrm-pairwise`` maps pairs (a, b) of Examples with the same context to
P(a is better): the judge is asked in both orders and mean(P(A | a, b), P(B | b, a)) is returned, so a
judge that always answers "A" gets exactly 1/2 (a tie).

Judge answers are read from one forward pass: every answer string is tokenised as the start of the
assistant turn and its log-probability summed over its tokens (the shared-prompt cache of
``endorm.scoring`` runs the judge prompt once for all answers). Where one answer's tokens are a
prefix of another's ("1" and "10" when "10" is two tokens), the mass of the longer answers is taken
out of the shorter one: P(1) = P("1") - P("10"), so the answers are disjoint events. The answer
probabilities are then renormalised over the answer set.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch

from endorm.chat import Encoded, Example, truncate
from endorm.eval import prompts as P
from endorm.reward_model import EndogenousRewardModel
from endorm.scoring import TokenStats, compute_stats

log = logging.getLogger(__name__)

POINTWISE_METHODS = ("endorm", "genrm-pointwise", "verifier", "logprob-mean", "dpo-implicit", "classifier")
PAIRWISE_METHODS = ("genrm-pairwise",)
METHODS = POINTWISE_METHODS + PAIRWISE_METHODS
NEEDS_EXTRA_MODEL = ("dpo-implicit", "classifier")


# -- rendering judged conversations ------------------------------------------------------------------
def render_question(example: Example) -> str:
    """The conversation before the response: a lone user turn as is, a longer one as 'Role: text' lines."""
    ctx = example.messages[:-1]
    if len(ctx) == 1 and ctx[0]["role"] == "user":
        return ctx[0]["content"]
    return "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in ctx)


def render_principle(example: Example) -> str:
    return P.PRINCIPLE_BLOCK.format(system=example.system) if example.system else ""


def pointwise_prompt(example: Example, template: str = P.POINTWISE) -> str:
    return template.format(question=render_question(example), response=example.messages[-1]["content"],
                           principle=render_principle(example))


def pairwise_prompt(a: Example, b: Example) -> str:
    """Judge prompt with ``a`` as Response A and ``b`` as Response B (same context and system)."""
    return P.PAIRWISE.format(question=render_question(a), response_a=a.messages[-1]["content"],
                             response_b=b.messages[-1]["content"], principle=render_principle(a))


# -- reading judge answers ---------------------------------------------------------------------------
def exclusive_probs(choice_ids: Sequence[Sequence[int]], logps: Sequence[float]) -> list[float]:
    """P(answer exactly c) from P(the tokens of c come next), for answers that may prefix each other.

    For each answer, the probability of its minimal strict extensions among the answers (e.g. "10"
    for "1") is subtracted; minimal extensions are disjoint events, so this is exact.
    Args: choice_ids [C][tokens], logps [C] (log P of each token sequence). Returns: probs [C] (unnormalised).
    """
    n = len(choice_ids)
    probs = [math.exp(lp) for lp in logps]
    out = []
    for i in range(n):
        ci = list(choice_ids[i])
        ext = [j for j in range(n) if j != i and len(choice_ids[j]) > len(ci) and list(choice_ids[j][: len(ci)]) == ci]
        minimal = [j for j in ext if not any(k != j and k in ext and len(choice_ids[k]) < len(choice_ids[j])
                                             and list(choice_ids[j][: len(choice_ids[k])]) == list(choice_ids[k])
                                             for k in ext)]
        out.append(max(probs[i] - sum(probs[j] for j in minimal), 0.0))
    return out


class Judge:
    """Asks the model a question and reads the probabilities of a fixed set of answers."""

    def __init__(self, model: Any, tokenizer: Any, batch_size: int = 8, chunk_size: int = 1024,
                 max_length: int | None = None):
        self.model, self.tokenizer = model.eval(), tokenizer
        self.batch_size, self.chunk_size = batch_size, chunk_size
        self.max_length = max_length or getattr(model.config, "max_position_embeddings", None)
        self.chat = bool(getattr(tokenizer, "chat_template", None))
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_id = int(pad if pad is not None else 0)

    def prompt_ids(self, text: str) -> list[int]:
        if self.chat:
            rendered = self.tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                          add_generation_prompt=True)
            return self.tokenizer(rendered, add_special_tokens=False)["input_ids"]
        return self.tokenizer(text + "\nAnswer:")["input_ids"]

    def choice_ids(self, choice: str) -> list[int]:
        # a base model continues "Answer:" with " 7"; a chat model starts its turn with "7"
        return self.tokenizer(choice if self.chat else " " + choice, add_special_tokens=False)["input_ids"]

    def answer_probs(self, texts: Sequence[str], choices: Sequence[str]) -> list[list[float]]:
        """For each judge prompt, P(answer) over ``choices`` (renormalised to sum to 1).

        Returns: [len(texts)][len(choices)].
        """
        cids = [self.choice_ids(c) for c in choices]
        longest = max(len(c) for c in cids)
        encoded = []
        for k, t in enumerate(texts):
            pids = self.prompt_ids(t)
            for c in cids:
                e = Encoded(pids + c, len(pids), row=f"judge prompt {k}")
                encoded.append(truncate(e, self.max_length) if self.max_length and
                               len(pids) + longest > self.max_length else e)
        stats = compute_stats(self.model, encoded, 1.0, self.batch_size, self.chunk_size, True, pad_id=self.pad_id)
        out = []
        C = len(choices)
        for k in range(len(texts)):
            lps = [float(s.logprobs.sum()) for s in stats[k * C : (k + 1) * C]]
            p = exclusive_probs(cids, lps)
            z = sum(p)
            out.append([x / z for x in p] if z > 0 else [1.0 / C] * C)
        return out

    @torch.no_grad()
    def generate(self, text: str, max_new_tokens: int = 6) -> str:
        ids = torch.tensor([self.prompt_ids(text)], device=next(self.model.parameters()).device)
        out = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                  do_sample=False, pad_token_id=self.pad_id)
        return self.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


# -- methods -----------------------------------------------------------------------------------------
class StatsMemo:
    """TokenStats of (model, encoded ids) reused across methods in one batch (endorm and logprob-mean
    need the same forward pass)."""

    def __init__(self) -> None:
        self._d: dict[tuple, TokenStats] = {}

    def get(self, rm: EndogenousRewardModel, examples: Sequence[Example], resolve: bool = True) -> list[TokenStats]:
        encoded = [rm.encode(e, resolve=resolve) for e in examples]
        keys = [(id(rm.model), rm.config.alpha, tuple(e.input_ids), e.prompt_len) for e in encoded]
        todo = [i for i, k in enumerate(keys) if k not in self._d]
        if todo:
            new = rm.stats_encoded([encoded[i] for i in todo])
            for i, s in zip(todo, new, strict=True):
                self._d[keys[i]] = s
        return [self._d[k] for k in keys]

    def clear(self) -> None:
        self._d.clear()


class Method:
    name = ""
    pairwise = False

    def score(self, examples: Sequence[Example]) -> list[float]:
        raise NotImplementedError

    def compare(self, pairs: Sequence[tuple[Example, Example]]) -> list[float]:
        raise NotImplementedError

    def settings(self) -> dict[str, Any]:
        return {}


class EndoRMMethod(Method):
    """The endogenous outcome reward (any aggregation and contrast of ``RewardConfig``).

    ``contrasts`` lists the contrast contexts whose arrays are also computed (and kept by the harness),
    so every variant of ``endorm.eval.variants`` can be read off one run; the score itself follows
    ``rm.config``.
    """

    name = "endorm"

    def __init__(self, rm: EndogenousRewardModel, memo: StatsMemo | None = None,
                 contrasts: Sequence[str] = ()):
        self.rm, self.memo = rm, memo or StatsMemo()
        want = [*contrasts, rm.config.contrast]
        self.contrasts = [c for c in dict.fromkeys(want) if c != "none"]

    def token_stats(self, examples: Sequence[Example]) -> dict[str, list[TokenStats]]:
        """TokenStats per context: 'plain' (the responses as given) and each contrast."""
        out = {"plain": self.memo.get(self.rm, examples)}
        for c in self.contrasts:
            out[c] = self.memo.get(self.rm, self.rm.contrast_examples(examples, c), resolve=False)
        return out

    def score_with_stats(self, examples: Sequence[Example]) -> tuple[list[float], dict[str, list[TokenStats]]]:
        stats = self.token_stats(examples)
        c = self.rm.config.contrast
        return self.rm.totals(stats["plain"], None if c == "none" else stats[c]), stats

    def score(self, examples: Sequence[Example]) -> list[float]:
        return self.score_with_stats(examples)[0]

    def settings(self) -> dict[str, Any]:
        c = self.rm.config
        return {"alpha": c.alpha, "gamma": c.gamma, "aggregation": c.aggregation, "contrast": c.contrast}


class LogprobMeanMethod(Method):
    """(1/n) sum_t log pi(a_t|s_t), at temperature 1."""

    name = "logprob-mean"

    def __init__(self, rm: EndogenousRewardModel, memo: StatsMemo | None = None):
        self.rm, self.memo = rm.with_config(alpha=1.0), memo or StatsMemo()

    def score(self, examples: Sequence[Example]) -> list[float]:
        return [float(s.logprobs.mean()) for s in self.memo.get(self.rm, examples)]


class DPOImplicitMethod(Method):
    """beta * (log pi(y|x) - log pi_ref(y|x)), summed over response tokens, temperature 1."""

    name = "dpo-implicit"

    def __init__(self, rm: EndogenousRewardModel, ref: EndogenousRewardModel, beta: float = 0.1,
                 memo: StatsMemo | None = None):
        self.rm, self.ref, self.beta = rm.with_config(alpha=1.0), ref.with_config(alpha=1.0), beta
        self.memo = memo or StatsMemo()

    def score(self, examples: Sequence[Example]) -> list[float]:
        pol = self.memo.get(self.rm, examples)
        ref = self.memo.get(self.ref, examples)
        return [self.beta * (float(a.logprobs.sum()) - float(b.logprobs.sum())) for a, b in zip(pol, ref, strict=True)]

    def settings(self) -> dict[str, Any]:
        return {"beta": self.beta}


class PointwiseJudgeMethod(Method):
    """Expected 1-10 rating from the rating-answer probabilities (or the greedy generated rating)."""

    name = "genrm-pointwise"

    def __init__(self, judge: Judge, greedy: bool = False):
        self.judge, self.greedy = judge, greedy

    def score(self, examples: Sequence[Example]) -> list[float]:
        texts = [pointwise_prompt(e) for e in examples]
        if self.greedy:
            return [parse_rating(self.judge.generate(t)) for t in texts]
        values = [float(c) for c in P.POINTWISE_CHOICES]
        return [sum(v * p for v, p in zip(values, probs, strict=True)) for probs in self.judge.answer_probs(texts, P.POINTWISE_CHOICES)]

    def settings(self) -> dict[str, Any]:
        return {"judge_greedy": self.greedy}


def parse_rating(text: str) -> float:
    """The first integer 1..10 in a generated answer; NaN when there is none (counts as a loss)."""
    m = re.search(r"\d+", text)
    if m and 1 <= int(m.group()) <= 10:
        return float(m.group())
    return float("nan")


class VerifierMethod(Method):
    """P(Yes) / (P(Yes) + P(No))."""

    name = "verifier"

    def __init__(self, judge: Judge):
        self.judge = judge

    def score(self, examples: Sequence[Example]) -> list[float]:
        texts = [pointwise_prompt(e, P.VERIFIER) for e in examples]
        return [probs[0] for probs in self.judge.answer_probs(texts, P.VERIFIER_CHOICES)]


class PairwiseJudgeMethod(Method):
    """P(a better than b), asked in both orders."""

    name = "genrm-pairwise"
    pairwise = True

    def __init__(self, judge: Judge):
        self.judge = judge

    def compare(self, pairs: Sequence[tuple[Example, Example]]) -> list[float]:
        texts = []
        for a, b in pairs:
            texts += [pairwise_prompt(a, b), pairwise_prompt(b, a)]
        probs = self.judge.answer_probs(texts, P.PAIRWISE_CHOICES)  # [2 * pairs][A, B]
        return [(probs[2 * k][0] + probs[2 * k + 1][1]) / 2 for k in range(len(pairs))]


class ClassifierMethod(Method):
    """A trained reward model (AutoModelForSequenceClassification): one logit, or logit[1] - logit[0]."""

    name = "classifier"

    def __init__(self, model: Any, tokenizer: Any, batch_size: int = 8, max_length: int | None = None):
        self.model, self.tokenizer, self.batch_size = model.eval(), tokenizer, batch_size
        self.max_length = max_length or getattr(model.config, "max_position_embeddings", None)
        n = int(getattr(model.config, "num_labels", 1))
        if n not in (1, 2):
            raise ValueError(f"a classifier reward model needs 1 or 2 labels, this one has {n}")
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        if getattr(model.config, "pad_token_id", None) is None:
            model.config.pad_token_id = tokenizer.pad_token_id

    def text(self, e: Example) -> str:
        msgs = ([{"role": "system", "content": e.system}] if e.system else []) + list(e.messages)
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(msgs, tokenize=False)
        return "\n\n".join(m["content"] for m in msgs)

    @torch.no_grad()
    def score(self, examples: Sequence[Example]) -> list[float]:
        out: list[float] = []
        device = next(self.model.parameters()).device
        for i in range(0, len(examples), self.batch_size):
            texts = [self.text(e) for e in examples[i : i + self.batch_size]]
            self.tokenizer.padding_side = "right"
            enc = self.tokenizer(texts, return_tensors="pt", padding=True, truncation=self.max_length is not None,
                                 max_length=self.max_length, add_special_tokens=False).to(device)
            logits = self.model(**enc).logits.float()  # [b, labels]
            s = logits[:, 0] if logits.shape[-1] == 1 else logits[:, 1] - logits[:, 0]
            out.extend(s.tolist())
        return out


def build_method(
    name: str,
    rm: EndogenousRewardModel,
    memo: StatsMemo | None = None,
    judge_greedy: bool = False,
    ref_rm: EndogenousRewardModel | None = None,
    beta: float = 0.1,
    classifier: tuple[Any, Any] | None = None,
    contrasts: Sequence[str] = (),
) -> Method:
    """One method on the base model of ``rm`` (its batch and chunk sizes, context window)."""
    c = rm.config
    judge = lambda: Judge(rm.model, rm.tokenizer, c.batch_size, c.chunk_size, rm.max_length)  # noqa: E731
    if name == "endorm":
        return EndoRMMethod(rm, memo, contrasts)
    if name == "logprob-mean":
        return LogprobMeanMethod(rm, memo)
    if name == "genrm-pointwise":
        return PointwiseJudgeMethod(judge(), judge_greedy)
    if name == "verifier":
        return VerifierMethod(judge())
    if name == "genrm-pairwise":
        return PairwiseJudgeMethod(judge())
    if name == "dpo-implicit":
        if ref_rm is None:
            raise ValueError("--method dpo-implicit needs --ref-model")
        return DPOImplicitMethod(rm, ref_rm, beta, memo)
    if name == "classifier":
        if classifier is None:
            raise ValueError("--method classifier needs --classifier-model")
        return ClassifierMethod(*classifier, batch_size=c.batch_size)
    raise ValueError(f"unknown method {name!r}; choose from {', '.join(METHODS)}")


def with_system(examples: Sequence[Example], system: str | None) -> list[Example]:
    return [replace(e, system=system) for e in examples]
