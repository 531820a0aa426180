"""Render token rewards as one self-contained HTML page (pure: data in, string out).

Each response is drawn as its tokens, each token a ``<span class="tok">`` whose background encodes the
token reward r_t = alpha log pi(a_t|s_t) + V(s_t) - V(s_{t+1}) on a diverging red-white-blue scale. The
scale is symmetric about 0 and clipped at a robust percentile of |r_t| over every token on the page, so a
few extreme tokens (often the first token or the end-of-turn token) do not wash out the rest. Hovering a
token shows log pi, V(s_t), V(s_{t+1}) and r_t (a native ``title`` tooltip, plus a detail bar when
JavaScript runs). All text is HTML-escaped; the page loads nothing from the network.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

# RdBu end points (ColorBrewer): negative reward -> red, positive -> blue, 0 -> white.
_NEG = (202, 0, 32)
_POS = (5, 113, 176)
_MID = (247, 247, 247)


@dataclass
class Response:
    """One scored response: its label (e.g. 'chosen') and its token-level rewards."""

    label: str
    tokens: list[str]
    logprobs: list[float]
    values: list[float]  # V(s_t) for each response token
    rewards: list[float]  # r_t
    total: float  # the outcome reward (the configured aggregation)
    token_ids: list[int] | None = None
    preferred: bool | None = None  # True for a labelled 'chosen' side, False for 'rejected', None if unlabelled

    def __post_init__(self) -> None:
        n = len(self.tokens)
        for name in ("logprobs", "values", "rewards"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{self.label}: {n} tokens but {len(getattr(self, name))} {name}")
        if self.token_ids is not None and len(self.token_ids) != n:
            raise ValueError(f"{self.label}: {n} tokens but {len(self.token_ids)} token_ids")

    @classmethod
    def from_dict(cls, label: str, d: dict[str, Any], preferred: bool | None = None) -> Response:
        """From ``TokenRewards.to_dict()``."""
        missing = [k for k in ("tokens", "logprobs", "values", "rewards", "total") if k not in d]
        if missing:
            raise ValueError(f"token_rewards lacks {', '.join(missing)}")
        return cls(label, [str(t) for t in d["tokens"]], [float(x) for x in d["logprobs"]],
                   [float(x) for x in d["values"]], [float(x) for x in d["rewards"]], float(d["total"]),
                   d.get("token_ids"), preferred)


@dataclass
class Card:
    """One prompt and the responses to compare on it (a preference pair, or scored rows sharing a prompt)."""

    title: str
    prompt: list[tuple[str, str]]  # (role, content) of the conversation before the response, system first
    responses: list[Response]
    source: str = ""  # where it came from, e.g. 'pairs.jsonl line 3'


@dataclass
class PageInfo:
    """What the header says about how the rewards were computed."""

    title: str = "endorm token rewards"
    subtitle: str = ""
    settings: dict[str, str] = field(default_factory=dict)  # shown as a small key/value list


# -- numbers ---------------------------------------------------------------------------------------
def percentile(xs: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) of ``xs`` with linear interpolation (numpy's default)."""
    if not xs:
        return 0.0
    s = sorted(xs)
    pos = (len(s) - 1) * min(max(q, 0.0), 100.0) / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def clip_value(rewards: Sequence[float], q: float) -> float:
    """Half-width of the colour scale: the q-th percentile of |r_t| (finite values), never 0."""
    mags = [abs(r) for r in rewards if math.isfinite(r)]
    c = percentile(mags, q)
    return c if c > 0 else (max(mags) if mags and max(mags) > 0 else 1.0)


def reward_color(r: float, clip: float) -> tuple[str, bool]:
    """CSS colour for reward ``r`` on a diverging scale clipped at +-clip; and whether text should be light."""
    if not math.isfinite(r):
        return "rgb(120,120,120)", True
    t = max(-1.0, min(1.0, r / clip))
    end = _POS if t > 0 else _NEG
    a = abs(t)
    rgb = tuple(round(m + (e - m) * a) for m, e in zip(_MID, end, strict=True))
    return f"rgb({rgb[0]},{rgb[1]},{rgb[2]})", a > 0.6


def _fmt(x: float, digits: int = 3) -> str:
    if not math.isfinite(x):
        return str(x)
    return f"{x:.{digits}f}" if abs(x) < 1e4 else f"{x:.3g}"


