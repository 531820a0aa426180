"""The token-stats sidecar can never hand a record another record's arrays.

Every reference carries the sidecar's id, the range and a crc32 of the bytes, and the reader checks them;
``--resume`` with a missing, cut-short or foreign sidecar scores the affected records again instead of
appending to a file the old records no longer match (before the fix, two items came back with each other's
arrays). The `endorm score --tokens` cases are rows of the bad-input catalogue (tests/test_bad_inputs.py).
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from endorm.eval import variants as V
from endorm.eval.cli import Config, run
from endorm.io import JsonlWriter, replace_file
from endorm.scoring import TokenStats
from endorm.stats_file import (
    HEADER_BYTES,
    StatsError,
    StatsReader,
    StatsWriter,
    check_for_resume,
    read_id,
)

A = TokenStats([1, 2, 3], torch.tensor([-1.0, -2.0, -0.5]), torch.tensor([3.0, 2.0, 1.0]))
B = TokenStats([4, 5], torch.tensor([-0.25, -4.0]), torch.tensor([7.0, 6.0]))


def _write(path, stats):
    with StatsWriter(path) as w:
        return w.write(stats), w.id


def test_reader_checks_id_range_and_checksum(tmp_path):
    p = tmp_path / "s.f32"
    refs, fid = _write(p, [A, B])
    assert read_id(p) == fid and len(fid) == 16
    r = StatsReader(p)
    assert torch.equal(r.get(refs[1], fid)[0], B.logprobs)
    other = _write(tmp_path / "other.f32", [A])[1]
    assert other != fid  # each file gets its own random id
    with pytest.raises(StatsError, match=f"row 2: the record points into the file {other}, but s.f32 is the file {fid}"):
        r.get(refs[1], other, "row 2")
    with pytest.raises(StatsError, match="predates checked token stats"):
        r.get(refs[1], None, "row 2")
    with pytest.raises(StatsError, match="lies outside"):
        r.get([0, 3, refs[0][2]], fid)  # the header is not data
    with pytest.raises(StatsError, match="lies outside .* shorter than its records say"):
        r.get([refs[1][0], 5, refs[1][2]], fid)
    with pytest.raises(StatsError, match="is not \\[offset, n, crc32\\]"):
        r.get(["4", 3], fid)
    data = bytearray(p.read_bytes())
    data[4 * refs[1][0] + 1] ^= 0x40  # one bit of B's first value
    p.write_bytes(bytes(data))
    r = StatsReader(p)
    assert torch.equal(r.get(refs[0], fid)[1], A.values)  # A's bytes are untouched
    with pytest.raises(StatsError, match="row 2: the arrays at .* fail their checksum"):
        r.get(refs[1], fid, "row 2")


def test_files_of_the_older_format_stay_readable_but_are_not_resumed(tmp_path):
    p = tmp_path / "old.f32"  # before the header: flat float32, records [offset, n] with no file id
    p.write_bytes(np.concatenate([A.logprobs.numpy(), A.values.numpy()]).astype("<f4").tobytes())
    r = StatsReader(p)
    assert r.id is None
    lp, v = r.get([0, 3], None)
    assert torch.equal(lp, A.logprobs) and torch.equal(v, A.values)
    with pytest.raises(StatsError, match="has no header"):
        r.get([0, 3, 0], "0123456789abcdef")
    with pytest.raises(StatsError, match="predates checked token stats .* delete old.f32"):
        check_for_resume(p, [{"token_stats": {"plain": [0, 3]}}], "out.jsonl")
    with pytest.raises(StatsError, match="no endorm token-stats header"):
        StatsWriter(p, resume=True).write([B])  # never appended to, even if the check is skipped
    assert r.get([0, 3], None)[0].tolist() == A.logprobs.tolist()


def test_check_for_resume_finds_missing_short_and_foreign_files(tmp_path):
    p = tmp_path / "s.f32"
    refs, fid = _write(p, [A, B, A])
    recs = [{"token_stats": {"plain": ref}, "token_stats_id": fid} for ref in refs]
    ok = check_for_resume(p, recs, "out")
    assert (ok.bad, ok.prefix, ok.none_kept) == ([], 3, False)
    with open(p, "rb+") as f:  # cut inside B's block
        f.truncate(4 * (refs[1][0] + 2))
    cut = check_for_resume(p, recs, "out")
    assert (cut.bad, cut.prefix, cut.none_kept) == ([1, 2], 1, False) and "lies outside" in cut.reason
    os.unlink(p)
    gone = check_for_resume(p, recs, "out")
    assert (gone.bad, gone.prefix, gone.none_kept, gone.reason) == ([0, 1, 2], 0, True, "s.f32 is missing")
    _write(p, [A, B, A])  # the same arrays, but another run's file
    foreign = check_for_resume(p, recs, "out")
    assert foreign.bad == [0, 1, 2] and "is the file" in foreign.reason
    p.write_bytes(b"ENDORMS1\x00")  # cut inside the header: no record can point into it
    assert check_for_resume(p, recs, "out").none_kept
    assert check_for_resume(p, [{"token_stats": {"plain": refs[0]}}, {}], "out").bad == [0, 1]


def test_writer_starts_again_when_the_header_is_torn(tmp_path):
    p = tmp_path / "s.f32"
    p.write_bytes(b"ENDORMS1\x01\x02")
    with StatsWriter(p, resume=True) as w:
        refs = w.write([A])
    assert p.stat().st_size == HEADER_BYTES + 4 * 6 and StatsReader(p).get(refs[0], w.id)[0].tolist() == [-1.0, -2.0, -0.5]


def test_keep_first_and_replace_file(tmp_path):
    p = tmp_path / "out.jsonl"
    p.write_text('{"a": 1}\n\n{"a": 2}\n{"a": 3}\n{"a": 4')  # a blank line and a torn last line
    w = JsonlWriter(p, resume=True)
    assert w.done == 3
    w.keep_first(2)
    assert (w.done, p.read_text()) == (2, '{"a": 1}\n\n{"a": 2}\n')
    w.write([{"a": 5}])
    w.close()
    assert p.read_text().endswith('{"a": 2}\n{"a": 5}\n')
    replace_file(p, "x\n")
    assert p.read_text() == "x\n" and not (tmp_path / "out.jsonl.tmp").exists()


# -- endorm eval --resume ------------------------------------------------------------------------------------------

PAIRS = [{"id": f"p{i}", "prompt": f"Q{i}: what is {i} plus {i}?", "chosen": f"It is {2 * i}. " * (i % 3 + 1),
          "rejected": f"It is {2 * i + 1}."} for i in range(8)]
VARIANTS = V.expand("sum,mean", "1")


def _eval(tmp_path, tiny, out, **kw):
    data = tmp_path / "pairs.jsonl"
    if not data.exists():
        data.write_text("".join(json.dumps(r) + "\n" for r in PAIRS))
    c = Config(benchmark="pairs", data=str(data), method="endorm,logprob-mean", progress=False, plot=False,
               aggregation="sum,mean", gamma="1", items_per_batch=2, output_dir=str(tmp_path / out), **kw)
    assert run(c, *tiny) == 0
    return tmp_path / out


def _lines(run_dir):
    return (run_dir / "examples.jsonl").read_text().splitlines()


def _scores(run_dir):
    by_variant, _ = V.variant_records(run_dir, VARIANTS)
    return {v: {r["id"]: r["scores"] for r in recs} for v, recs in by_variant.items()}


@pytest.mark.parametrize("damage", ["missing", "cut", "foreign"])
def test_eval_resume_rescores_what_the_sidecar_lacks(tmp_path, tiny, damage, caplog):
    """A run killed after 10 of its 16 records, whose sidecar is then deleted, cut inside the third endorm
    record's arrays or replaced by another run's: the resume scores exactly the endorm records whose arrays
    are gone again, keeps every other finished record as it was, and re-aggregation equals the
    uninterrupted run's. Before the fix, the new arrays were written over offsets old records still used."""
    fresh = _eval(tmp_path, tiny, "fresh")
    run_dir = _eval(tmp_path, tiny, "run")
    finished = _lines(run_dir)[:10]
    (run_dir / "examples.jsonl").write_text("".join(x + "\n" for x in finished))
    sidecar = run_dir / "token_stats.f32"
    endo = [json.loads(x) for x in finished if json.loads(x)["method"] == "endorm"]
    if damage == "missing":
        sidecar.unlink()
    elif damage == "cut":
        off, n, _ = endo[2]["token_stats"]["plain"][1]
        with open(sidecar, "rb+") as f:
            f.truncate(4 * (off + n))
    else:
        _eval(tmp_path, tiny, "other", seed=1, limit=5)
        sidecar.write_bytes((tmp_path / "other" / "token_stats.f32").read_bytes())
    dropped = {r["key"] for r in (endo if damage != "cut" else endo[2:])}
    caplog.set_level("WARNING")
    _eval(tmp_path, tiny, "run", resume=True)
    assert f"{len(dropped)} endorm records' token stats do not resolve" in caplog.text
    got = _lines(run_dir)
    keys = [json.loads(x)["key"] for x in got]
    assert sorted(keys) == sorted(json.loads(x)["key"] for x in _lines(fresh)) and len(set(keys)) == len(keys)
    kept = [x for x in finished if json.loads(x)["key"] not in dropped]
    assert got[: len(kept)] == kept  # every record whose arrays resolve stays, verbatim and in order
    ids = {json.loads(x).get("token_stats_id") for x in got} - {None}
    assert ids == {read_id(sidecar)}  # one file: nothing points into the damaged one
    assert _scores(run_dir) == _scores(fresh)


