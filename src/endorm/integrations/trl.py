"""The endogenous reward as a TRL reward function (``GRPOTrainer(reward_funcs=...)``, ``trl grpo --reward_funcs``).

TRL calls a reward function as ``f(prompts=..., completions=..., completion_ids=..., **dataset_columns,
trainer_state=..., log_extra=..., log_metric=...)`` and wants one float per completion. Two formats:

- standard: ``prompts[i]`` and ``completions[i]`` are strings. The prompt is scored as the user turn and
  the completion as the assistant turn, exactly ``EndogenousRewardModel.score(prompts, completions)``.
- conversational: ``prompts[i]`` is a list of messages and ``completions[i]`` a one-message list
  ``[{"role": "assistant", "content": ...}]``; the reward is ``score_messages([prompt + completion])``.

An optional dataset column ``system`` gives a per-row system message (principle). The reward model is a
frozen model: gradients never flow through it, and it is independent of the policy being trained.

``endogenous_reward`` is a ready module-level instance that loads the default model
(SmolLM2-135M-Instruct, or ``$ENDORM_REWARD_MODEL``) on its first call, so that
``trl grpo --reward_funcs endorm.integrations.trl.endogenous_reward`` works.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import Any

__all__ = ["EndogenousRewardFunction", "endogenous_reward", "split_conversation"]

Message = dict[str, Any]


def _content_text(content: Any) -> str:
    # TRL's multimodal messages carry a list of {"type": "text", "text": ...} parts
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type", "text") == "text")
    raise TypeError(f"message content must be a string or a list of parts, got {type(content).__name__}")


def split_conversation(prompt: Sequence[Message], completion: Sequence[Message], row: int) -> list[Message]:
    """Join a conversational prompt and completion into one message list ending with the assistant turn."""
    if not isinstance(completion, (list, tuple)) or not completion:
        raise ValueError(f"row {row}: conversational completion must be a non-empty list of messages")
    msgs = [{"role": m["role"], "content": _content_text(m.get("content", ""))} for m in [*prompt, *completion]]
    if msgs[-1]["role"] != "assistant":
        raise ValueError(f"row {row}: the completion's last message must have role 'assistant', got {msgs[-1]['role']!r}")
    return msgs


class EndogenousRewardFunction:
    """A TRL reward function backed by an :class:`~endorm.EndogenousRewardModel` (or a lazy loader of one).

    ``scale`` multiplies the rewards (GRPO normalises within the group, so it only matters when rewards
    are mixed with others through ``reward_weights``).
    """

    def __init__(
        self,
        reward_model: Any | None = None,
        model_name_or_path: str | None = None,
        scale: float = 1.0,
        name: str = "endogenous_reward",
        **reward_config: Any,
    ):
        self._rm = reward_model
        self._model_name = model_name_or_path
        self._reward_config = reward_config
        self._lock = threading.Lock()
        self.scale = float(scale)
        self.__name__ = name  # TRL names the logged metric after the function: rewards/<name>/mean

    @property
    def reward_model(self) -> Any:
        if self._rm is None:
            with self._lock:
                if self._rm is None:
                    from endorm import EndogenousRewardModel

                    name = self._model_name or os.environ.get("ENDORM_REWARD_MODEL") or None
                    self._rm = EndogenousRewardModel.from_pretrained(name, **self._reward_config)
        return self._rm

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float]:
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        if not prompts:
            return []
        systems = kwargs.get("system")
        if systems is not None and len(systems) != len(prompts):
            raise ValueError(f"column 'system' has {len(systems)} values for {len(prompts)} completions")
        rm = self.reward_model
        if isinstance(prompts[0], str):
            for i, (p, c) in enumerate(zip(prompts, completions, strict=True)):
                if not isinstance(p, str) or not isinstance(c, str):
                    raise TypeError(f"row {i}: mixed formats; standard format needs string prompts and completions")
            scores = rm.score(list(prompts), list(completions), systems=systems)
        else:
            convs = [split_conversation(p, c, i) for i, (p, c) in enumerate(zip(prompts, completions, strict=True))]
            scores = rm.score_messages(convs, systems=systems)
        return [self.scale * float(s) for s in scores]

    def __repr__(self) -> str:
        src = "loaded" if self._rm is not None else (self._model_name or "default model, lazy")
        return f"EndogenousRewardFunction({src}, scale={self.scale})"


# ready to use: `trl grpo --reward_funcs endorm.integrations.trl.endogenous_reward`
endogenous_reward = EndogenousRewardFunction()
