"""Crash and resume, for real: `endorm score`, `endorm eval` and `endorm train` killed with SIGKILL mid-run.

Each run is started as a subprocess (its own process group), killed with SIGKILL at a seeded random point
(after a random number of finished rows, at least one, plus a random delay), and then resumed with ``--resume``
until it finishes (``--kills`` kills per run, each followed by a resume that may itself be killed). The final
output is compared with an uninterrupted run of the same command:

- score: rows by ``id``: lost, duplicated, out of order, max |reward diff|; with ``--tokens`` (command
  ``score-tokens``) also the sidecar: every row's arrays, read back with their file id, range and checksum
  checked, must re-aggregate to the row's reward (max |diff| in ``stats_max_abs_diff``);
- eval: records by ``key``: lost, duplicated, in the uninterrupted run's order, max |score diff| (and pair
  probabilities); the ``endorm`` records' arrays re-aggregate to their scores;
- train: the curve's steps must be 1..max_steps, each once; the newest checkpoint's step must be the last
  curve step, and its ``log_history`` rewards must equal the curve's rows (the curve and the checkpoint tell
  the same story); the curve rows up to the checkpoint the first resume started from must equal the
  uninterrupted run's. The reward curve's max |diff| against the uninterrupted run over all steps is
  reported (a resumed run replays the uninterrupted one: weights, optimizer, RNG and prompt order restored;
  tests/test_train_grpo.py checks the state it resumes from exactly).

tests/test_crash_resume.py runs this at small sizes on the tiny random model. At larger sizes:

    OMP_NUM_THREADS=1 nice -n 19 python benchmarks/crash_resume.py --rows 5000 --seeds 5 --model /path/to/model

``--model`` is a local model directory (default: the tiny random model, saved to a temporary folder).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# -- running and killing -------------------------------------------------------------------------------------------

def subprocess_env() -> dict[str, str]:
    """The environment of the runs: the same endorm as this process imports, one thread each."""
    import endorm

    env = dict(os.environ)
    src = str(Path(endorm.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([src, *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])])
    env.setdefault("OMP_NUM_THREADS", "1")
    env["TOKENIZERS_PARALLELISM"] = "false"
    return env


def endorm_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "endorm", *args]


def run_to_end(cmd: list[str], log: Path, timeout: float = 600) -> None:
    with open(log, "ab") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=subprocess_env(), timeout=timeout).returncode
    if rc != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {rc}; log: {log}\n{log.read_text()[-3000:]}")


def run_and_kill(cmd: list[str], ready: Callable[[], bool], delay: float, log: Path, timeout: float = 600) -> bool:
    """Start ``cmd``; once ``ready()``, wait ``delay`` s and SIGKILL its process group.

    Returns True if the kill landed (the run had not finished yet), False if it finished first.
    """
    with open(log, "ab") as f:
        p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=subprocess_env(), start_new_session=True)
    t0 = time.monotonic()
    try:
        while p.poll() is None:
            if time.monotonic() - t0 > timeout:
                raise TimeoutError(f"{' '.join(cmd)} ran over {timeout} s")
            if ready():
                time.sleep(delay)
                if p.poll() is not None:
                    break
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
                return True
            time.sleep(0.01)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {p.returncode} before the kill; log: {log}")
    return False


def complete_lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


@dataclass
class Outcome:
    command: str
    seed: int
    kills: int = 0  # kills that landed mid-run
    done_at_kills: list[int] = field(default_factory=list)  # finished rows/records/steps at each kill
    expected: int = 0
    lost: int = 0
    duplicated: int = 0
    out_of_order: bool = False
    max_abs_diff: float = 0.0
    stats_max_abs_diff: float | None = None  # arrays in the sidecar, re-aggregated, vs the written scores
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not (self.lost or self.duplicated or self.out_of_order or self.problems)


def _kill_resume(cmd: list[str], resume_flag: list[str], progress: Callable[[], int], total: int,
                 rng: random.Random, kills: int, max_delay: float, log: Path, out: Outcome,
                 on_kill: Callable[[], None] | None = None) -> None:
    """Run ``cmd``, killed up to ``kills`` times (each resume can be killed again), then resume to the end.

    Each kill comes a random 0..max_delay s after a random number of new finished rows (1 to 80% of the
    rows still to do) has appeared: anywhere in the run, never before its first row.
    """
    first = True
    for _ in range(kills):
        start = progress()
        ready_at = start + rng.randint(1, max(1, int(0.8 * (total - start))))
        c = cmd if first else cmd + resume_flag
        killed = run_and_kill(c, lambda r=ready_at: progress() >= r, rng.uniform(0, max_delay), log)
        first = False
        if not killed:
            return
        out.kills += 1
        out.done_at_kills.append(progress())
        if on_kill is not None:
            on_kill()
    run_to_end(cmd + resume_flag, log)


# -- endorm score --------------------------------------------------------------------------------------------------

def score_rows(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """n distinct rows of mixed lengths; a third share a prompt with the row before (the cached path)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        q = rows[-1]["prompt"] if i % 3 == 2 else f"Question {i}: what is {i} plus {rng.randint(1, 99)}?"
        rows.append({"id": i, "prompt": q, "response": f"It is {rng.randint(1, 200)}. " + "Let me explain. " * rng.randint(0, 12),
                     **({"system": "Be brief."} if i % 5 == 0 else {})})
    return rows


