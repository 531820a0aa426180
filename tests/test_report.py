"""`endorm report`: the pure HTML renderer, reading pairs / scored rows, and the page in a real headless browser."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import pytest

from endorm.chat import RowError
from endorm.cli import main
from endorm.report.cli import Config, build_cards, run
from endorm.report.html import (
    Card,
    Response,
    clip_value,
    percentile,
    render_report,
    reward_color,
    token_display,
    winners,
)

TOK_SPAN = re.compile(r'<span class="tok(?: lt)?"')
XSS = "<script>document.title='pwned'</script>"

PAIRS = [
    {"prompt": "What is the capital of France?", "chosen": "Paris.", "rejected": "Berlin."},
    {"system": "Be brief.", "prompt": "Say hi", "chosen": "Hi!\n\n  there", "rejected": f"ok {XSS} & <b>x</b>"},
    {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"},
                  {"role": "user", "content": "and 3+3?"}],
     "chosen": "6", "rejected": [{"role": "assistant", "content": "7"}]},
]


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _resp(label: str, tokens: list[str], rewards: list[float], total: float | None = None, **kw) -> Response:
    n = len(tokens)
    return Response(label, tokens, [-1.0] * n, [float(i) for i in range(n)], rewards,
                    sum(rewards) if total is None else total, **kw)


# -- pure pieces -----------------------------------------------------------------------------------
def test_percentile_matches_linear_interpolation():
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile([5], 95) == 5
    assert percentile([0, 10], 95) == pytest.approx(9.5)
    assert clip_value([0.0, 0.0], 95) == 1.0  # never a zero-width scale
    assert clip_value([-100.0] + [1.0] * 99, 95) == 1.0  # one outlier does not set the scale


def test_colour_scale_is_diverging_and_clipped():
    assert reward_color(0.0, 2.0)[0] == "rgb(247,247,247)"
    neg, pos = reward_color(-5.0, 2.0)[0], reward_color(5.0, 2.0)[0]
    assert neg == "rgb(202,0,32)" and pos == "rgb(5,113,176)"  # clipped at the ends
    assert reward_color(-2.0, 2.0)[0] == neg and reward_color(1.0, 2.0)[0] not in (pos, "rgb(247,247,247)")
    assert reward_color(-5.0, 2.0)[1] is True and reward_color(0.1, 2.0)[1] is False


def test_whitespace_tokens_are_visible():
    shown, br = token_display("\n")
    assert "\u21b5" in shown and "<br>" in shown and br
    assert token_display("  ")[0].count("\u00b7") == 2
    assert token_display(" Paris")[0] == " Paris"  # a leading space inside text stays a space
    assert "\u2192" in token_display("\t")[0]
    assert token_display("")[0] != ""


def test_text_is_escaped():
    page = render_report([Card("t<i>", [("user", "<b>hi</b>")], [_resp("a<b", ["<script>", "&"], [1.0, -1.0])])])
    assert page.count("<script") == 1  # only the page's own script
    assert "&lt;script&gt;" in page and "&amp;" in page and "&lt;b&gt;hi&lt;/b&gt;" in page
    assert "t&lt;i&gt;" in page and "a&lt;b" in page
    assert len(TOK_SPAN.findall(page)) == 2


def test_page_is_self_contained():
    page = render_report([Card("c", [], [_resp("a", ["x"], [0.5])])])
    assert not re.search(r"(src|href)\s*=", page)
    assert "http://" not in page and "https://" not in page and "@import" not in page
    assert "default-src 'none'" in page  # CSP forbids any fetch


def test_winner_verdict_and_summary():
    chosen = _resp("chosen", ["a"], [2.0], preferred=True)
    rejected = _resp("rejected", ["b"], [1.0], preferred=False)
    assert winners([chosen, rejected]) == [0]
    page = render_report([Card("p", [], [chosen, rejected]), Card("q", [], [
        _resp("chosen", ["a"], [0.0], preferred=True), _resp("rejected", ["b"], [3.0], preferred=False)])])
    assert "chosen scores higher \u2713" in page and "rejected scores higher \u2717" in page
    assert "<b>1/2</b> pairs" in page
    tie = render_report([Card("p", [], [_resp("chosen", ["a"], [1.0], preferred=True),
                                        _resp("rejected", ["b"], [1.0], preferred=False)])])
    assert "tie \u2717" in tie


def test_legend_names_the_clip():
    rs = [float(i) for i in range(-50, 51)]
    page = render_report([Card("c", [], [_resp("a", ["x"] * len(rs), rs)])], clip_percentile=90)
    assert f"\u00b1{clip_value(rs, 90):.3f}" in page and "90th percentile" in page
    with pytest.raises(ValueError, match="clip_percentile"):
        render_report([], clip_percentile=0)


def test_response_lengths_must_agree():
    with pytest.raises(ValueError, match="2 tokens but 1 rewards"):
        Response("a", ["x", "y"], [0.0, 0.0], [0.0, 0.0], [0.0], 0.0)


# -- reading and scoring ---------------------------------------------------------------------------
def test_report_scores_pairs(tmp_path, tiny_rm):
    inp = _write(tmp_path / "pairs.jsonl", PAIRS)
    out = tmp_path / "r.html"
    assert run(Config(input=str(inp), output=str(out)), rm=tiny_rm) == 0
    page = out.read_text(encoding="utf-8")
    expected = []
    for row in PAIRS:
        for side in ("chosen", "rejected"):
            resp = row[side] if isinstance(row[side], str) else row[side][-1]["content"]
            if "messages" in row:
                tr = tiny_rm.token_rewards(messages=row["messages"] + [{"role": "assistant", "content": resp}])
            else:
                tr = tiny_rm.token_rewards(row["prompt"], resp, system=row.get("system"))
            expected.append(tr)
    assert len(TOK_SPAN.findall(page)) == sum(len(t.tokens) for t in expected)
    for tr in expected:  # every total is shown
        assert f"<b>{tr.total:.2f}</b>" in page
    assert page.count('class="card"') == 3 and page.count("<script") == 1 and XSS in _token_text(page)
    assert "Be brief." in page and "and 3+3?" in page


def test_system_flag_reaches_the_model(tmp_path, tiny_rm):
    inp = _write(tmp_path / "p.jsonl", [{"prompt": "Hi", "response": "Hello there"}])
    out = tmp_path / "r.html"
    run(Config(input=str(inp), output=str(out), system="Be terse."), rm=tiny_rm)
    page = out.read_text(encoding="utf-8")
    want = tiny_rm.token_rewards("Hi", "Hello there", system="Be terse.").total
    assert f"<b>{want:.2f}</b>" in page and "Be terse." in page
    assert want != tiny_rm.token_rewards("Hi", "Hello there").total


def test_limit_scores_only_the_first_cards(tmp_path, tiny_rm):
    inp = _write(tmp_path / "pairs.jsonl", PAIRS)
    out = tmp_path / "r.html"
    run(Config(input=str(inp), output=str(out), limit=1), rm=tiny_rm)
    page = out.read_text(encoding="utf-8")
    assert page.count('class="card"') == 1 and "capital of France" in page and "Say hi" not in page


def test_scored_rows_grouped_by_prompt_without_a_model(tmp_path, tiny_rm):
    rows = [("Q1", "A one"), ("Q2", "B two"), ("Q1", "A three")]
    scored = []
    for p, r in rows:
        tr = tiny_rm.token_rewards(p, r)
        scored.append({"prompt": p, "response": r, "reward": tr.total, "token_rewards": tr.to_dict()})
    scored.append({"messages": [{"role": "user", "content": "Q2"}, {"role": "assistant", "content": "zz"}],
                   "token_rewards": tiny_rm.token_rewards("Q2", "zz").to_dict(), "label": "messages row"})
    inp = _write(tmp_path / "scored.jsonl", scored)
    out = tmp_path / "s.html"
    assert main(["report", "--input", str(inp), "--output", str(out)]) == 0  # no model is loaded
    page = out.read_text(encoding="utf-8")
    assert page.count('class="card"') == 2
    assert "scored.jsonl lines 1, 3" in page and "scored.jsonl lines 2, 4" in page
    assert "messages row" in page and "read from the file" in page
    assert len(TOK_SPAN.findall(page)) == sum(len(s["token_rewards"]["tokens"]) for s in scored)
    # the higher total of a group is marked
    tot1, tot3 = scored[0]["token_rewards"]["total"], scored[2]["token_rewards"]["total"]
    cards, pending = build_cards(list(enumerate(scored, 1)), "scored.jsonl")
    assert not pending and winners(cards[0].responses) == [0 if tot1 > tot3 else 1]


@pytest.mark.parametrize(
    "row, match",
    [
        ({"prompt": "q", "chosen": "a"}, r"x.jsonl line 2, field 'rejected': missing"),
        ({"chosen": "a", "rejected": "b"}, r"x.jsonl line 2, field 'prompt': missing"),
        ({"prompt": "q", "chosen": 3, "rejected": "b"}, r"x.jsonl line 2, field 'chosen'"),
        ({"prompt": "q", "response": "r", "token_rewards": {"tokens": ["a"]}}, r"line 2, field 'token_rewards'.*lacks"),
        ({"prompt": "q", "response": "r", "token_rewards": [1]}, r"line 2, field 'token_rewards'"),
        ({"text": "nothing to score"}, r"x.jsonl line 2, field 'prompt': missing"),
    ],
)
def test_bad_rows_name_line_and_field(tmp_path, row, match):
    with pytest.raises(RowError, match=match):
        build_cards([(1, PAIRS[0]), (2, row)], "x.jsonl")


def test_bad_response_is_reported_at_scoring(tmp_path, tiny_rm):
    inp = _write(tmp_path / "pairs.jsonl", [PAIRS[0], {"prompt": "q", "chosen": "ok", "rejected": "  "}])
    with pytest.raises(RowError, match=r"pairs.jsonl line 2 \(rejected\).*empty"):
        run(Config(input=str(inp), output=str(tmp_path / "o.html")), rm=tiny_rm)


# -- in a real browser -----------------------------------------------------------------------------
def _chromium() -> str:
    exe = shutil.which("chromium")
    if exe is None:
        pytest.fail("chromium not found on PATH; the report's browser test needs Debian's chromium: "
                    "apt-get install -y --no-install-recommends chromium")
    return exe


class _TokenText(HTMLParser):
    """The text inside token spans (attribute values, which may hold raw '<', are skipped)."""

    def __init__(self) -> None:
        super().__init__()
        self.depth, self.parts = 0, []

    def handle_starttag(self, tag, attrs):
        if self.depth or (tag == "span" and (dict(attrs).get("class") or "").startswith("tok")):
            self.depth += tag == "span"

    def handle_endtag(self, tag):
        if self.depth and tag == "span":
            self.depth -= 1

    def handle_data(self, data):
        if self.depth:
            self.parts.append(data)


def _token_text(dom: str) -> str:
    p = _TokenText()
    p.feed(dom)
    return "".join(p.parts)


def dump_dom(html_path: Path) -> str:
    """The DOM after load (scripts run), from headless chromium with a fresh profile and no network."""
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.run(
            [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--dump-dom", html_path.resolve().as_uri()],
            capture_output=True, text=True, timeout=120,
        )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_report_renders_in_chromium(tmp_path, tiny_rm):
    inp = _write(tmp_path / "pairs.jsonl", PAIRS)
    out = tmp_path / "report.html"
    run(Config(input=str(inp), output=str(out)), rm=tiny_rm)
    n_tokens = len(TOK_SPAN.findall(out.read_text(encoding="utf-8")))
    dom = dump_dom(out)
    assert "<body" in dom, dom[:500]
    # the page's script ran and counted the token spans the browser built
    m = re.search(r'data-rendered-tokens="(\d+)"', dom)
    assert m, "the page's script did not run"
    assert int(m.group(1)) == n_tokens > 10
    assert len(TOK_SPAN.findall(dom)) == n_tokens
    # a response holding <script> shows as text and runs nothing
    assert "pwned" not in re.search(r"<title>(.*?)</title>", dom, re.S).group(1)
    assert len(re.findall(r"<script", dom)) == 1
    assert XSS in _token_text(dom)


def test_markup_tokens_render_as_text_in_chromium(tmp_path):
    """Whole-markup tokens (as a scored file may carry) show as text; nothing in them runs."""
    evil = [XSS, "<img src=x onerror=\"document.title='pwned'\">", " & ", "\n", "</span></div>"]
    tr = {"tokens": evil, "logprobs": [-1.0] * 5, "values": [1.0] * 5, "rewards": [0.5, -0.5, 1, -1, 0],
          "total": 0.0}
    inp = _write(tmp_path / "scored.jsonl", [{"prompt": "<b>q</b>", "response": "x", "token_rewards": tr}])
    out = tmp_path / "evil.html"
    assert main(["report", "--input", str(inp), "--output", str(out)]) == 0
    dom = dump_dom(out)
    assert 'data-rendered-tokens="5"' in dom and len(TOK_SPAN.findall(dom)) == 5
    assert "pwned" not in re.search(r"<title>(.*?)</title>", dom, re.S).group(1)
    assert len(re.findall(r"<script", dom)) == 1 and "<img" not in dom and "<b>q" not in dom
    text = _token_text(dom)
    assert XSS in text and "<img src=x" in text and "</span></div>" in text
