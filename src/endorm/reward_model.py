"""``EndogenousRewardModel``: score responses with the endogenous reward of a causal LM.

Thin orchestration: ``endorm.chat`` turns rows into token ids, ``endorm.scoring`` runs the model to
get log pi(a_t|s_t) and V(s_t) per response token, and ``endorm.rewards`` turns those into token
rewards and the outcome reward.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch

from endorm import rewards as R
from endorm import scoring
from endorm.chat import (
    CONTRASTS,
    NEUTRAL_PROMPT,
    Encoded,
    Example,
    Message,
    contrast_example,
    encode,
    end_token_ids,
)
from endorm.scoring import TokenStats

log = logging.getLogger(__name__)


@dataclass
class RewardConfig:
    """How rewards are computed. Every field is also a flag of ``endorm score``."""

    alpha: float = field(default=1.0, metadata={"help": "temperature alpha of the soft Q-function (> 0)"})
    # The default form was chosen by the pre-registered rule of docs/RESULTS.md ("Which form of the endogenous
    # reward"): best dev average on RM-Bench. The paper's formula as written is aggregation=sum (gamma = 1).
    gamma: float = field(default=0.93, metadata={"help": "discount for the 'discounted' and 'logprob' aggregations"})
    aggregation: str = field(
        default="discounted",
        metadata={"help": "discounted (default: sum_t gamma^(t-1) r_t) | sum (the paper's formula as written) | "
                          "mean (per token) | logprob (gamma^(t-1) alpha log pi, no values)"},
    )
    contrast: str = field(
        default="none",
        metadata={"help": "none | prompt: R(y|x) - R(y|x0) with a fixed neutral prompt x0 | system: "
                          "R(y|x,system) - R(y|x,no system). Each costs a second pass"},
    )
    neutral_prompt: str = field(default=NEUTRAL_PROMPT, metadata={"help": "x0 of --contrast prompt"})
    system_prompt: str | None = field(
        default=None, metadata={"help": "default system message / principle; a row's own 'system' overrides it"}
    )
    max_length: int | None = field(
        default=None, metadata={"help": "context window in tokens (default: the model's); prompts are cut from the left"}
    )
    batch_size: int = field(default=8, metadata={"help": "rows per forward pass"})
    chunk_size: int = field(default=1024, metadata={"help": "positions per output-layer chunk (memory ~ chunk x vocab)"})
    share_prompts: bool = field(
        default=True,
        metadata={"help": "run each prompt once and reuse its KV cache for all its responses (rows are then "
                          "batched per prompt); false: pad rows of different prompts into one batch"},
    )

    def __post_init__(self) -> None:
        if self.aggregation not in R.AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {', '.join(R.AGGREGATIONS)}, got {self.aggregation!r}")
        if self.contrast not in CONTRASTS:
            raise ValueError(f"contrast must be one of {', '.join(CONTRASTS)}, got {self.contrast!r}")
        if not self.alpha > 0:
            raise ValueError(f"alpha must be > 0, got {self.alpha}")
        if not 0 < self.gamma <= 1:
            raise ValueError(f"gamma must be in (0, 1], got {self.gamma}")
        if self.batch_size < 1 or self.chunk_size < 1:
            raise ValueError("batch_size and chunk_size must be >= 1")


@dataclass
class TokenRewards:
    """The token-level view of one response."""

    tokens: list[str]  # decoded text of each response token
    token_ids: list[int]
    logprobs: list[float]  # log pi(a_t|s_t)
    values: list[float]  # V(s_t)
    rewards: list[float]  # r_t = alpha log pi + V(s_t) - V(s_{t+1})
    total: float  # the outcome reward under the configured aggregation
    # each token's term of ``total`` under the aggregation (e.g. gamma^(t-1) r_t); they sum to ``total``
    # except with a contrast, whose context's outcome is subtracted from the total only
    terms: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class EndogenousRewardModel:
    """A causal LM read as a reward model (arXiv 2506.23235), no training involved.

    >>> rm = EndogenousRewardModel.from_pretrained()          # SmolLM2-135M-Instruct
    >>> rm.score(["What is the capital of France?"] * 2, ["Paris.", "Berlin."])
    """

    def __init__(self, model: Any, tokenizer: Any, config: RewardConfig | None = None, **overrides: Any):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.config = replace(config or RewardConfig(), **overrides)
        self._end_ids = end_token_ids(tokenizer, model)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self._pad_id = int(pad if pad is not None else 0)

    @classmethod
    def from_pretrained(
        cls, name_or_path: str | None = None, dtype: str = "float32", device: str = "cpu", **config: Any
    ) -> EndogenousRewardModel:
        """Load a model (registry name, GGUF file, local dir or hub id; None = the default model).

        ``config``: any ``RewardConfig`` field (alpha, gamma, aggregation, contrast, system_prompt, ...);
        those not given keep RewardConfig's defaults, the same defaults every entry point uses.
        """
        from endorm.models import load_model_and_tokenizer

        model, tok = load_model_and_tokenizer(name_or_path, dtype=dtype, device=device)
        return cls.from_model(model, tok, **config)

    @classmethod
    def from_model(cls, model: Any, tokenizer: Any, **config: Any) -> EndogenousRewardModel:
        return cls(model, tokenizer, RewardConfig(**config))

    @property
    def max_length(self) -> int | None:
        return self.config.max_length or getattr(self.model.config, "max_position_embeddings", None)

    # -- encoding ---------------------------------------------------------------------------
    def resolve(self, example: Example) -> Example:
        """The example with the configured default system prompt applied (a row's own wins)."""
        if example.system is None and self.config.system_prompt is not None:
            if example.messages and example.messages[0].get("role") != "system":
                example = replace(example, system=self.config.system_prompt)
        return example

    def encode(self, example: Example, resolve: bool = True) -> Encoded:
        ex = self.resolve(example) if resolve else example
        return encode(self.tokenizer, ex, self.max_length, self._end_ids)

    def contrast_examples(self, examples: Sequence[Example], contrast: str | None = None) -> list[Example]:
        """The contrast context of each example (after the default system prompt is applied); encode
        them with ``resolve=False`` so the default is not put back."""
        c = contrast or self.config.contrast
        return [contrast_example(self.resolve(e), c, self.config.neutral_prompt) for e in examples]

    def _examples(
        self,
        prompts: Sequence[str],
        responses: Sequence[str],
        systems: Sequence[str | None] | None,
    ) -> list[Example]:
        if isinstance(prompts, str) or isinstance(responses, str):
            raise TypeError("prompts and responses must be lists of strings (wrap a single one in a list)")
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        systems = list(systems) if systems is not None else [None] * len(prompts)
        if len(systems) != len(prompts):
            raise ValueError(f"{len(systems)} systems for {len(prompts)} prompts")
        out = []
        for i, (p, r, s) in enumerate(zip(prompts, responses, systems, strict=True)):
            for name, v in (("prompt", p), ("response", r)):
                if not isinstance(v, str):
                    raise TypeError(f"row {i}: {name} must be a string, got {type(v).__name__}")
            out.append(Example.from_pair(p, r, s, row=i))
        return out

    # -- scoring ----------------------------------------------------------------------------
    def stats(self, examples: Sequence[Example]) -> tuple[list[Encoded], list[TokenStats]]:
        encoded = [self.encode(e) for e in examples]
        return encoded, self.stats_encoded(encoded)

    def stats_encoded(self, encoded: Sequence[Encoded]) -> list[TokenStats]:
        """TokenStats of already-encoded rows, with this model's settings."""
        c = self.config
        return scoring.compute_stats(self.model, encoded, c.alpha, c.batch_size, c.chunk_size, c.share_prompts,
                                     pad_id=self._pad_id)

    def outcome(self, stats: TokenStats) -> tuple[torch.Tensor, float]:
        """Token rewards [n] and the aggregated outcome reward of one response (no contrast applied)."""
        c = self.config
        r, total = R.outcome(stats.logprobs, stats.values, c.aggregation, c.gamma, c.alpha)  # [n], []
        return r, float(total)

    def encode_with_contrast(self, example: Example) -> list[Encoded]:
        """[the row] or, with a contrast, [the row, the row in its contrast context]: what scoring it needs."""
        enc = self.encode(example)
        if self.config.contrast == "none":
            return [enc]
        return [enc, self.encode(self.contrast_examples([example])[0], resolve=False)]

    @staticmethod
    def split_contrast(stats: Sequence[TokenStats], n: int) -> tuple[list[TokenStats], list[TokenStats] | None]:
        """Stats of ``n`` rows encoded with ``encode_with_contrast`` and flattened row-major, back to
        (the rows' stats, their contrast contexts' stats or None)."""
        if len(stats) == n:
            return list(stats), None
        return list(stats[0::2]), list(stats[1::2])

    def stats_with_contrast(self, examples: Sequence[Example]) -> tuple[list[TokenStats], list[TokenStats] | None]:
        """(TokenStats of the responses, of the same responses in their contrast contexts or None), from one
        call over the rows and their contrast contexts: the one route every caller takes."""
        encoded = [e for ex in examples for e in self.encode_with_contrast(ex)]
        return self.split_contrast(self.stats_encoded(encoded), len(examples))

    def totals(self, stats: Sequence[TokenStats], base: Sequence[TokenStats] | None) -> list[float]:
        """Outcome rewards from the stats of the responses and, with a contrast, of their contrast contexts."""
        out = [self.outcome(s)[1] for s in stats]
        if base is not None:
            out = [a - self.outcome(b)[1] for a, b in zip(out, base, strict=True)]
        return out

    def score_examples(self, examples: Sequence[Example]) -> list[float]:
        return self.totals(*self.stats_with_contrast(examples))

    def score(
        self,
        prompts: Sequence[str],
        responses: Sequence[str],
        systems: Sequence[str | None] | None = None,
        batch_size: int | None = None,
    ) -> list[float]:
        """Outcome rewards of ``responses[i]`` to ``prompts[i]`` (optional per-row system message)."""
        rm = self if batch_size is None else self.with_config(batch_size=batch_size)
        return rm.score_examples(self._examples(prompts, responses, systems))

    def score_messages(
        self, conversations: Sequence[list[Message]], systems: Sequence[str | None] | None = None
    ) -> list[float]:
        """Outcome rewards of the last (assistant) message of each conversation."""
        systems = list(systems) if systems is not None else [None] * len(conversations)
        return self.score_examples([Example(list(m), s, row=i) for i, (m, s) in enumerate(zip(conversations, systems, strict=True))])

    def token_rewards(
        self,
        prompt: str | None = None,
        response: str | None = None,
        system: str | None = None,
        messages: list[Message] | None = None,
    ) -> TokenRewards:
        """Per-token log pi, V(s_t) and r_t of one response (give prompt+response, or messages)."""
        if messages is None:
            if prompt is None or response is None:
                raise ValueError("give prompt and response, or messages")
            example = Example.from_pair(prompt, response, system, row=0)
        else:
            example = Example(list(messages), system, row=0)
        return self.token_rewards_examples([example])[0]

    def token_rewards_examples(self, examples: Sequence[Example]) -> list[TokenRewards]:
        stats, base = self.stats_with_contrast(examples)
        return [self.token_view(s, None if base is None else base[i]) for i, s in enumerate(stats)]

    def token_view(self, stats: TokenStats, base: TokenStats | None = None) -> TokenRewards:
        """The token-level view (decoded tokens, log pi, V, r_t, total) of one response's TokenStats.

        ``rewards`` are the response's own r_t; with a contrast, ``total`` is the contrastive outcome
        (the contrast context's outcome, from ``base``, subtracted)."""
        c = self.config
        r, total = self.outcome(stats)
        terms = R.reward_terms(r[None], stats.logprobs[None], torch.ones_like(r[None], dtype=torch.bool),
                               c.aggregation, c.gamma, c.alpha)[0]  # [n]
        if base is not None:
            total -= self.outcome(base)[1]
        return TokenRewards(
            tokens=[self.tokenizer.decode([t]) for t in stats.token_ids],
            token_ids=list(stats.token_ids),
            logprobs=stats.logprobs.tolist(),
            values=stats.values.tolist(),
            rewards=r.tolist(),
            total=total,
            terms=terms.tolist(),
        )

    def with_config(self, **overrides: Any) -> EndogenousRewardModel:
        """The same weights with other settings (e.g. another system prompt or aggregation)."""
        return EndogenousRewardModel(self.model, self.tokenizer, replace(self.config, **overrides))