# -- tokens ----------------------------------------------------------------------------------------
def token_display(tok: str) -> tuple[str, bool]:
    """Escaped HTML showing ``tok`` with whitespace made visible; and whether it holds a line break.

    Spaces inside text stay spaces (the span keeps them with ``white-space: pre-wrap``); a token made only of
    spaces shows a middle dot per space, tabs show as an arrow and a newline as a return sign followed by a
    real line break, so the response keeps its layout.
    """
    if tok == "":
        return '<span class="ws">\u2205</span>', False
    out, breaks = [], False
    only_space = tok.strip(" ") == ""
    for ch in tok:
        if ch == "\n":
            out.append('<span class="ws">\u21b5</span><br>')
            breaks = True
        elif ch == "\r":
            out.append('<span class="ws">\u240d</span>')
        elif ch == "\t":
            out.append('<span class="ws">\u2192</span>\t')
        elif ch == " " and only_space:
            out.append('<span class="ws">\u00b7</span>')
        else:
            out.append(html.escape(ch))
    return "".join(out), breaks


def _tooltip(i: int, tok: str, r: Response) -> str:
    v_next = r.values[i + 1] if i + 1 < len(r.values) else 0.0
    lp = r.logprobs[i]
    lines = [
        f"t={i} {tok!r}" + (f" id {r.token_ids[i]}" if r.token_ids is not None else ""),
        f"log \u03c0 = {_fmt(lp)}  (\u03c0 = {math.exp(lp):.3g})" if math.isfinite(lp) else f"log \u03c0 = {lp}",
        f"V(s_t) = {_fmt(r.values[i])}",
        f"V(s_t+1) = {_fmt(v_next)}" + ("  (terminal)" if i + 1 == len(r.values) else ""),
        f"r_t = {_fmt(r.rewards[i])}",
    ]
    return "\n".join(lines)


def render_tokens(r: Response, clip: float) -> str:
    """The spans of one response's tokens."""
    parts = []
    for i, tok in enumerate(r.tokens):
        bg, light = reward_color(r.rewards[i], clip)
        shown, _ = token_display(tok)
        cls = "tok lt" if light else "tok"
        parts.append(
            f'<span class="{cls}" style="background:{bg}" data-t="{i}" '
            f'title="{html.escape(_tooltip(i, tok, r), quote=True)}">{shown}</span>'
        )
    return "".join(parts)


# -- page ------------------------------------------------------------------------------------------
def winners(responses: Sequence[Response]) -> list[int]:
    """Indices of the responses with the highest total (several on a tie; none if fewer than two)."""
    if len(responses) < 2:
        return []
    best = max(r.total for r in responses)
    return [i for i, r in enumerate(responses) if r.total == best]


def pair_verdict(card: Card) -> bool | None:
    """For a labelled pair: True if the chosen side scores strictly higher, False if not; None if unlabelled."""
    chosen = [r for r in card.responses if r.preferred is True]
    rejected = [r for r in card.responses if r.preferred is False]
    if len(chosen) != 1 or not rejected:
        return None
    return all(chosen[0].total > r.total for r in rejected)


def _render_prompt(card: Card) -> str:
    if not card.prompt:
        return ""
    items = []
    for role, content in card.prompt:
        items.append(f'<div class="msg"><span class="role">{html.escape(role)}</span>'
                     f'<div class="content">{html.escape(content)}</div></div>')
    body = "".join(items)
    text_len = sum(len(c) for _, c in card.prompt)
    if text_len > 600 or len(card.prompt) > 2:
        last = html.escape(card.prompt[-1][1][:160]) + ("\u2026" if len(card.prompt[-1][1]) > 160 else "")
        return f'<details class="prompt"><summary>prompt: {last}</summary>{body}</details>'
    return f'<div class="prompt">{body}</div>'


def _render_response(r: Response, win: bool, contested: bool, clip: float) -> str:
    n = len(r.tokens)
    mean = sum(r.rewards) / n if n else float("nan")
    badge = ""
    if contested:
        badge = '<span class="badge win">higher</span>' if win else '<span class="badge lose">lower</span>'
    label_cls = {True: "chosen", False: "rejected"}.get(r.preferred, "plain")
    return (
        f'<div class="resp {label_cls}{" winner" if win and contested else ""}">'
        f'<div class="rhead"><span class="label">{html.escape(r.label)}</span>{badge}'
        f'<span class="total" title="outcome reward (the configured aggregation)">total '
        f"<b>{_fmt(r.total, 2)}</b></span></div>"
        f'<div class="rstats">{n} tokens \u00b7 mean r_t {_fmt(mean, 3)} \u00b7 sum log \u03c0 '
        f"{_fmt(sum(r.logprobs), 2)}</div>"
        f'<div class="tokens">{render_tokens(r, clip)}</div></div>'
    )


