"""Render token rewards as a self-contained HTML page (`endorm report`).

Input is a JSONL file of either
  * preference pairs ``{prompt, chosen, rejected}`` or ``{messages, chosen, rejected}`` (optional
    ``system``; ``prompt`` may also be a list of messages and ``chosen``/``rejected`` a list whose last
    message is the assistant's, as in TRL's conversational format): both sides are scored here and shown
    side by side, one card per pair;
  * rows already scored by ``endorm score --tokens`` (each with ``"token_rewards"``): shown as they are,
    rows sharing a prompt side by side on one card;
  * plain rows ``{prompt, response}`` / ``{messages}``: scored here, grouped by prompt like scored rows.
The model is loaded only if some row needs scoring.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from endorm.chat import Example, RowError
from endorm.io import read_jsonl, row_to_example
from endorm.models.registry import DEFAULT_MODEL
from endorm.report.html import Card, PageInfo, Response, render_report
from endorm.reward_model import RewardConfig

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class Config(RewardConfig):
    input: str = field(metadata={"help": "JSONL of preference pairs, scored rows (endorm score --tokens) or plain rows"})
    output: str = field(metadata={"help": "HTML file to write"})
    model: str | None = field(
        default=None, metadata={"help": "model for rows without token_rewards: registry name, .gguf, local dir or hub id (default: "
                                  f"{DEFAULT_MODEL})"}
    )
    system: str | None = field(default=None, metadata={"help": "system prompt / principle for rows without their own"})
    dtype: str = field(default="float32", metadata={"help": "float32 | bfloat16 | float16 | auto"})
    device: str = field(default="cpu", metadata={"help": "torch device"})
    limit: int | None = field(default=None, metadata={"help": "show at most this many cards (pairs or prompt groups)"})
    clip_percentile: float = field(
        default=95.0, metadata={"help": "clip the colour scale at this percentile of |r_t| over the page"}
    )
    title: str | None = field(default=None, metadata={"help": "page title (default: from the input file name)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1, got {self.limit}")
        if not 0 < self.clip_percentile <= 100:
            raise ValueError(f"clip_percentile must be in (0, 100], got {self.clip_percentile}")


@dataclass
class _Pending:
    """A response still to score, and where its result goes."""

    example: Example
    card: int
    slot: int
    label: str
    preferred: bool | None


# -- reading rows ----------------------------------------------------------------------------------
def _messages(value: Any, where: str, name: str) -> list[dict[str, str]]:
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if isinstance(value, list) and all(isinstance(m, dict) for m in value):
        return list(value)
    raise RowError(where, f"must be a string or a list of messages, got {type(value).__name__}", name)


def _response_messages(value: Any, where: str, name: str) -> list[dict[str, str]]:
    """A response as the message(s) that end the conversation: a string, a message, or a list of messages."""
    if isinstance(value, str):
        return [{"role": "assistant", "content": value}]
    if isinstance(value, dict):
        return [value]
    if isinstance(value, list) and value and all(isinstance(m, dict) for m in value):
        return list(value)
    raise RowError(where, f"must be a string, a message or a list of messages, got {type(value).__name__}", name)


def _system(row: dict[str, Any], where: str) -> str | None:
    s = row.get("system")
    if s is not None and not isinstance(s, str):
        raise RowError(where, f"must be a string, got {type(s).__name__}", "system")
    return s


def _prompt_view(system: str | None, msgs: list[dict[str, Any]]) -> list[tuple[str, str]]:
    view = [("system", system)] if system else []
    return view + [(str(m.get("role", "?")), str(m.get("content", ""))) for m in msgs]


def _prompt_of_single(row: dict[str, Any], where: str) -> tuple[str | None, list[dict[str, Any]]]:
    """System and the conversation before the response of a {prompt, response} / {messages} row."""
    system = _system(row, where)
    if "messages" in row:
        msgs = row["messages"]
        if not isinstance(msgs, list) or not msgs:
            raise RowError(where, "must be a non-empty list of messages", "messages")
        return system, list(msgs[:-1])
    if "prompt" not in row:
        raise RowError(where, "missing (rows need 'prompt' or 'messages')", "prompt")
    return system, _messages(row["prompt"], where, "prompt")


def build_cards(
    rows: list[tuple[int, dict[str, Any]]], source: str, limit: int | None = None
) -> tuple[list[Card], list[_Pending]]:
    """Cards for the rows (at most ``limit``), with the responses that still need scoring left as pending."""
    cards: list[Card] = []
    pending: list[_Pending] = []
    groups: dict[str, int] = {}  # prompt key -> card index, for single-response rows
    lines: dict[int, list[int]] = {}  # card index -> its line numbers
    for n, row in rows:
        where = f"{source} line {n}"
        if "chosen" in row or "rejected" in row:
            if limit is not None and len(cards) >= limit:
                continue
            for name in ("chosen", "rejected"):
                if name not in row:
                    raise RowError(where, "missing (a preference row needs both 'chosen' and 'rejected')", name)
            system = _system(row, where)
            if "prompt" in row:
                prompt = _messages(row["prompt"], where, "prompt")
            elif "messages" in row:
                prompt = _messages(row["messages"], where, "messages")
            else:
                raise RowError(where, "missing (a preference row needs 'prompt' or 'messages')", "prompt")
            card = Card(f"pair {len(cards) + 1}", _prompt_view(system, prompt), [], f"{source} line {n}")
            cards.append(card)
            for slot, name in enumerate(("chosen", "rejected")):
                msgs = prompt + _response_messages(row[name], where, name)
                pending.append(_Pending(Example(msgs, system, row=f"{where} ({name})"), len(cards) - 1, slot,
                                        name, name == "chosen"))
                card.responses.append(None)  # type: ignore[arg-type]  # filled after scoring
            continue
        system, prompt = _prompt_of_single(row, where)
        key = json.dumps([system, prompt], sort_keys=True, ensure_ascii=False)
        if key not in groups:
            if limit is not None and len(cards) >= limit:
                continue
            groups[key] = len(cards)
            cards.append(Card(f"prompt {len(cards) + 1}", _prompt_view(system, prompt), [], ""))
        ci = groups[key]
        card = cards[ci]
        label = row.get("label") if isinstance(row.get("label"), str) else f"line {n}"
        lines.setdefault(ci, []).append(n)
        card.source = f"{source} line{'s' if len(lines[ci]) > 1 else ''} {', '.join(map(str, lines[ci]))}"
        if "token_rewards" in row:
            tr = row["token_rewards"]
            if not isinstance(tr, dict):
                raise RowError(where, f"must be an object (TokenRewards.to_dict()), got {type(tr).__name__}",
                               "token_rewards")
            try:
                card.responses.append(Response.from_dict(label, tr))
            except (ValueError, TypeError) as e:
                raise RowError(where, str(e), "token_rewards") from None
        else:
            ex = row_to_example(row, where)
            pending.append(_Pending(ex, ci, len(card.responses), label, None))
            card.responses.append(None)  # type: ignore[arg-type]
    return cards, pending


def score_pending(cards: list[Card], pending: list[_Pending], rm: Any, chunk: int = 64) -> None:
    """Fill the pending responses of ``cards`` with token rewards from ``rm`` (an EndogenousRewardModel)."""
    for start in range(0, len(pending), chunk):
        part = pending[start : start + chunk]
        results = rm.token_rewards_examples([p.example for p in part])
        for p, tr in zip(part, results, strict=True):
            cards[p.card].responses[p.slot] = Response.from_dict(p.label, tr.to_dict(), p.preferred)
        log.info("scored %d/%d responses", min(start + chunk, len(pending)), len(pending))


def run(config: Config, rm: Any = None) -> int:
    """Write the report; ``rm`` (an EndogenousRewardModel) replaces loading ``config.model``."""
    src = Path(config.input)
    rows = list(read_jsonl(src))
    cards, pending = build_cards(rows, src.name, config.limit)
    settings: dict[str, str] = {"input": src.name}
    if pending:
        reward_fields = {f: getattr(config, f) for f in RewardConfig.__dataclass_fields__}
        if config.system is not None:  # same flag as endorm score
            reward_fields["system_prompt"] = config.system
        if rm is None:
            from endorm.reward_model import EndogenousRewardModel

            rm = EndogenousRewardModel.from_pretrained(config.model, dtype=config.dtype, device=config.device,
                                                       **reward_fields)
            settings["model"] = config.model or DEFAULT_MODEL
        else:
            rm = rm.with_config(**reward_fields)
            settings["model"] = type(rm.model).__name__ + " (given)"
        score_pending(cards, pending, rm)
        settings["alpha"] = f"{rm.config.alpha:g}"
        settings["aggregation"] = rm.config.aggregation
        if rm.config.aggregation in ("discounted", "logprob"):
            settings["gamma"] = f"{rm.config.gamma:g}"
        if rm.config.system_prompt:
            settings["default system"] = rm.config.system_prompt[:80]
    if len(pending) < sum(len(c.responses) for c in cards):
        settings["token rewards"] = "read from the file" if not pending else "partly read from the file"
    info = PageInfo(title=config.title or f"Token rewards: {src.name}",
                    subtitle="r_t = \u03b1 log \u03c0(a_t|s_t) + V(s_t) \u2212 V(s_t+1), "
                             "V(s) = \u03b1 logsumexp(f(s,\u00b7)/\u03b1), V(terminal) = 0",
                    settings=settings)
    page = render_report(cards, info, config.clip_percentile)
    out = Path(config.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    n_tok = sum(len(r.tokens) for c in cards for r in c.responses)
    print(f"wrote {out} ({len(cards)} cards, {n_tok} tokens, {len(page) / 1024:.0f} KiB)")
    return 0
