"""Every aggregation x gamma x contrast from one pass: the kept token stats re-aggregate to exactly what
direct scoring gives, the sidecar survives a crash, and the pre-registered split and rule are fixed."""

import json
from collections import Counter

import pytest
import torch

from endorm.chat import NEUTRAL_PROMPT, Example, contrast_example
from endorm.eval import variants as V
from endorm.eval.cli import Config, run
from endorm.eval.data import load_rmbench
from endorm.scoring import TokenStats
from endorm.stats_file import StatsReader, StatsWriter

ROWS = [
    {"id": k, "subset": "alpacaeval", "prompt": f"Question {k}: what is {k}+{k}?",
     "chosen": [f"{2 * k}.", f"It is {2 * k}, as {k} plus {k} makes {2 * k}.", f"**It is {2 * k}.**"],
     "rejected": [f"{2 * k + 1}.", f"It is {2 * k + 1}.", f"**It is {2 * k + 1}.** Trust me on this one."]}
    for k in range(4)
]
GAMMAS = "1,0.97,0.9,0.8"


@pytest.fixture()
def rmb_file(tmp_path):
    p = tmp_path / "rmb.json"
    p.write_text(json.dumps(ROWS))
    return p


def _eval(tmp_path, tiny, data, **kw):
    model, tok = tiny
    c = Config(benchmark="rm-bench", data=str(data), method="endorm", output_dir=str(tmp_path / "run"),
               progress=False, plot=False, aggregation="all", gamma=GAMMAS, contrast="none,prompt,system",
               system_prompt="Answer in one sentence.", items_per_batch=3, **kw)
    assert run(c, model, tok) == 0
    return tmp_path / "run"


def test_expand_names_and_parse():
    vs = V.expand("all", "1,0.9", "none,prompt")
    names = [v.name for v in vs]
    assert names[:5] == ["sum", "mean", "discounted@0.9", "logprob@1", "logprob@0.9"]  # discounted@1 is sum
    assert "discounted@0.9:prompt" in names and len(names) == 10
    assert all(V.Variant.parse(v.name) == v for v in vs)
    assert V.expand("discounted", 1.0)[0].name == "discounted@1"  # kept when sum is not asked for
    with pytest.raises(ValueError, match="unknown aggregation"):
        V.expand("median")
    with pytest.raises(ValueError, match="gamma must be in"):
        V.expand("discounted", "1.5")
    with pytest.raises(ValueError, match="unknown contrast"):
        V.expand("sum", 1, "reverse")


# (item id, split) as the pre-registered study used them (docs/RESULTS.md, rule item 2): the first RM-Bench
# prompts of each domain in the shared data, DSP queries, and ids the tests here build
SPLIT_PINS = [
    ("rm-bench/chat/8", "dev"), ("rm-bench/chat/12", "dev"), ("rm-bench/chat/18", "dev"),
    ("rm-bench/chat/22", "test"), ("rm-bench/chat/26", "test"), ("rm-bench/chat/29", "dev"),
    ("rm-bench/chat/31", "dev"),
    ("rm-bench/code/8", "test"), ("rm-bench/code/10", "test"), ("rm-bench/code/20", "dev"),
    ("rm-bench/code/30", "test"), ("rm-bench/code/32", "dev"), ("rm-bench/code/34", "dev"),
    ("rm-bench/code/42", "test"),
    ("rm-bench/safety/2952", "dev"), ("rm-bench/safety/2953", "test"), ("rm-bench/safety/2954", "test"),
    ("rm-bench/safety/2955", "dev"), ("rm-bench/safety/2956", "test"), ("rm-bench/safety/2957", "test"),
    ("rm-bench/safety/2958", "dev"),
    ("dsp/0", "dev"), ("dsp/1", "test"), ("dsp/2", "dev"), ("dsp/3", "dev"), ("dsp/4", "dev"), ("dsp/5", "test"),
    ("rm-bench/chat/0", "test"), ("rm-bench/chat/1", "test"), ("rm-bench/chat/2", "test"), ("rm-bench/chat/3", "dev"),
]