def _render_card(i: int, card: Card, clip: float) -> str:
    win = winners(card.responses)
    contested = len(card.responses) >= 2 and len(win) < len(card.responses)
    verdict = pair_verdict(card)
    if verdict is True:
        v = '<span class="verdict ok">chosen scores higher \u2713</span>'
    elif verdict is False:
        tie = len(win) == len(card.responses)
        v = f'<span class="verdict bad">{"tie" if tie else "rejected scores higher"} \u2717</span>'
    else:
        v = ""
    src = f'<span class="src">{html.escape(card.source)}</span>' if card.source else ""
    resps = "".join(_render_response(r, j in win, contested, clip) for j, r in enumerate(card.responses))
    return (
        f'<section class="card" id="card-{i}"><div class="chead"><span class="ctitle">{html.escape(card.title)}</span>'
        f"{v}{src}</div>{_render_prompt(card)}"
        f'<div class="grid cols-{min(len(card.responses), 3)}">{resps}</div></section>'
    )


def _render_legend(clip: float, q: float, n_tokens: int) -> str:
    stops = ", ".join(reward_color(x * clip, clip)[0] for x in (-1, -0.5, 0, 0.5, 1))
    ticks = "".join(f"<span>{_fmt(x * clip, 2)}</span>" for x in (-1, -0.5, 0, 0.5, 1))
    return (
        '<div class="legend"><div class="lbar" style="background:linear-gradient(to right, '
        f'{stops})"></div><div class="lticks">{ticks}</div>'
        f'<div class="lnote">token reward r_t; the scale is clipped at \u00b1{_fmt(clip, 3)}, the {q:g}th '
        f"percentile of |r_t| over the {n_tokens} tokens on this page (darker = further from 0). "
        "Hover a token for log \u03c0, V(s_t), V(s_t+1) and r_t. "
        '<span class="ws">\u00b7</span> space, <span class="ws">\u21b5</span> newline.</div></div>'
    )


def _render_summary(cards: Sequence[Card]) -> str:
    verdicts = [pair_verdict(c) for c in cards]
    labelled = [v for v in verdicts if v is not None]
    n_resp = sum(len(c.responses) for c in cards)
    parts = [f"{len(cards)} card{'s' if len(cards) != 1 else ''}, {n_resp} responses"]
    if labelled:
        ok = sum(labelled)
        parts.append(f"chosen scores higher on <b>{ok}/{len(labelled)}</b> pairs "
                     f"({100 * ok / len(labelled):.0f}%)")
    sep = " \u00b7 "
    return f'<div class="summary">{sep.join(parts)}</div>'