def score_case(work: Path, model: str, rows: list[dict[str, Any]], seed: int, kills: int = 1,
               max_delay: float = 0.5, reference: Path | None = None, tokens: bool = False) -> Outcome:
    from endorm.commands.score import stats_path

    t0 = time.perf_counter()
    tag = "-tokens" if tokens else ""
    out = Outcome("score" + tag, seed, expected=len(rows))
    work.mkdir(parents=True, exist_ok=True)
    inp = work / "in.jsonl"
    if not inp.exists():
        inp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    base = ["score", "--model", model, "--input", str(inp), "--show", "0", *(["--tokens"] if tokens else [])]
    ref = reference or work / f"reference{tag}.jsonl"
    if not ref.exists():
        run_to_end(endorm_cmd(*base, "--output", str(ref)), work / f"reference{tag}.log")
    target = work / f"out{tag}-{seed}.jsonl"
    target.unlink(missing_ok=True)
    stats_path(target).unlink(missing_ok=True)
    _kill_resume(endorm_cmd(*base, "--output", str(target)), ["--resume"], lambda: complete_lines(target),
                 len(rows), random.Random(seed), kills, max_delay, work / f"run{tag}-{seed}.log", out)
    got, want = read_jsonl(target), read_jsonl(ref)
    ids = [r["id"] for r in got]
    out.lost = len({r["id"] for r in want} - set(ids))
    out.duplicated = len(ids) - len(set(ids))
    out.out_of_order = ids != sorted(set(ids))
    by_id = {r["id"]: r["reward"] for r in got}
    out.max_abs_diff = max((abs(by_id[r["id"]] - r["reward"]) for r in want if r["id"] in by_id), default=0.0)
    for g in got:
        src = rows[g["id"]]
        if any(g.get(k) != v for k, v in src.items()):
            out.problems.append(f"row {g['id']}: input fields changed")
            break
    if tokens:
        _check_score_sidecar(stats_path(target), got, out)
    out.seconds = round(time.perf_counter() - t0, 1)
    return out


def _check_score_sidecar(path: Path, got: list[dict[str, Any]], out: Outcome) -> None:
    """Every row's arrays resolve in the sidecar (id, range, checksum) and re-aggregate to its reward."""
    from endorm import rewards as R
    from endorm.reward_model import RewardConfig
    from endorm.stats_file import StatsError, StatsReader

    c, reader, diffs = RewardConfig(), StatsReader(path), []
    for k, g in enumerate(got, start=1):
        try:
            lp, v = reader.get(g["token_stats"]["plain"], g.get("token_stats_id"), f"row {k}")
        except (StatsError, KeyError) as e:
            out.problems.append(f"sidecar: {e}")
            break
        diffs.append(abs(float(R.outcome(lp, v, c.aggregation, c.gamma, c.alpha)[1]) - g["reward"]))
    out.stats_max_abs_diff = max(diffs, default=0.0)


