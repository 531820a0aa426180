"""``endorm score --engine ray`` equals the single-process path, on a local 2-CPU Ray cluster with the
tiny model saved to a temporary directory (no download)."""

import functools
import json

import pytest

ray = pytest.importorskip("ray")  # the 'ray' extra; installed in the dev environment

from endorm.cli import main  # noqa: E402
from endorm.distributed.ray_engine import _collect, score_rows_ray  # noqa: E402

ROWS = [
    {"id": 0, "prompt": "What is the capital of France?", "response": "The capital of France is Paris."},
    {"id": 1, "prompt": "What is the capital of France?", "response": "Berlin."},
    {"id": 2, "prompt": "Write a poem about the sea.", "response": "The sea, the wind and the rain.", "system": "Be brief."},
    {"id": 3, "messages": [{"role": "user", "content": "def add(a, b):"}, {"role": "assistant", "content": "return a + b"},
                           {"role": "user", "content": "and sub?"}, {"role": "assistant", "content": "return a - b"}],
     "meta": {"nested": [1, 2, {"x": None}]}},
] + [{"id": 4 + i, "prompt": f"Count to {i}.", "response": " ".join(str(k) for k in range(i + 1))} for i in range(14)]


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=80 * 1024**2)
    yield
    ray.shutdown()


def read(path):
    return [json.loads(line) for line in open(path, encoding="utf-8")]


def test_ray_engine_equals_local_path(local_ray, tiny_model_dir, tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    common = ["score", "--input", str(src), "--model", str(tiny_model_dir), "--tokens", "--batch-size", "4", "--show", "0"]
    assert main(common + ["--output", str(tmp_path / "local.jsonl")]) == 0
    assert main(common + ["--output", str(tmp_path / "ray.jsonl"), "--engine", "ray", "--num-actors", "2"]) == 0
    local, dist = read(tmp_path / "local.jsonl"), read(tmp_path / "ray.jsonl")
    assert [r["id"] for r in dist] == [r["id"] for r in ROWS]  # input order kept
    assert len(dist) == len(local) == len(ROWS)
    exact = sum(a == b for a, b in zip(local, dist, strict=True))
    print(f"rows byte-identical to the local path: {exact} of {len(local)}")
    for a, b in zip(local, dist, strict=True):
        # token_stats: the float32 sidecar is the local engine's (docs/SERVING.md)
        assert {k: v for k, v in a.items() if k not in ("reward", "token_rewards", "token_stats", "token_stats_id")} == \
               {k: v for k, v in b.items() if k not in ("reward", "token_rewards")}
        assert b["reward"] == pytest.approx(a["reward"], abs=1e-5)
        assert b["token_rewards"]["token_ids"] == a["token_rewards"]["token_ids"]
        assert b["token_rewards"]["rewards"] == pytest.approx(a["token_rewards"]["rewards"], abs=1e-5)
    assert len({round(r["reward"], 4) for r in dist}) > len(ROWS) // 2  # real, varied scores


def test_score_rows_ray_api_with_model_factory(local_ray, tiny_rm):
    from endorm.commands.score import Config
    from endorm.testing import tiny_model_and_tokenizer

    cfg = Config(batch_size=3)
    out = score_rows_ray(ROWS, cfg, 2, batch_size=5, model_factory=functools.partial(tiny_model_and_tokenizer, seed=0))
    assert [r["id"] for r in out] == [r["id"] for r in ROWS]
    from endorm.io import row_to_example

    ref = tiny_rm.score_examples([row_to_example(r) for r in ROWS])
    assert [r["reward"] for r in out] == pytest.approx(ref, abs=1e-5)


def test_collect_restores_order_and_detects_loss():
    class W:
        def __init__(self):
            self.rows, self.calls = [], 0

        def write(self, rows):
            self.rows += rows
            self.calls += 1

    results = [{"i": i, "out": json.dumps({"k": i})} for i in (2, 0, 1, 4, 3)]
    w = W()
    assert _collect(iter(results), 5, w) == 5
    assert [r["k"] for r in w.rows] == [0, 1, 2, 3, 4] and w.calls == 3  # [0], [1, 2], [3, 4]
    with pytest.raises(RuntimeError, match="rows lost"):
        _collect(iter(results[:3] + results[4:]), 5, None)