def test_split_is_the_pre_registered_one():
    assert [(i, V.split_of(i)) for i, _ in SPLIT_PINS] == SPLIT_PINS


def test_split_counts_are_the_reported_ones(shared_data):
    """docs/RESULTS.md: the full shared RM-Bench (798 prompts) splits 397 dev (chat 65, code 110, safety 222)
    / 401 test."""
    items = load_rmbench(shared_data / "rm-bench")
    assert len(items) == 798
    assert Counter((it.domain, V.split_of(it.id)) for it in items) == {("chat", "dev"): 65, ("chat", "test"): 64, ("code", "dev"): 110, ("code", "test"): 118,
                 ("safety", "dev"): 222, ("safety", "test"): 219}


def test_stats_file_roundtrip_and_torn_tail(tmp_path):
    import zlib

    from endorm.stats_file import HEADER_VALUES, StatsError

    p = tmp_path / "s.f32"
    a = TokenStats([1, 2, 3], torch.tensor([-1.0, -2.0, -0.5]), torch.tensor([3.0, 2.0, 1.0]))
    b = TokenStats([4], torch.tensor([-0.25]), torch.tensor([7.0]))
    with StatsWriter(p) as w:
        refs = w.write([a, b])
        fid = w.id
    h = HEADER_VALUES  # the header comes first; offsets count from the start of the file
    crc_b = zlib.crc32(torch.cat([b.logprobs, b.values]).numpy().tobytes())
    assert [r[:2] for r in refs] == [[h, 3], [h + 6, 1]] and refs[1][2] == crc_b
    with open(p, "ab") as f:  # a crash in the middle of a value
        f.write(b"\x00\x01")
    with StatsWriter(p, resume=True) as w:
        assert w.write([b]) == [[h + 8, 1, crc_b]] and w.id == fid  # appended to the same file
    r = StatsReader(p)
    lp, v = r.get(refs[0], fid)
    assert torch.equal(lp, a.logprobs) and torch.equal(v, a.values)
    assert torch.equal(r.get([h + 8, 1, crc_b], fid)[1], b.values)
    with pytest.raises(StatsError, match="row 9: reference .* lies outside"):
        r.get([h + 9, 5, 0], fid, "row 9")