def test_eval_resume_of_an_intact_run_appends_in_order(tmp_path, tiny):
    fresh = _eval(tmp_path, tiny, "fresh")
    run_dir = _eval(tmp_path, tiny, "run")
    finished = _lines(run_dir)[:7]
    (run_dir / "examples.jsonl").write_text("".join(x + "\n" for x in finished))
    before = (run_dir / "token_stats.f32").read_bytes()
    _eval(tmp_path, tiny, "run", resume=True)
    got = _lines(run_dir)
    assert got[:7] == finished
    assert [json.loads(x)["key"] for x in got] == [json.loads(x)["key"] for x in _lines(fresh)]
    assert (run_dir / "token_stats.f32").read_bytes().startswith(before)  # appended to, nothing rewritten
    assert _scores(run_dir) == _scores(fresh)


@pytest.mark.parametrize("damage", ["cut", "foreign"])
def test_reaggregate_names_the_record_whose_arrays_are_gone(tmp_path, tiny, damage):
    run_dir = _eval(tmp_path, tiny, "run")
    sidecar = run_dir / "token_stats.f32"
    if damage == "cut":
        with open(sidecar, "rb+") as f:
            f.truncate(sidecar.stat().st_size - 4)
        match = r"examples.jsonl, record endorm\|pairs/p\d\|: reference .* lies outside token_stats.f32"
    else:
        _eval(tmp_path, tiny, "other", limit=5, seed=1)
        sidecar.write_bytes((tmp_path / "other" / "token_stats.f32").read_bytes())
        match = r"record endorm\|pairs/p\d\|: the record points into the file [0-9a-f]{16}, but token_stats.f32 is"
    with pytest.raises(StatsError, match=match):
        V.variant_records(run_dir, VARIANTS)
