"""endorm.eval.data: loaders on the shared files (counts), seeded subsets, generic pairs / best-of-N,
and bad rows named in the error."""

import json

import pytest

from endorm.chat import RowError
from endorm.eval.data import (
    dsp_comparisons,
    load_benchmark,
    load_best_of_n,
    load_dsp,
    load_pairs,
    load_rmbench,
    rmbench_domain,
)
from endorm.eval.prompts import DSP_STYLES


def test_rmbench_shared_counts(shared_data):
    items = load_rmbench(shared_data / "rm-bench")
    counts = {d: sum(it.domain == d for it in items) for d in ("chat", "code", "safety")}
    assert counts == {"chat": 129, "code": 228, "safety": 441}  # safety = 284 refuse + 157 response
    assert len({it.id for it in items}) == len(items)
    it = items[0]
    assert len(it.responses) == 6 and it.comparisons == [(i, 3 + j) for i in range(3) for j in range(3)]
    # a single file works too, and the domain comes from the rows
    code = load_rmbench(shared_data / "rm-bench" / "code_filtered.json")
    assert len(code) == 228 and {i.domain for i in code} == {"code"}


def test_rmbench_subset_is_seeded_and_nested(shared_data):
    a = load_rmbench(shared_data / "rm-bench", ["chat", "safety"], limit=10, seed=3)
    b = load_rmbench(shared_data / "rm-bench", ["chat", "safety"], limit=10, seed=3)
    c = load_rmbench(shared_data / "rm-bench", ["chat", "safety"], limit=20, seed=3)
    d = load_rmbench(shared_data / "rm-bench", ["chat", "safety"], limit=10, seed=4)
    assert [i.id for i in a] == [i.id for i in b] and len(a) == 20
    assert {i.id for i in a} < {i.id for i in c}
    # scored in this order, a stopped run has done a prefix = the subset of a smaller limit, both domains alike
    assert [i.id for i in c][: len(a)] == [i.id for i in a]
    assert [i.domain for i in a[:4]] == ["chat", "safety", "chat", "safety"]
    assert {i.id for i in a} != {i.id for i in d}
    with pytest.raises(ValueError, match="math"):
        load_rmbench(shared_data / "rm-bench", ["math"])


def test_rmbench_domain_mapping_includes_math():
    assert rmbench_domain({"subset": "math_prm"}) == "math"
    assert rmbench_domain({"domain": "safety-refuse"}) == "safety"
    assert rmbench_domain({"subset": "xstest-should-respond"}) == "safety"
    assert rmbench_domain({"subset": "?"}, fallback="chat") == "chat"


def test_rmbench_combined_file_with_math(tmp_path):
    rows = [{"id": k, "domain": d, "prompt": f"q{k}", "chosen": ["a", "b", "c"], "rejected": ["d", "e", "f"]}
            for k, d in enumerate(["chat", "math", "math", "code", "safety-response"])]
    p = tmp_path / "total_dataset.json"
    p.write_text(json.dumps(rows))
    items = load_rmbench(p)
    assert [i.domain for i in items] == ["chat", "math", "math", "code", "safety"]


def test_dsp_shared_counts(shared_data):
    items = load_dsp(shared_data / "dsp" / "domain_specific_preference.test.json")
    assert len(items) == 660  # 661 queries; row 60 has an empty 'normal' response and is left out
    assert all(len(i.responses) == len(DSP_STYLES) for i in items)
    assert dsp_comparisons("business") == [(1, 0), (1, 2), (1, 3), (1, 4)]
    assert len(load_dsp(shared_data / "dsp" / "domain_specific_preference.test.json", limit=7)) == 7


def _write(tmp_path, rows, name="d.jsonl"):
    p = tmp_path / name
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