def test_contrast_examples():
    e = Example([{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A."}], "Be brief.", row=3)
    p = contrast_example(e, "prompt")
    assert p.messages == [{"role": "user", "content": NEUTRAL_PROMPT}, {"role": "assistant", "content": "A."}]
    assert p.system == "Be brief." and p.row == 3
    s = contrast_example(e, "system")
    assert s.system is None and s.messages == e.messages
    m = Example([{"role": "system", "content": "S"}, {"role": "user", "content": "Q?"},
                 {"role": "assistant", "content": "A."}])
    assert contrast_example(m, "system").messages == m.messages[1:]
    assert contrast_example(m, "prompt").system == "S"
    with pytest.raises(ValueError, match="unknown contrast"):
        contrast_example(e, "other")


def test_reaggregated_variants_equal_direct_scoring(tmp_path, tiny, tiny_rm, rmb_file):
    run_dir = _eval(tmp_path, tiny, rmb_file)
    variants = V.expand("all", GAMMAS, "all")
    by_variant, settings = V.variant_records(run_dir, variants)
    recs = {r["id"]: r for r in json.loads("[" + ",".join(
        (run_dir / "examples.jsonl").read_text().splitlines()) + "]")}
    items = {it.id: it for it in load_rmbench(rmb_file)}
    assert len(variants) == 3 * (2 + 2 * 4 - 1) and settings["contrast"] == "none,prompt,system"
    checked = 0
    for var in variants:
        rm = tiny_rm.with_config(aggregation=var.aggregation, gamma=var.gamma, contrast=var.contrast,
                                 system_prompt="Answer in one sentence.")
        for rec in by_variant[var]:
            it = items[rec["id"]]
            direct = rm.score_examples([it.example(k) for k in range(6)])
            assert rec["scores"] == pytest.approx(direct, abs=1e-5), var.name
            checked += 6
        assert all(len(r["margins"]) == 9 for r in by_variant[var])
    assert checked == len(variants) * 4 * 6
    # the main table's endorm row is the first variant (sum, no contrast)
    for rec in by_variant[V.Variant("sum")]:
        assert rec["scores"] == pytest.approx(recs[rec["id"]]["scores"], abs=1e-6)
    # the system contrast is the part of the reward the system prompt adds: nonzero here
    sys_scores = [s for r in by_variant[V.Variant("sum", 1.0, "system")] for s in r["scores"]]
    assert max(abs(s) for s in sys_scores) > 1e-3


def test_reaggregate_cli_writes_tables_and_selects(tmp_path, tiny, rmb_file, capsys):
    run_dir = _eval(tmp_path, tiny, rmb_file)
    out = tmp_path / "re"
    c = Config(reaggregate=str(run_dir), aggregation="sum,discounted,mean", gamma="0.9", contrast="none,prompt",
               output_dir=str(out))
    assert run(c) == 0  # no model passed: the reaggregate path must not need one
    res = json.loads((out / "variants.json").read_text())
    assert res["command"] == (f"endorm eval --gamma 0.9 --aggregation sum,discounted,mean --contrast none,prompt "
                              f"--reaggregate {run_dir} --output-dir {out}")  # the file names its command
    assert set(res["variants"]) == {"sum", "mean", "discounted@0.9", "sum:prompt", "mean:prompt",
                                    "discounted@0.9:prompt"}
    for r in res["variants"].values():
        assert set(r) <= {"dev", "test", "all"} and "all" in r
        assert 0 <= r["all"]["shorter_wins"] <= 100 and r["all"]["n"] == 4
        dev_ids = [it for it in range(4) if V.split_of(f"rm-bench/chat/{it}") == "dev"]
        if "dev" in r:
            assert r["dev"]["n"] == len(dev_ids)
    chosen = res["chosen"]
    best = max((r["dev"]["overall"]["avg"], n) for n, r in res["variants"].items() if "dev" in r)[0]
    assert res["variants"][chosen]["dev"]["overall"]["avg"] == best
    md = (out / "variants.md").read_text()
    assert f"**{chosen}** (chosen)" in md and "shorter wins" in md
    assert "chosen by the pre-registered rule" in capsys.readouterr().out


def test_select_rule_ties_go_to_the_first():
    summary = {"sum": {"dev": {"overall": {"avg": 60.0}}}, "discounted@0.9": {"dev": {"overall": {"avg": 60.0}}},
               "mean": {"dev": {"overall": {"avg": 59.0}}}}
    assert V.select(summary) == "sum"
    summary["mean"]["dev"]["overall"]["avg"] = 61.0
    assert V.select(summary) == "mean"


def test_shorter_wins_share():
    recs = [{"lengths": [1, 5, 5], "margins": [[0, 1, 2.0], [1, 2, 1.0], [2, 0, 3.0], [0, 2, 0.0]]}]
    # decided, unequal length: (0 beats 1: shorter wins), (2 beats 0: longer wins); (1,2) equal, (0,2) tie
    assert V.shorter_wins(recs) == (50.0, 2)


def test_resume_keeps_stats_consistent(tmp_path, tiny, rmb_file):
    model, tok = tiny
    base = dict(benchmark="rm-bench", data=str(rmb_file), method="endorm", output_dir=str(tmp_path / "run"),
                progress=False, plot=False, aggregation="all", gamma="1,0.9", contrast="none,prompt",
                items_per_batch=1)
    assert run(Config(limit=2, **base), model, tok) == 0
    with open(tmp_path / "run" / "token_stats.f32", "ab") as f:  # a crash while writing the next item
        f.write(b"\x01\x02\x03\x04\x05\x06")
    assert run(Config(resume=True, **base), model, tok) == 0
    recs = [json.loads(x) for x in (tmp_path / "run" / "examples.jsonl").read_text().splitlines()]
    assert len(recs) == 4 and len({r["id"] for r in recs}) == 4
    # a fresh, uninterrupted run gives the same variants
    fresh = dict(base, output_dir=str(tmp_path / "fresh"))
    assert run(Config(**fresh), model, tok) == 0
    vs = V.expand("all", "1,0.9", "none,prompt")
    a, _ = V.variant_records(tmp_path / "run", vs)
    b, _ = V.variant_records(tmp_path / "fresh", vs)
    for v in vs:
        sa = {r["id"]: r["scores"] for r in a[v]}
        sb = {r["id"]: r["scores"] for r in b[v]}
        assert sa.keys() == sb.keys()
        for k in sa:
            assert sa[k] == pytest.approx(sb[k], abs=1e-5)


def test_reaggregate_needs_kept_stats(tmp_path, tiny, rmb_file):
    model, tok = tiny
    c = Config(benchmark="rm-bench", data=str(rmb_file), method="endorm", output_dir=str(tmp_path / "run"),
               progress=False, plot=False, token_stats=False)
    assert run(c, model, tok) == 0
    with pytest.raises(FileNotFoundError, match="token-stats file"):
        V.reaggregate(tmp_path / "run", V.expand("sum"))


def test_failed_overwrite_keeps_the_old_stats(tmp_path, tiny, rmb_file):
    """--overwrite of a run that fails before scoring anything (here: the model does not load) leaves both
    the records and their arrays intact."""
    run_dir = _eval(tmp_path, tiny, rmb_file)
    before = (run_dir / "token_stats.f32").read_bytes()
    records = (run_dir / "examples.jsonl").read_bytes()
    settings = (run_dir / "settings.json").read_bytes()
    c = Config(benchmark="rm-bench", data=str(rmb_file), method="endorm", output_dir=str(run_dir), progress=False,
               plot=False, overwrite=True, model=str(tmp_path / "no-such-model"))
    with pytest.raises((ValueError, FileNotFoundError, OSError)):
        run(c)
    assert (run_dir / "token_stats.f32").read_bytes() == before
    assert (run_dir / "examples.jsonl").read_bytes() == records
    assert (run_dir / "settings.json").read_bytes() == settings
    V.variant_records(run_dir, V.expand("sum"))  # the kept records still resolve


def test_dsp_markdown_has_the_diagonal_and_the_default_matrix():
    doms = ("academy", "business", "entertainment", "literature")
    # system s, domain d: 70 on the diagonal, 40 + row index off it
    table = {s: {d: (70.0 if d == s else 40.0 + i) for d in doms} for i, s in enumerate(doms)}
    res = {"all": {"table": table, "diagonal_mean": 70.0, "off_diagonal_mean": 41.5, "diagonal_lift": 28.5,
                   "diagonal_lift_se": 1.2, "n_queries_all_systems": 9, "shorter_wins": 51.0,
                   "n": {d: 9 for d in doms}}}
    summary = {"sum": res, "discounted@0.93": res, "discounted@0.93:system": res, "mean": res}
    md = V.markdown(summary, "dsp")
    assert "| sum | 70.0 | 70.0 | 70.0 | 70.0 | 70.0 | 41.5 | 28.5 ± 1.2 (9) | 51.0 | 9 |" in md
    # the 4x4 of the paper's sum, the default and the default's system contrast, not of 'mean'
    assert md.count("| academy | **70.0** | 40.0 | 40.0 | 40.0 |") == 3
    assert "| literature | 43.0 | 43.0 | 43.0 | **70.0** |" in md
    assert "| discounted@0.93:system | Academy |" in md and "| mean | Academy |" not in md