# -- endorm eval ---------------------------------------------------------------------------------------------------

def pair_rows(n: int, seed: int = 0) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [{"id": f"p{i}", "prompt": f"Question {i}: what is {i} plus {i}?", "chosen": f"It is {2 * i}.",
             "rejected": f"It is {2 * i + 1}. " + "Hmm. " * rng.randint(0, 6)} for i in range(n)]


def _floats(rec: dict[str, Any]) -> list[float]:
    xs = [x for x in rec.get("scores") or [] if x is not None]
    xs += [p[2] for p in rec.get("pair_probs") or []]
    return xs


def eval_case(work: Path, model: str, items: list[dict[str, Any]], seed: int, kills: int = 1,
              max_delay: float = 0.5, methods: str = "endorm,logprob-mean") -> Outcome:
    t0 = time.perf_counter()
    out = Outcome("eval", seed)
    work.mkdir(parents=True, exist_ok=True)
    data = work / "pairs.jsonl"
    if not data.exists():
        data.write_text("".join(json.dumps(r) + "\n" for r in items))
    base = ["eval", "--model", model, "--benchmark", "pairs", "--data", str(data), "--method", methods,
            "--items-per-batch", "2", "--plot", "false", "--progress", "false"]
    ref = work / "reference"
    if not (ref / "examples.jsonl").exists():
        run_to_end(endorm_cmd(*base, "--output-dir", str(ref)), work / "reference.log")
    target = work / f"out-{seed}"
    shutil.rmtree(target, ignore_errors=True)
    recs_path = target / "examples.jsonl"
    want = read_jsonl(ref / "examples.jsonl")
    out.expected = len(want)
    _kill_resume(endorm_cmd(*base, "--output-dir", str(target)), ["--resume"], lambda: complete_lines(recs_path),
                 len(want), random.Random(seed), kills, max_delay, work / f"run-{seed}.log", out)
    got = read_jsonl(recs_path)
    keys = [r["key"] for r in got]
    out.lost = len({r["key"] for r in want} - set(keys))
    out.duplicated = len(keys) - len(set(keys))
    out.out_of_order = keys != [r["key"] for r in want]
    by_key = {r["key"]: r for r in got}
    diffs = [abs(a - b) for r in want if r["key"] in by_key
             for a, b in zip(_floats(by_key[r["key"]]), _floats(r), strict=True)]
    out.max_abs_diff = max(diffs, default=0.0)
    res, ref_res = (json.loads((d / "results.json").read_text()) for d in (target, ref))
    for m, s in ref_res["methods"].items():
        if res["methods"][m]["n"] != s["n"]:
            out.problems.append(f"results.json: {m} n = {res['methods'][m]['n']}, expected {s['n']}")
    if "endorm" in methods.split(","):
        _check_eval_sidecar(target, got, out)
    out.seconds = round(time.perf_counter() - t0, 1)
    return out


def _check_eval_sidecar(run_dir: Path, got: list[dict[str, Any]], out: Outcome) -> None:
    """The endorm records' arrays resolve in token_stats.f32 and re-aggregate (the run's variant) to their scores."""
    from endorm.eval.variants import Variant, variant_records
    from endorm.reward_model import RewardConfig
    from endorm.stats_file import StatsError

    var = Variant(RewardConfig.aggregation, RewardConfig.gamma)
    try:
        again = {r["key"]: r["scores"] for r in variant_records(run_dir, [var])[0][var]}
    except StatsError as e:
        out.problems.append(f"sidecar: {e}")
        return
    recs = [r for r in got if r["method"] == "endorm"]
    if set(again) != {r["key"] for r in recs}:
        out.problems.append("sidecar: re-aggregated records differ from the endorm records")
    out.stats_max_abs_diff = max((abs(a - b) for r in recs if r["key"] in again
                                  for a, b in zip(again[r["key"]], r["scores"], strict=True)), default=0.0)


