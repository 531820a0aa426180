"""`endorm score` end to end on a tiny model saved to disk: fields kept, bad rows named, resume."""

import json

import pytest

import endorm.scoring as scoring
from endorm import EndogenousRewardModel
from endorm.cli import main
from endorm.commands import score as score_cmd

ROWS = [
    {"prompt": "What is the capital of France?", "response": "Paris.", "id": 1},
    {"prompt": "What is the capital of France?", "response": "Berlin.", "id": 2},
    {"system": "Be brief.", "prompt": "Say hi", "response": "hi there", "id": 3},
    {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}], "id": 4},
    {"prompt": "def add(a, b):", "response": "    return a + b", "id": 5},
]


def write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def read_rows(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_score(tiny_model_dir, inp, out, *extra):
    return main(["score", "--model", str(tiny_model_dir), "--input", str(inp), "--output", str(out), "--show", "0", *extra])


def test_score_keeps_fields_and_matches_api(tmp_path, tiny_model_dir):
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_rows(inp, ROWS)
    assert run_score(tiny_model_dir, inp, out, "--tokens") == 0
    got = read_rows(out)
    assert [r["id"] for r in got] == [1, 2, 3, 4, 5]
    for r, src in zip(got, ROWS, strict=True):
        assert {k: r[k] for k in src} == src
        assert r["token_rewards"]["total"] == pytest.approx(r["reward"])
        assert len(r["token_rewards"]["rewards"]) == len(r["token_rewards"]["tokens"])
    rm = EndogenousRewardModel.from_pretrained(str(tiny_model_dir))
    api = rm.score([ROWS[0]["prompt"], ROWS[1]["prompt"]], [ROWS[0]["response"], ROWS[1]["response"]])
    assert [got[0]["reward"], got[1]["reward"]] == pytest.approx(api, abs=1e-4)
    assert got[2]["reward"] == pytest.approx(rm.score(["Say hi"], ["hi there"], systems=["Be brief."])[0], abs=1e-4)


def test_yaml_config_and_flags(tmp_path, tiny_model_dir):
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_rows(inp, ROWS[:2])
    cfg = tmp_path / "score.yaml"
    cfg.write_text(f"model: {tiny_model_dir}\ninput: {inp}\noutput: {out}\naggregation: mean\nbatch_size: 1\nshow: 0\n")
    assert main(["score", "--config", str(cfg)]) == 0
    mean = [r["reward"] for r in read_rows(out)]
    assert main(["score", "--config", str(cfg), "--aggregation", "sum", "--overwrite"]) == 0
    total = [r["reward"] for r in read_rows(out)]
    assert all(abs(m) < abs(t) for m, t in zip(mean, total, strict=True))


def test_resume_after_interruption(tmp_path, tiny_model_dir, monkeypatch):
    inp, out, ref = tmp_path / "in.jsonl", tmp_path / "out.jsonl", tmp_path / "ref.jsonl"
    rows = [dict(r, id=i) for i, r in enumerate(ROWS * 3)]
    write_rows(inp, rows)
    assert run_score(tiny_model_dir, inp, ref) == 0
    monkeypatch.setattr(score_cmd, "WRITE_EVERY", 4)
    calls = {"n": 0}

    orig = scoring.compute_stats

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return orig(*a, **k)

    monkeypatch.setattr(scoring, "compute_stats", flaky)
    assert run_score(tiny_model_dir, inp, out) == 130
    assert len(read_rows(out)) == 8  # two blocks of 4 finished and kept
    with open(out, "a") as f:
        f.write('{"prompt": "torn')  # a crash mid-write leaves a partial line
    assert run_score(tiny_model_dir, inp, out) == 1  # refuses to clobber without --resume/--overwrite
    monkeypatch.setattr(scoring, "compute_stats", orig)
    assert run_score(tiny_model_dir, inp, out, "--resume") == 0
    got, want = read_rows(out), read_rows(ref)
    assert [r["id"] for r in got] == list(range(len(rows)))  # no duplicates, no gaps
    assert [r["reward"] for r in got] == pytest.approx([r["reward"] for r in want], abs=1e-4)


def test_resume_rejects_another_input(tmp_path, tiny_model_dir):
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_rows(inp, ROWS)
    assert run_score(tiny_model_dir, inp, out) == 0
    write_rows(inp, [dict(r, id=r["id"] + 100) for r in ROWS] + ROWS)
    assert run_score(tiny_model_dir, inp, out, "--resume") == 1


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"prompt": "hi", "response": "yo"}\n{"prompt": "hi", "response": \n', "line 2: malformed JSON"),
        ('{"prompt": "hi"}\n', "line 1, field 'response': missing"),
        ('{"prompt": "hi", "response": 5}\n', "line 1, field 'response': must be a string"),
        ('{"prompt": "hi", "response": ""}\n', "line 1, field 'response': the response is empty"),
        ('{"messages": "hi"}\n', "line 1, field 'messages'"),
        ('[1, 2]\n', "line 1: expected a JSON object"),
        ('{"prompt": "<|im_start|>user", "response": "x"}\n', "line 1, field 'messages[0]': contains the special"),
    ],
)
def test_bad_rows_name_the_line(tmp_path, tiny_model_dir, capsys, line, message):
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    inp.write_text(line)
    assert run_score(tiny_model_dir, inp, out) == 1
    assert message in capsys.readouterr().err


def test_unknown_model_and_missing_input(tmp_path, capsys):
    inp = tmp_path / "in.jsonl"
    write_rows(inp, ROWS[:1])
    assert main(["score", "--model", str(tmp_path / "nope"), "--input", str(inp), "--output", str(tmp_path / "o")]) == 1
    assert "not found" in capsys.readouterr().err
    assert main(["score", "--input", str(tmp_path / "missing.jsonl"), "--output", str(tmp_path / "o")]) == 1
    assert "input file not found" in capsys.readouterr().err
    assert main(["nonsense"]) == 2