def test_pairs_formats(tmp_path):
    p = _write(tmp_path, [
        {"prompt": "Hi", "chosen": "Hello!", "rejected": "Go away.", "subset": "chat"},
        {"messages": [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "2+2?"}],
         "chosen": "4", "rejected": "5", "subset": "math"},
        {"prompt": "Say hi", "system": "Pirate.", "chosen": "Ahoy", "rejected": "Hi"},
    ])
    items = load_pairs(p)
    assert [i.domain for i in items] == ["chat", "math", "all"]
    assert items[1].system == "Be terse." and items[1].context == [{"role": "user", "content": "2+2?"}]
    assert items[2].system == "Pirate."
    ex = items[0].example(0)
    assert ex.messages[-1] == {"role": "assistant", "content": "Hello!"}


def test_best_of_n_formats(tmp_path):
    p = _write(tmp_path, [
        {"prompt": "2+2?", "candidates": ["3", "4", "5"], "best": 1},
        {"prompt": "Hi", "chosen": ["Hello"], "rejected": ["x", "y", "z"], "subset": "focus"},
    ])
    items = load_best_of_n(p)
    assert items[0].best == 1 and items[0].comparisons == [(1, 0), (1, 2)]
    assert items[1].best == 0 and len(items[1].responses) == 4 and items[1].domain == "focus"


@pytest.mark.parametrize("row, field, loader", [
    ({"prompt": "q", "rejected": "r"}, "chosen", load_pairs),
    ({"prompt": "q", "chosen": 3, "rejected": "r"}, "chosen", load_pairs),
    ({"prompt": ["q"], "chosen": "c", "rejected": "r"}, "prompt", load_pairs),
    ({"prompt": "q", "chosen": "", "rejected": "r"}, "chosen", load_pairs),
    ({"messages": [], "chosen": "c", "rejected": "r"}, "messages", load_pairs),
    ({"prompt": "q", "chosen": "c", "rejected": "r", "system": 5}, "system", load_pairs),
    ({"prompt": "q", "candidates": [], "best": 0}, "candidates", load_best_of_n),
    ({"prompt": "q", "candidates": ["a", 2], "best": 0}, "candidates", load_best_of_n),
    ({"prompt": "q", "candidates": ["a", "b"], "best": 2}, "best", load_best_of_n),
    ({"prompt": "q", "candidates": ["a", "b"], "best": "0"}, "best", load_best_of_n),
    ({"prompt": "q", "chosen": ["a", "b"], "rejected": ["c"]}, "chosen", load_best_of_n),
])
def test_bad_rows_name_row_and_field(tmp_path, row, field, loader):
    good = {"prompt": "q", "chosen": "c", "rejected": "r"} if loader is load_pairs else \
        {"prompt": "q", "candidates": ["a", "b"], "best": 0}
    p = _write(tmp_path, [good, row])
    with pytest.raises(RowError, match=rf"d.jsonl line 2, field '{field}'"):
        loader(p)


def test_bad_rmbench_rows(tmp_path):
    rows = [{"id": 1, "subset": "alpacaeval", "prompt": "q", "chosen": ["a", "b", "c"], "rejected": ["d", "e"]}]
    p = tmp_path / "chat_filtered.json"
    p.write_text(json.dumps(rows))
    with pytest.raises(RowError, match=r"chat_filtered.json row 0, field 'rejected': must have 3 entries"):
        load_rmbench(p)
    p.write_text(json.dumps([{"id": 1, "prompt": "q", "chosen": "abc", "rejected": ["d", "e", "f"]}]))
    with pytest.raises(RowError, match=r"row 0, field 'chosen': must be a list"):
        load_rmbench(p)
    p.write_text("{not json")
    with pytest.raises(RowError, match="malformed JSON"):
        load_rmbench(p)


def test_missing_file_and_unknown_benchmark(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_pairs(tmp_path / "nope.jsonl")
    with pytest.raises(ValueError, match="--data is required"):
        load_benchmark("pairs")
    with pytest.raises(ValueError, match="unknown benchmark"):
        load_benchmark("rewardbench", tmp_path)