_CSS = """
:root{--fg:#1d1d1f;--muted:#6b6b70;--line:#dcdce0;--bg:#fbfbfc}
*{box-sizing:border-box}
body{margin:0;padding:18px 22px 60px;font:14px/1.45 system-ui,-apple-system,"DejaVu Sans",sans-serif;color:var(--fg);background:var(--bg)}
h1{font-size:20px;margin:0 0 2px}
.sub{color:var(--muted);margin-bottom:8px}
.settings{display:flex;flex-wrap:wrap;gap:4px 14px;color:var(--muted);font-size:12.5px;margin-bottom:10px}
.settings b{color:var(--fg);font-weight:600}
.summary{margin:6px 0 10px}
.legend{max-width:560px;margin:8px 0 16px}
.lbar{height:12px;border-radius:3px;border:1px solid var(--line)}
.lticks{display:flex;justify-content:space-between;font-size:11.5px;color:var(--muted)}
.lnote{font-size:12px;color:var(--muted);margin-top:2px}
.card{background:#fff;border:1px solid var(--line);border-radius:8px;padding:12px 14px;margin:0 0 16px}
.chead{display:flex;gap:12px;align-items:baseline;flex-wrap:wrap;margin-bottom:6px}
.ctitle{font-weight:600}
.src{color:var(--muted);font-size:12px;margin-left:auto}
.verdict{font-size:12.5px;font-weight:600;padding:1px 8px;border-radius:10px}
.verdict.ok{background:#e3f1e5;color:#1d6b2b}.verdict.bad{background:#fbe3e3;color:#9b1c1c}
.prompt{background:#f4f4f6;border-radius:6px;padding:6px 10px;margin-bottom:10px;font-size:13px}
.prompt summary{cursor:pointer;color:var(--muted)}
.msg{margin:2px 0}.role{font-weight:600;color:var(--muted);font-size:11.5px;text-transform:uppercase;margin-right:6px}
.msg .content{white-space:pre-wrap;overflow-wrap:anywhere;display:inline}
.grid{display:grid;gap:12px}
.grid.cols-1{grid-template-columns:1fr}.grid.cols-2{grid-template-columns:repeat(2,minmax(0,1fr))}
.grid.cols-3{grid-template-columns:repeat(auto-fill,minmax(320px,1fr))}
.resp{border:1px solid var(--line);border-radius:6px;padding:8px 10px;min-width:0}
.resp.chosen{border-top:3px solid #3b8f4f}.resp.rejected{border-top:3px solid #b8485a}
.resp.winner{box-shadow:0 0 0 2px #3a6fb4 inset}
.rhead{display:flex;gap:8px;align-items:baseline}
.label{font-weight:600;text-transform:uppercase;font-size:12px;letter-spacing:.04em}
.total{margin-left:auto;font-size:13px}
.badge{font-size:11px;padding:0 6px;border-radius:8px}
.badge.win{background:#dde8f6;color:#1e4f8f}.badge.lose{background:#eee;color:#777}
.rstats{color:var(--muted);font-size:12px;margin:2px 0 6px}
.tokens{font:13px/1.9 ui-monospace,"DejaVu Sans Mono",Menlo,Consolas,monospace;white-space:pre-wrap;overflow-wrap:anywhere}
.tok{border-radius:2px;padding:1px 0;margin:0 .5px;cursor:default}
.tok.lt{color:#fff}
.tok:hover,.tok.sel{outline:2px solid #111;outline-offset:0}
.ws{opacity:.55}
#info{position:fixed;left:0;right:0;bottom:0;background:#1d1d1f;color:#f2f2f2;font:12.5px ui-monospace,"DejaVu Sans Mono",monospace;padding:6px 14px;white-space:pre;overflow:hidden;display:none}
"""

# Optional enhancement: a fixed detail bar mirroring the hovered token's tooltip. The page works without it.
_JS = """
(function(){
  // lets a headless browser check what was rendered
  document.body.setAttribute('data-rendered-tokens',document.querySelectorAll('span.tok').length);
  var info=document.getElementById('info');
  document.addEventListener('mouseover',function(e){
    var t=e.target.closest?e.target.closest('.tok'):null;
    if(!t){return;}
    info.textContent=t.getAttribute('title').replace(/\\n/g,'   ');
    info.style.display='block';
  });
})();
"""


def render_report(
    cards: Sequence[Card],
    info: PageInfo | None = None,
    clip_percentile: float = 95.0,
) -> str:
    """The whole page for ``cards``; the colour scale is shared by every token on it."""
    info = info or PageInfo()
    if not 0 < clip_percentile <= 100:
        raise ValueError(f"clip_percentile must be in (0, 100], got {clip_percentile}")
    all_r = [x for c in cards for r in c.responses for x in r.rewards]
    clip = clip_value(all_r, clip_percentile)
    settings = "".join(f"<span>{html.escape(k)} <b>{html.escape(v)}</b></span>" for k, v in info.settings.items())
    body = "".join(_render_card(i, c, clip) for i, c in enumerate(cards))
    if not cards:
        body = '<p class="sub">No rows to show.</p>'
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        # no network: forbid every fetch the page itself could make
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
        "style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:\">"
        f"<title>{html.escape(info.title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{html.escape(info.title)}</h1>"
        + (f'<div class="sub">{html.escape(info.subtitle)}</div>' if info.subtitle else "")
        + f'<div class="settings">{settings}</div>{_render_summary(cards)}'
        f"{_render_legend(clip, clip_percentile, len(all_r))}{body}"
        f'<div id="info"></div><script>{_JS}</script></body></html>\n'
    )