# -- endorm train --------------------------------------------------------------------------------------------------

GSM_ROWS = [{"question": f"What is {i} plus {i + 1}?", "answer": f"{i}+{i + 1}={2 * i + 1}\n#### {2 * i + 1}"}
            for i in range(16)]


def curve_rows(path: Path) -> list[dict[str, str]]:
    # one read, then parse: csv on an open file that the trainer appends to can see the header missing and a
    # row present (a TypeError inside csv.DictReader)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    return list(csv.DictReader(io.StringIO(text, newline="")))


def train_case(work: Path, model: str, seed: int, max_steps: int = 30, save_steps: int = 3, kills: int = 1,
               max_delay: float = 1.0) -> Outcome:
    from endorm.rl.trainer import last_checkpoint

    t0 = time.perf_counter()
    out = Outcome("train", seed, expected=max_steps)
    work.mkdir(parents=True, exist_ok=True)
    data = work / "gsm.jsonl"
    if not data.exists():
        data.write_text("".join(json.dumps(r) + "\n" for r in GSM_ROWS))
    base = ["train", "--model", model, "--dataset", str(data), "--max-steps", str(max_steps),
            "--save-steps", str(save_steps), "--num-generations", "2", "--per-device-train-batch-size", "4",
            "--max-completion-length", "8", "--prompt-template", "plain", "--learning-rate", "1e-4",
            "--device", "cpu", "--seed", "0"]
    ref = work / "reference"
    if not (ref / "curves.csv").exists():
        run_to_end(endorm_cmd(*base, "--output-dir", str(ref)), work / "reference.log")
    target = work / f"out-{seed}"
    shutil.rmtree(target, ignore_errors=True)
    resumed_from: list[int] = []  # the checkpoint step each resume starts from

    def note_checkpoint() -> None:
        ckpt = last_checkpoint(target)
        resumed_from.append(int(ckpt.name.split("-")[-1]) if ckpt else 0)

    _kill_resume(endorm_cmd(*base, "--output-dir", str(target)), ["--resume", "true"],
                 lambda: len(curve_rows(target / "curves.csv")), max_steps, random.Random(seed), kills, max_delay,
                 work / f"run-{seed}.log", out, on_kill=note_checkpoint)
    rows = curve_rows(target / "curves.csv")
    steps = [int(r["step"]) for r in rows]
    out.lost = len(set(range(1, max_steps + 1)) - set(steps))
    out.duplicated = len(steps) - len(set(steps))
    out.out_of_order = steps != sorted(set(steps))
    ckpt = last_checkpoint(target)
    if ckpt is None:
        out.problems.append("no complete checkpoint")
    else:
        state = json.loads((ckpt / "trainer_state.json").read_text())
        if state["global_step"] != max_steps or (steps and steps[-1] != state["global_step"]):
            out.problems.append(f"checkpoint step {state['global_step']}, curve ends at {steps[-1:]}")
        logged = {h["step"]: h["reward"] for h in state["log_history"] if "reward" in h}
        curve = {int(r["step"]): float(r["reward"]) for r in rows}
        if sorted(logged) != sorted(curve):
            out.problems.append(f"checkpoint log_history steps {sorted(logged)} != curve steps {sorted(curve)}")
        bad = [s for s in curve if s in logged and abs(curve[s] - logged[s]) > 1e-5 * max(1.0, abs(logged[s]))]
        if bad:
            out.problems.append(f"curve rewards differ from the checkpoint's log at steps {bad}")
    if not (target / "final" / "config.json").is_file():
        out.problems.append("no final policy")
    ref_rows = curve_rows(ref / "curves.csv")
    if resumed_from:
        k = resumed_from[0]
        strip = lambda rs: [{c: v for c, v in r.items() if c not in ("elapsed_s", "peak_rss_mb")} for r in rs if int(r["step"]) <= k]  # noqa: E731
        if strip(rows) != strip(ref_rows):
            out.problems.append(f"curve rows 1..{k} (before the first resume's checkpoint) differ from the "
                                "uninterrupted run's")
    ref_curve = {int(r["step"]): float(r["reward"]) for r in ref_rows}
    out.max_abs_diff = max((abs(float(r["reward"]) - ref_curve[int(r["step"])]) for r in rows
                            if int(r["step"]) in ref_curve), default=0.0)
    out.seconds = round(time.perf_counter() - t0, 1)
    return out


