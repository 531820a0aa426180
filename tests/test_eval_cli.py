"""`endorm eval` end to end on a tiny random model: outputs, resume, merge, and the command line."""

import json

import pytest

from endorm.cli import COMMANDS, main
from endorm.eval import cli as eval_cli
from endorm.eval.cli import Config, run

RMB_ROWS = [
    {"id": k, "subset": "alpacaeval" if k < 3 else "xstest-should-respond", "prompt": f"Question {k}: what is {k}+{k}?",
     "chosen": [f"{2 * k}.", f"It is {2 * k}.", f"**It is {2 * k}.**"],
     "rejected": [f"{2 * k + 1}.", f"It is {2 * k + 1}.", f"**It is {2 * k + 1}.**"]}
    for k in range(5)
]


@pytest.fixture()
def rmb_file(tmp_path):
    p = tmp_path / "rmb.json"
    p.write_text(json.dumps(RMB_ROWS))
    return p


def cfg(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path / "out"), progress=False, plot=False)
    base.update(kw)
    return Config(**base)


def records(tmp_path, name="out"):
    return [json.loads(line) for line in (tmp_path / name / "examples.jsonl").read_text().splitlines()]


def test_rmbench_outputs(tmp_path, tiny, rmb_file):
    model, tok = tiny
    c = cfg(tmp_path, benchmark="rm-bench", data=str(rmb_file), method="endorm,logprob-mean,genrm-pairwise", plot=True)
    assert run(c, model, tok) == 0
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert set(res["methods"]) == {"endorm", "logprob-mean", "genrm-pairwise"}
    e = res["methods"]["endorm"]
    assert set(e["domains"]) == {"chat", "safety"} and e["domains"]["chat"]["n"] == 3 and e["n"] == 5
    assert {"easy", "normal", "hard", "avg"} <= set(e["overall"])
    assert set(e["subsets"]) == {"alpacaeval", "xstest-should-respond"} and e["subsets"]["alpacaeval"]["n"] == 3
    assert "tie" in res["tie_rule"] and res["settings"]["alpha"] == 1.0 and "elapsed_s" in e
    recs = records(tmp_path)
    assert len(recs) == 15 and all(len(r["margins"]) == 9 for r in recs)
    assert all(len(r["scores"]) == 6 for r in recs if r["method"] == "endorm")
    # the 3x3 matrix recomputed from the saved scores agrees with the summary
    chat = [r for r in recs if r["method"] == "endorm" and r["domain"] == "chat"]
    m00 = sum(r["scores"][0] > r["scores"][3] for r in chat) / len(chat)
    assert e["domains"]["chat"]["matrix"][0][0] == pytest.approx(100 * m00)
    table = (tmp_path / "out" / "table.md").read_text()
    assert "| endorm |" in table and "Easy" in table and "tie" in table and "70.2" in table  # paper row
    assert (tmp_path / "out" / "plot.png").stat().st_size > 1000


def test_resume_continues_without_duplicates(tmp_path, tiny, rmb_file):
    model, tok = tiny
    c = cfg(tmp_path, benchmark="rm-bench", data=str(rmb_file), method="endorm", limit=2, items_per_batch=1)
    run(c, model, tok)
    first = records(tmp_path)
    assert len(first) == 4  # 2 per domain
    # a torn last line (a crash mid-write) is dropped, and the run picks up the rest
    with open(tmp_path / "out" / "examples.jsonl", "a") as f:
        f.write('{"key": "endorm|torn')
    c2 = cfg(tmp_path, benchmark="rm-bench", data=str(rmb_file), method="endorm", resume=True)
    run(c2, model, tok)
    recs = records(tmp_path)
    assert len(recs) == 5 and len({r["key"] for r in recs}) == 5
    assert recs[:4] == first  # finished rows untouched
    full = cfg(tmp_path, benchmark="rm-bench", data=str(rmb_file), method="endorm", output_dir=str(tmp_path / "fresh"))
    run(full, model, tok)
    fresh = {r["key"]: r["scores"] for r in records(tmp_path, "fresh")}
    resumed = {r["key"]: r["scores"] for r in recs}
    assert resumed.keys() == fresh.keys()
    for key, scores in resumed.items():
        assert scores == pytest.approx(fresh[key], abs=1e-4)
    with pytest.raises(FileExistsError):
        run(cfg(tmp_path, benchmark="rm-bench", data=str(rmb_file)), model, tok)
    with pytest.raises(ValueError, match="other settings"):
        run(cfg(tmp_path, benchmark="rm-bench", data=str(rmb_file), alpha=2.0, resume=True), model, tok)


def test_summarise_only_loads_no_model(tmp_path, tiny, rmb_file, monkeypatch):
    model, tok = tiny
    run(cfg(tmp_path, benchmark="rm-bench", data=str(rmb_file), method="endorm"), model, tok)
    monkeypatch.setattr(eval_cli, "load_models", lambda *a, **k: pytest.fail("loaded a model"))
    run(cfg(tmp_path, benchmark="rm-bench", data=str(rmb_file), method="endorm", limit=1, resume=True))
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert res["methods"]["endorm"]["n"] == 2 and res["new_records"] == 0


