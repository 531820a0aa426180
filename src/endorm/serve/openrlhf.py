"""Split an OpenRLHF ``query`` (prompt + response, rendered with the chat template and decoded with
special tokens) back into chat messages, so endorm scores it exactly as it scores ``/score`` rows.

How: the template is rendered once with sentinel contents to learn the literal text it puts before the
first message and between two consecutive messages (e.g. ``<|im_end|>\\n<|im_start|>assistant\\n``),
the generation prompt and the end-of-turn string. A query is cut at the last generation prompt (or
after ``prompts[i]`` when given), the prompt part is parsed with those separators, and the parse is
checked by rendering the messages again: it must give back the prompt text character for character,
otherwise the row is refused (``RowError``) rather than scored under a guess.

Simplifications: padding tokens are stripped from both ends; the response ends at the first
end-of-turn string (what follows it is not part of the answer); a response without one (generation hit
the length limit) is scored as if it had ended there, as OpenRLHF's own reward server does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from endorm.chat import Example, Message, RowError

_S = "\u2063{}\u2063"  # invisible separator around sentinel contents; survives every template we know
ROLES = ("system", "user", "assistant")


def _render(tok: Any, msgs: list[Message], gen: bool) -> str:
    return tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)


def _between(text: str, a: str, b: str) -> str:
    i = text.index(a) + len(a)
    return text[i : text.index(b, i)]


@dataclass
class TemplateShape:
    """Literal strings a chat template puts around messages (learned from sentinel renderings)."""

    starts: dict[str, str]  # first-message role -> text before its content
    seps: dict[tuple[str, str], str]  # (role, next role) -> text between their contents
    end_before_gen: dict[str, str]  # last prompt role -> text after its content, before the generation prompt
    gen_prompt: str  # the assistant header that add_generation_prompt appends
    end_of_turn: str  # the string that closes the assistant's turn (the EOS)


def learn_shape(tok: Any) -> TemplateShape:
    if not getattr(tok, "chat_template", None):
        raise ValueError("the tokenizer has no chat template; /get_reward needs one to split queries")
    s, u, a, u2 = (_S.format(x) for x in ("S", "U", "A", "V"))
    starts: dict[str, str] = {}
    seps: dict[tuple[str, str], str] = {}
    one = _render(tok, [{"role": "user", "content": u}], gen=False)
    starts["user"] = one[: one.index(u)]
    with_gen = _render(tok, [{"role": "user", "content": u}], gen=True)
    if not with_gen.startswith(one):
        raise ValueError("the chat template renders a prompt differently with add_generation_prompt")
    gen_prompt = with_gen[len(one) :]
    tail_user = one[one.index(u) + len(u) :]
    end_before_gen = {"user": tail_user}
    full = _render(tok, [{"role": "user", "content": u}, {"role": "assistant", "content": a},
                         {"role": "user", "content": u2}], gen=True)
    seps[("user", "assistant")] = _between(full, u, a)
    seps[("assistant", "user")] = _between(full, a, u2)
    try:  # some templates (e.g. Gemma's) refuse a system role
        sys_full = _render(tok, [{"role": "system", "content": s}, {"role": "user", "content": u}], gen=True)
        starts["system"] = sys_full[: sys_full.index(s)]
        seps[("system", "user")] = _between(sys_full, s, u)
    except Exception:  # noqa: BLE001 - any template error means: no system role
        pass
    eos = tok.eos_token or ""
    after_assistant = seps[("assistant", "user")]
    # the assistant's turn is closed by the EOS when the template uses it, else by the separator itself
    end = eos if eos and after_assistant.startswith(eos) else after_assistant
    return TemplateShape(starts, seps, end_before_gen, gen_prompt, end)


def _strip_pad(text: str, tok: Any) -> str:
    pad = tok.pad_token
    if pad:
        while text.startswith(pad):
            text = text[len(pad) :]
        if pad != tok.eos_token:  # with pad == EOS the trailing one closes the turn; cut at EOS later
            while text.endswith(pad):
                text = text[: -len(pad)]
    return text


def parse_prompt(text: str, shape: TemplateShape, row: int) -> list[Message]:
    """The rendered prompt (without the generation prompt) -> messages, using the learned separators."""
    # the longest matching start wins (a template's default system block is part of the 'user' start)
    found = [(r, s) for r, s in sorted(shape.starts.items(), key=lambda kv: -len(kv[1])) if text.startswith(s)]
    if not found:
        raise RowError(row, "does not start like the chat template's rendering of a conversation", "query")
    role, start = found[0]
    pos, msgs = len(start), []
    while True:
        ends = [(text.find(sep, pos), nxt, sep) for (r, nxt), sep in shape.seps.items() if r == role and sep]
        ends = [e for e in ends if e[0] >= 0]
        final = shape.end_before_gen.get(role)
        if final is not None and text.endswith(final) and (not ends or min(ends)[0] >= len(text) - len(final)):
            msgs.append({"role": role, "content": text[pos : len(text) - len(final)]})
            return msgs
        if not ends:
            raise RowError(row, f"cannot find where the {role} message ends in the prompt", "query")
        at, nxt, sep = min(ends)
        msgs.append({"role": role, "content": text[pos:at]})
        role, pos = nxt, at + len(sep)


class QuerySplitter:
    """OpenRLHF ``query`` (+ optional ``prompt``) -> ``Example`` for the tokenizer's chat template."""

    def __init__(self, tokenizer: Any):
        self.tok = tokenizer
        self.shape = learn_shape(tokenizer)

    def split(self, query: str, prompt: str | None = None, row: int = 0) -> Example:
        if not isinstance(query, str):
            raise RowError(row, f"must be a string, got {type(query).__name__}", "query")
        q = _strip_pad(query, self.tok)
        cut = None
        if prompt is not None:
            if not isinstance(prompt, str):
                raise RowError(row, f"must be a string, got {type(prompt).__name__}", "prompts")
            p = _strip_pad(prompt, self.tok)
            # OpenRLHF's prompts are the rendered prompts; anything else (raw text) is ignored, not fatal
            if q.startswith(p) and p.endswith(self.shape.gen_prompt):
                cut = len(p)
        if cut is None:
            at = q.rfind(self.shape.gen_prompt)
            if at < 0:
                raise RowError(row, f"no generation prompt {self.shape.gen_prompt!r} in the query: not rendered "
                                    "with this model's chat template?", "query")
            cut = at + len(self.shape.gen_prompt)
        prompt_text, response = q[:cut], q[cut:]
        eot = self.shape.end_of_turn
        if eot and eot in response:
            response = response[: response.index(eot)]
        msgs = parse_prompt(prompt_text[: -len(self.shape.gen_prompt)], self.shape, row)
        if _render(self.tok, msgs, gen=True) != prompt_text:
            raise RowError(row, "the prompt part does not match this model's chat template (parsed it, but "
                                "rendering the parsed messages gives different text)", "query")
        system = None
        if msgs and msgs[0]["role"] == "system":
            system = msgs.pop(0)["content"]
        return Example(msgs + [{"role": "assistant", "content": response}], system, row=row)