# -- the command line ----------------------------------------------------------------------------------------------

def tiny_model(dest: Path) -> str:
    from endorm.testing import tiny_model_and_tokenizer

    if not (dest / "config.json").exists():
        model, tok = tiny_model_and_tokenizer(seed=0)
        model.save_pretrained(dest)
        tok.save_pretrained(dest)
    return str(dest)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=2000, help="score: input rows; eval: items = rows / 4")
    ap.add_argument("--seeds", type=int, default=3, help="kill points (one killed run per seed and command)")
    ap.add_argument("--kills", type=int, default=2, help="kills per run (each resume may be killed again)")
    ap.add_argument("--model", default=None, help="local model directory (default: the tiny random model)")
    ap.add_argument("--commands", default="score,score-tokens,eval,train")
    ap.add_argument("--train-steps", type=int, default=40)
    ap.add_argument("--max-delay", type=float, default=0.2,
                    help="kill within this many s of the random row count that triggers it")
    ap.add_argument("--work", default=None, help="working folder (default: a temporary one, removed after)")
    ap.add_argument("--out", default=None, help="write the outcomes as JSON here")
    a = ap.parse_args(argv)

    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="endorm-crash-"))
    model = a.model or tiny_model(work / "tiny-model")
    commands = a.commands.split(",")
    outcomes: list[Outcome] = []
    t0 = time.perf_counter()
    try:
        for seed in range(a.seeds):
            if "score" in commands:
                outcomes.append(score_case(work / "score", model, score_rows(a.rows), seed, a.kills, a.max_delay))
            if "score-tokens" in commands:
                outcomes.append(score_case(work / "score", model, score_rows(a.rows), seed, a.kills, a.max_delay,
                                           tokens=True))
            if "eval" in commands:
                outcomes.append(eval_case(work / "eval", model, pair_rows(max(2, a.rows // 4)), seed, a.kills, a.max_delay))
            if "train" in commands:
                outcomes.append(train_case(work / "train", model, seed, a.train_steps, 3, a.kills, a.max_delay))
            print(json.dumps(asdict(outcomes[-1])), file=sys.stderr)
    finally:
        if not a.work:
            shutil.rmtree(work, ignore_errors=True)
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, python {platform.python_version()}; "
          f"model: {a.model or 'tiny random (2 layers)'}; rows {a.rows}, seeds {a.seeds}, kills/run {a.kills}; "
          f"total {time.perf_counter() - t0:.0f} s")
    print(f"{'command':<12} {'runs':>4} {'kills':>5} {'expected':>8} {'lost':>4} {'dup':>4} {'order':>5} "
          f"{'max|diff|':>9} {'sidecar|diff|':>13} {'problems':>8} {'s':>6}")
    for cmd in commands:
        rs = [o for o in outcomes if o.command == cmd]
        if not rs:
            continue
        side = [o.stats_max_abs_diff for o in rs if o.stats_max_abs_diff is not None]
        print(f"{cmd:<12} {len(rs):>4} {sum(o.kills for o in rs):>5} {rs[0].expected:>8} {sum(o.lost for o in rs):>4} "
              f"{sum(o.duplicated for o in rs):>4} {'bad' if any(o.out_of_order for o in rs) else 'ok':>5} "
              f"{max(o.max_abs_diff for o in rs):>9.2e} {f'{max(side):.2e}' if side else '-':>13} "
              f"{sum(len(o.problems) for o in rs):>8} {sum(o.seconds for o in rs):>6.0f}")
    for o in outcomes:
        for p in o.problems:
            print(f"{o.command} seed {o.seed}: {p}")
    if a.out:
        Path(a.out).write_text(json.dumps([asdict(o) for o in outcomes], indent=2))
    return 0 if all(o.ok for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