def test_dsp_table(tmp_path, tiny):
    model, tok = tiny
    dsp = tmp_path / "dsp.json"  # the shared set's answers are too long for the tiny model's 512 positions
    dsp.write_text(json.dumps([{"query": f"Tell me about the sea {k}.", "responses": {
        "academy": "The sea covers 71% of the Earth.", "business": "Shipping drives trade.",
        "entertainment": "Surf's up, dude!", "literature": "O restless sea, you sing.", "normal": "It is big."}}
        for k in range(3)]))
    run(cfg(tmp_path, benchmark="dsp", data=str(dsp), method="endorm", limit=2,
            dsp_systems="academy,literature,none"), model, tok)
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    table = res["methods"]["endorm"]["table"]
    assert set(table) == {"academy", "literature", "none"}
    assert set(table["academy"]) == {"academy", "business", "entertainment", "literature"}
    assert all(v in (0.0, 12.5, 25.0, 37.5, 50.0, 62.5, 75.0, 87.5, 100.0) for row in table.values() for v in row.values())
    recs = records(tmp_path)
    assert len(recs) == 6 and all(len(r["margins"]) == 16 for r in recs)
    by = {(r["id"], r["system"]): r["scores"] for r in recs}
    some = recs[0]["id"]
    assert by[(some, "academy")] != by[(some, "literature")]  # the system prompt changes the reward


def test_dsp_system_contrast_shares_the_no_system_pass(tmp_path, tiny, monkeypatch):
    """--contrast system on DSP: the contrast context of every domain prompt is the 'none' system's own
    input, so each query costs one pass per system, not two (docs/EVAL.md)."""
    from endorm.reward_model import EndogenousRewardModel

    model, tok = tiny
    dsp = tmp_path / "dsp.json"
    dsp.write_text(json.dumps([{"query": "Tell me about the sea.", "responses": {
        "academy": "The sea covers 71% of the Earth.", "business": "Shipping drives trade.",
        "entertainment": "Surf's up, dude!", "literature": "O restless sea, you sing.", "normal": "It is big."}}]))
    seen = []
    real = EndogenousRewardModel.stats_encoded
    monkeypatch.setattr(EndogenousRewardModel, "stats_encoded",
                        lambda self, enc, *a, **k: seen.extend(tuple(e.input_ids) for e in enc) or real(self, enc, *a, **k))
    run(cfg(tmp_path, benchmark="dsp", data=str(dsp), method="endorm", contrast="none,system",
            dsp_systems="academy,literature,none"), model, tok)
    assert len(seen) == len(set(seen)) == 15  # 5 responses x (academy, literature, no system)
    recs = {r["system"]: r for r in records(tmp_path)}
    assert set(recs) == {"academy", "literature", "none"}


def test_pairs_and_best_of_n(tmp_path, tiny):
    model, tok = tiny
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in [
        {"prompt": "Hi", "chosen": "Hello!", "rejected": "Go away.", "subset": "chat"},
        {"prompt": "2+2?", "chosen": "4", "rejected": "5", "subset": "math", "system": "Be exact."},
        {"prompt": "2+3?", "chosen": "5", "rejected": "6", "subset": "math"},
    ]))
    run(cfg(tmp_path, benchmark="pairs", data=str(pairs), method="endorm,verifier"), model, tok)
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert set(res["methods"]["verifier"]["subsets"]) == {"chat", "math"}
    assert res["methods"]["endorm"]["subsets"]["math"]["n"] == 2
    bon = tmp_path / "bon.jsonl"
    bon.write_text("".join(json.dumps(r) + "\n" for r in [
        {"prompt": "2+2?", "candidates": ["3", "4", "5"], "best": 1},
        {"prompt": "Hi", "chosen": ["Hello"], "rejected": ["x", "y"]},
    ]))
    run(cfg(tmp_path, benchmark="best-of-n", data=str(bon), method="endorm,genrm-pairwise", output_dir=str(tmp_path / "b")),
        model, tok)
    recs = records(tmp_path, "b")
    assert all(r["credit"] in (0.0, 0.5, 1.0, 1 / 3) for r in recs)
    pw = [r for r in recs if r["method"] == "genrm-pairwise"]
    assert len(pw[0]["pair_probs"]) == 3 and len(pw[0]["scores"]) == 3  # round robin over 3 candidates


def test_merge_and_command_line(tmp_path, tiny, rmb_file):
    model, tok = tiny
    run(cfg(tmp_path, benchmark="rm-bench", data=str(rmb_file), method="endorm", output_dir=str(tmp_path / "a")), model, tok)
    run(cfg(tmp_path, benchmark="rm-bench", data=str(rmb_file), method="verifier", limit=1,
                output_dir=str(tmp_path / "b")), model, tok)
    assert COMMANDS["eval"] == "endorm.eval.cli"
    code = main(["eval", "--merge", f"{tmp_path / 'a'},{tmp_path / 'b'}", "--output-dir", str(tmp_path / "m")])
    assert code == 0
    merged = json.loads((tmp_path / "m" / "results.json").read_text())
    assert list(merged["methods"]) == ["endorm", "verifier"]
    assert (tmp_path / "m" / "plot.png").exists() and "| verifier |" in (tmp_path / "m" / "table.md").read_text()
    # a bad method name is a clean error from the command line
    assert main(["eval", "--method", "nope", "--output-dir", str(tmp_path / "x")]) == 1
