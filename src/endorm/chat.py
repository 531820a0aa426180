"""Turn a (system, prompt, response) or a chat ``messages`` list into token ids, marking the response.

The response is scored inside the model's own chat template, so how a turn ends is part of its reward:
the response span runs from the first token after the prompt rendered with ``add_generation_prompt``
to the turn-closing token (the tokenizer's EOS, e.g. ``<|im_end|>``). Whatever the template puts after
that token (usually a newline) is not scored: generation stops at EOS, so the state after it is terminal.
Base models without a template are scored on ``prompt + response + EOS``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

Message = dict[str, str]

# the roles chat templates know; anything else (e.g. ShareGPT's "human"/"gpt") would render as junk or fail
ROLES = ("system", "user", "assistant", "tool")


class RowError(ValueError):
    """Bad input, with the row (0-based index or a label like 'line 3') and field it came from."""

    def __init__(self, row: int | str | None, message: str, field: str | None = None):
        where = "" if row is None else (f"row {row}" if isinstance(row, int) else str(row))
        if field:
            where = f"{where}, field {field!r}" if where else f"field {field!r}"
        super().__init__(f"{where}: {message}" if where else message)
        self.row, self.field = row, field


@dataclass
class Example:
    """One conversation to score; ``messages[-1]`` is the assistant response."""

    messages: list[Message]
    system: str | None = None
    row: int | str | None = None

    @classmethod
    def from_pair(cls, prompt: str, response: str, system: str | None = None, row: Any = None) -> Example:
        return cls([{"role": "user", "content": prompt}, {"role": "assistant", "content": response}], system, row)


@dataclass
class Encoded:
    """Token ids of one scored conversation: ``input_ids[prompt_len:]`` are the response (action) tokens."""

    input_ids: list[int]
    prompt_len: int
    truncated: int = 0  # prompt tokens dropped from the left to fit the context window
    row: int | str | None = field(default=None, compare=False)

    @property
    def response_ids(self) -> list[int]:
        return self.input_ids[self.prompt_len :]


def validate(example: Example) -> None:
    """Raise RowError for structurally bad input (types, roles, empty response)."""
    row, msgs = example.row, example.messages
    if not isinstance(msgs, list) or not msgs:
        raise RowError(row, "must be a non-empty list of {role, content} messages", "messages")
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise RowError(row, f"message {i} must be an object with string 'role' and 'content'", "messages")
    for i, m in enumerate(msgs):
        if m["role"] not in ROLES:
            raise RowError(row, f"message {i} has the unknown role {m['role']!r}; use one of {', '.join(ROLES)}",
                           "messages")
    if msgs[-1]["role"] != "assistant":
        raise RowError(row, "the last message must be the assistant's (the response to score)", "messages")
    if len(msgs) < 2:
        raise RowError(row, "needs at least one message before the assistant's response", "messages")
    if not msgs[-1]["content"].strip():
        raise RowError(row, "the response is empty", "response")
    if example.system is not None and not isinstance(example.system, str):
        raise RowError(row, f"must be a string, got {type(example.system).__name__}", "system")
    if example.system is not None and msgs[0]["role"] == "system":
        raise RowError(row, "both a 'system' field and a system message in 'messages'; give one", "system")


# The fixed neutral prompt x0 of the prompt-contrastive reward R(y | x) - R(y | x0): a request that says
# nothing about content, so R(y | x0) is the model's prior for the response's style and length.
NEUTRAL_PROMPT = "Write a response."
CONTRASTS = ("none", "prompt", "system")


def contrast_example(example: Example, contrast: str, neutral_prompt: str = NEUTRAL_PROMPT) -> Example:
    """The same response in the contrast context.

    - ``prompt``: the conversation before the response replaced by one user turn ``neutral_prompt``
      (the system prompt stays), for R(y | x) - R(y | x0);
    - ``system``: the system prompt removed (a system message in ``messages`` too), for
      R(y | x, system) - R(y | x, no system): the part of the reward the principle adds. With no
      system prompt the two contexts are the same and the contrast is 0.
    """
    msgs = list(example.messages)
    if contrast == "prompt":
        system = example.system
        if system is None and msgs and msgs[0].get("role") == "system":
            system = msgs[0]["content"]
        return Example([{"role": "user", "content": neutral_prompt}, msgs[-1]], system, row=example.row)
    if contrast == "system":
        if msgs and msgs[0].get("role") == "system":
            msgs = msgs[1:]
        return Example(msgs, None, row=example.row)
    raise ValueError(f"unknown contrast {contrast!r}; choose from {', '.join(CONTRASTS)}")


def _special_strings(tokenizer: Any) -> list[str]:
    specials = set(getattr(tokenizer, "all_special_tokens", []) or [])
    for tok in getattr(tokenizer, "added_tokens_decoder", {}).values():
        if getattr(tok, "special", False):
            specials.add(str(tok))
    return sorted((s for s in specials if s), key=len, reverse=True)


def check_special_tokens(tokenizer: Any, example: Example) -> None:
    """Text that already contains template tokens would be parsed as structure; refuse it."""
    specials = _special_strings(tokenizer)
    fields = [("system", example.system)] + [
        ("response" if i == len(example.messages) - 1 else f"messages[{i}]", m["content"])
        for i, m in enumerate(example.messages)
    ]
    for name, text in fields:
        if not text:
            continue
        for s in specials:
            if s in text:
                raise RowError(
                    example.row,
                    f"contains the special token {s!r}. Pass plain text: endorm applies the chat template "
                    "itself (for a multi-turn conversation use 'messages')",
                    name,
                )


def _common_prefix_len(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def end_token_ids(tokenizer: Any, model_config: Any = None) -> set[int]:
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    gen_eos = getattr(getattr(model_config, "generation_config", None), "eos_token_id", None)
    if gen_eos is not None:
        ids.update([gen_eos] if isinstance(gen_eos, int) else gen_eos)
    return ids


def encode(
    tokenizer: Any,
    example: Example,
    max_length: int | None = None,
    end_ids: set[int] | None = None,
) -> Encoded:
    """Tokenize one example, marking where the response starts; truncate the prompt from the left if needed."""
    validate(example)
    check_special_tokens(tokenizer, example)
    msgs = list(example.messages)
    if example.system is not None:
        msgs = [{"role": "system", "content": example.system}] + msgs
    end_ids = end_ids if end_ids is not None else end_token_ids(tokenizer)
    if getattr(tokenizer, "chat_template", None):
        prompt_text = tokenizer.apply_chat_template(msgs[:-1], tokenize=False, add_generation_prompt=True)
        full_text = tokenizer.apply_chat_template(msgs, tokenize=False)
        prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
        full_ids = tokenizer(full_text, add_special_tokens=False)["input_ids"]
        start = _common_prefix_len(prompt_ids, full_ids)
        if start < len(prompt_ids):
            log.warning("row %s: the template renders the prompt differently inside the full conversation; "
                        "the response starts after the common prefix (%d tokens)", example.row, start)
        # keep the response through its last end-of-turn token: the state after it is terminal
        ends = [i for i in range(start, len(full_ids)) if full_ids[i] in end_ids]
        stop = ends[-1] + 1 if ends else len(full_ids)
        full_ids = full_ids[:stop]
    else:
        if any(m["role"] not in ("user", "system") for m in msgs[:-1]):
            raise RowError(example.row, "a model without a chat template can only score single-turn rows", "messages")
        prompt = "\n\n".join(m["content"] for m in msgs[:-1])
        prompt_ids = tokenizer(prompt)["input_ids"]
        full_ids = tokenizer(prompt + msgs[-1]["content"])["input_ids"]
        start = _common_prefix_len(prompt_ids, full_ids)
        if tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has neither a chat template nor an EOS token")
        full_ids = full_ids + [tokenizer.eos_token_id]
    if start == 0:
        raise RowError(example.row, "the prompt renders to no tokens", "prompt")
    enc = Encoded(list(full_ids), start, row=example.row)
    return truncate(enc, max_length) if max_length else enc


def truncate(enc: Encoded, max_length: int) -> Encoded:
    """Drop prompt tokens from the left until the sequence fits; the response is never cut."""
    excess = len(enc.input_ids) - max_length
    if excess <= 0:
        return enc
    n_resp = len(enc.response_ids)
    if n_resp + 1 > max_length:
        raise RowError(
            enc.row,
            f"the response is {n_resp} tokens; with at least one prompt token it does not fit the context "
            f"window of {max_length} tokens (raise --max-length, or shorten the response)",
            "response",
        )
    log.warning("row %s: prompt truncated from the left by %d tokens to fit %d", enc.row, excess, max_length)
    return Encoded(enc.input_ids[excess:], enc.prompt_len - excess, truncated=excess, row=enc.row)
