"""Crash and resume for real: `endorm score` (also with --tokens), `endorm eval` and `endorm train` run as
subprocesses on the tiny model, killed with SIGKILL at a seeded random point after their first finished row,
then resumed with --resume.

The runs and checks live in benchmarks/crash_resume.py (which repeats them at larger sizes): no row lost,
none duplicated, rows (eval: records) in the uninterrupted run's order and scores equal to it (1e-5); with
token stats, every row's arrays resolve in the sidecar (file id, range, checksum) and re-aggregate to its score;
for train, curve steps 1..max_steps each once, the newest checkpoint's step and logged rewards agree with the
curve, and the rows up to the checkpoint the resume started from equal the uninterrupted run's.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

_path = Path(__file__).resolve().parents[1] / "benchmarks" / "crash_resume.py"
_spec = importlib.util.spec_from_file_location("crash_resume", _path)
cr = importlib.util.module_from_spec(_spec)
sys.modules["crash_resume"] = cr  # dataclasses look their module up there
_spec.loader.exec_module(cr)

TOL = 1e-5


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("crash")


def check(o) -> None:
    assert o.kills >= 1, f"the kill never landed mid-run: {o}"
    assert (o.lost, o.duplicated, o.out_of_order, o.problems) == (0, 0, False, []), o


@pytest.mark.parametrize("seed,kills", [(0, 1), (1, 1), (2, 2)])
def test_score_killed_and_resumed(work, tiny_model_dir, seed, kills):
    rows = cr.score_rows(1280)  # 20 blocks of 64: killed after 1 to 80% of them, so mid-run
    o = cr.score_case(work / "score", str(tiny_model_dir), rows, seed, kills=kills, max_delay=0.15)
    check(o)
    assert o.max_abs_diff <= TOL, o


@pytest.mark.parametrize("seed,kills", [(3, 1), (4, 2)])
def test_score_tokens_killed_and_resumed(work, tiny_model_dir, seed, kills):
    rows = cr.score_rows(640)  # 10 blocks of 64 rows, each block's arrays written before its rows
    o = cr.score_case(work / "score-tokens", str(tiny_model_dir), rows, seed, kills=kills, max_delay=0.15, tokens=True)
    check(o)
    assert o.command == "score-tokens" and o.max_abs_diff <= TOL and o.stats_max_abs_diff <= TOL, o


@pytest.mark.parametrize("seed", [0, 1])
def test_eval_killed_and_resumed(work, tiny_model_dir, seed):
    o = cr.eval_case(work / "eval", str(tiny_model_dir), cr.pair_rows(320), seed, kills=1, max_delay=0.15)
    check(o)  # out_of_order: the records' keys differ in order from the uninterrupted run's
    assert o.expected == 640 and o.max_abs_diff <= TOL and o.stats_max_abs_diff <= TOL, o


@pytest.mark.parametrize("seed", [0, 1])
def test_train_killed_and_resumed(work, tiny_model_dir, seed):
    pytest.importorskip("trl", reason="endorm[rl] extra (trl, datasets) not installed")
    o = cr.train_case(work / "train", str(tiny_model_dir), seed, max_steps=30, save_steps=3, kills=1, max_delay=0.2)
    check(o)  # includes: curve rows up to the resumed checkpoint equal the uninterrupted run's
    # and the rest too: a resumed run replays the uninterrupted one (weights, optimizer, RNG, prompt order)
    assert o.max_abs_diff <= TOL, o


def test_resume_skips_a_checkpoint_cut_off_mid_save(tmp_path):
    from endorm.rl.trainer import last_checkpoint

    assert last_checkpoint(tmp_path) is None
    assert last_checkpoint(tmp_path / "not-yet-created") is None  # a run's first start (rl_qwen.sh's newest)
    for step, complete in ((3, True), (6, True), (9, False)):  # killed while writing checkpoint-9
        d = tmp_path / f"checkpoint-{step}"
        d.mkdir()
        (d / "model.safetensors").write_bytes(b"x")
        if complete:
            (d / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    (tmp_path / "checkpoint-tmp").mkdir()
    assert last_checkpoint(tmp_path) == tmp_path / "checkpoint-6"


def test_rl_qwen_script_finds_checkpoints_with_the_same_rule(tmp_path):
    """benchmarks/rl_qwen.sh picks the checkpoint to resume or save through last_checkpoint (its ``newest``)."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "rl_qwen.sh"
    line = next(ln for ln in script.read_text().splitlines() if ln.startswith("newest()"))
    for step, complete in ((2, True), (4, False)):
        d = tmp_path / f"checkpoint-{step}"
        d.mkdir()
        if complete:
            (d / "trainer_state.json").write_text("{}")
    env = {"PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin"}
    got = [subprocess.run(["bash", "-c", f'set -euo pipefail; {line}\nnewest "$1"', "_", str(p)], env=env,
                          capture_output=True, text=True, check=True).stdout.strip()
           for p in (tmp_path, tmp_path / "missing")]
    assert got == [str(tmp_path / "checkpoint-2"), ""]
