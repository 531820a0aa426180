"""RL on the endogenous reward, GSM8K, CPU: combine the runs' curves and compare before/after accuracy.

The measurement itself is three commands (docs/RESULTS.md, "RL on the endogenous reward"):

    endorm math-eval --benchmarks gsm8k --limit 100 --seed 0 --prompt_template short --max_new_tokens 48 \
        --models default --output_dir runs/rl_eval_before
    endorm train --config configs/train_gsm8k_endogenous.yaml      # and train_gsm8k_correctness.yaml
    endorm math-eval ... --models runs/rl_endogenous/final --output_dir runs/rl_eval_endogenous

This script then reads their outputs:

    python benchmarks/rl_gsm8k.py plot --runs endogenous=runs/rl_endogenous correctness=runs/rl_correctness \
        --out docs/figures/rl_curves.png
    python benchmarks/rl_gsm8k.py compare --before runs/rl_eval_before/default/gsm8k.jsonl \
        --after endogenous=runs/rl_eval_endogenous/final/gsm8k.jsonl ...

``compare`` prints accuracy with 95% Wilson intervals, the paired change with an exact McNemar test on
the problems whose correctness flipped, and completion statistics that expose reward hacking (mean
length, share of empty/repeated completions, distinct completions). ``compare``, ``curves`` and ``probe``
take ``--json PATH``: the numbers, with the command that wrote them, for ``records/rl/`` (records/README.md).
``curves --bins 4`` adds a table of each quarter's means (RESULTS.md's run tables) and ``curves --stretches`` one
row per resumed ``endorm train`` call (when, which sampler, s/step, peak memory, rewards). ``recommend`` applies
the recommended-recipe rule of docs/RESULTS.md to a ``compare --json`` file and the runs' curves.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path


def write_json(path: str, res: dict) -> None:
    """The numbers behind a table, with the command line that wrote them (the records/ convention)."""
    out = {"command": " ".join(["python", "benchmarks/rl_gsm8k.py", *sys.argv[1:]]), **res}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(out, indent=2) + "\n")


def _records(path: str) -> list[dict]:
    return [json.loads(x) for x in Path(path).read_text().splitlines() if x.strip()]


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts b (lost) and c (gained)."""
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    p = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * p)


def repeated_ngram_share(text: str, n: int = 3) -> float:
    """Share of word n-grams that repeat an earlier one (0 = no repetition)."""
    words = re.findall(r"\S+", text)
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    if not grams:
        return 0.0
    return 1 - len(set(grams)) / len(grams)


def completion_stats(recs: list[dict]) -> dict:
    comps = [r["completions"][0] for r in recs]
    return {
        "mean_chars": sum(len(c) for c in comps) / len(comps),
        "empty_share": sum(not c.strip() for c in comps) / len(comps),
        "mean_repeated_3gram_share": sum(repeated_ngram_share(c) for c in comps) / len(comps),
        "distinct_completions": len(set(comps)),
        "with_answer_phrase": sum("answer is" in c.lower() for c in comps) / len(comps),
        # records of the boxed template: a final answer was extracted / the completion was cut at the cap
        "answered_share": sum(r.get("predictions", [None])[0] is not None for r in recs) / len(recs),
        **({"mean_tokens": sum(r["n_tokens"][0] for r in recs) / len(recs),
            "cut_share": sum(r["end_token"][0] is None for r in recs) / len(recs)}
           if all("n_tokens" in r and "end_token" in r for r in recs) else {}),
    }


def compare(before: str, after: list[str]) -> dict:
    from endorm.mathx.generate import wilson_interval

    base = {r["id"]: r for r in _records(before)}
    out = {}
    rows = [("before", before)] + [tuple(a.rsplit("=", 1)) for a in after]
    for name, path in rows:
        recs = _records(path)
        ok = sum(bool(r["correct"][0]) for r in recs)
        lo, hi = wilson_interval(ok, len(recs))
        entry = {"n": len(recs), "correct": ok, "acc": ok / len(recs), "ci95": [lo, hi], **completion_stats(recs)}
        if name != "before":
            lost = sum(1 for r in recs if base[r["id"]]["correct"][0] and not r["correct"][0])
            gained = sum(1 for r in recs if not base[r["id"]]["correct"][0] and r["correct"][0])
            entry.update(lost=lost, gained=gained, mcnemar_p=mcnemar_exact(lost, gained))
        out[name] = entry
    return out


def print_compare(res: dict, bench: str = "GSM8K") -> None:
    print(f"| policy | {bench} acc (n) | 95% CI | gained / lost vs before (McNemar p) | mean chars | repeated 3-grams "
          "| distinct | 'answer is' |")
    print("|---|---|---|---|---|---|---|---|")
    for name, e in res.items():
        flip = f"+{e['gained']} / -{e['lost']} (p={e['mcnemar_p']:.2f})" if "lost" in e else "-"
        print(f"| {name} | {100 * e['acc']:.1f}% ({e['correct']}/{e['n']}) | {100 * e['ci95'][0]:.1f}-"
              f"{100 * e['ci95'][1]:.1f}% | {flip} | {e['mean_chars']:.0f} | {e['mean_repeated_3gram_share']:.2f} "
              f"| {e['distinct_completions']} | {100 * e['with_answer_phrase']:.0f}% |")


def _nanmean(xs: list[float]) -> float:
    xs = [x for x in xs if not math.isnan(x)]
    return sum(xs) / len(xs) if xs else float("nan")


def _cost(cols: dict[str, list[float]], lo: int, hi: int) -> dict:
    """s/step and peak RSS (GB, as the docs write it) of rows lo..hi-1 of curves.csv. ``elapsed_s`` counts
    training time and carries over a resume, so a span that starts a resumed call includes its model load."""
    start = cols["elapsed_s"][lo - 1] if lo else 0.0
    rss = max(cols["peak_rss_mb"][lo:hi]) / 1000 if "peak_rss_mb" in cols else float("nan")
    return {"s_per_step": (cols["elapsed_s"][hi - 1] - start) / (hi - lo), "peak_rss_gb": rss}


def curve_summary(run_dir: str, window: int = 10) -> dict:
    from endorm.rl.logging import read_curves

    cols = read_curves(Path(run_dir) / "curves.csv")
    out = {"steps": int(cols["step"][-1]), "elapsed_s": cols["elapsed_s"][-1]}
    for k in ("reward", "kl", "completion_length", "entropy", "clipped_ratio"):
        if k in cols:
            out[f"{k}_first{window}"] = _nanmean(cols[k][:window])
            out[f"{k}_last{window}"] = _nanmean(cols[k][-window:])
    return out


# the columns of the per-stretch tables in docs/RESULTS.md (curves.csv name -> header)
BIN_COLUMNS = {"reward": "reward", "kl": "KL (nats/token)", "completion_length": "length (tokens)",
               "entropy": "entropy", "reward_distinct_answers": "distinct answers in a group"}


def _bin_edges(n: int, bins: int) -> list[int]:
    """Row boundaries of ``bins`` equal runs of ``n`` steps (the quarters of the run tables and of the rule)."""
    return [round(i * n / bins) for i in range(bins + 1)]


def curve_bins(run_dir: str, bins: int) -> list[dict]:
    """Means of each curve over ``bins`` equal runs of steps (run a's quarter table), with s/step and peak RSS
    (``_cost``)."""
    from endorm.rl.logging import read_curves

    cols = read_curves(Path(run_dir) / "curves.csv")
    n = len(cols["step"])
    if n < bins:
        raise ValueError(f"{run_dir}: {n} steps in curves.csv, fewer than --bins {bins}")
    edges = _bin_edges(n, bins)
    rows = []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        row: dict = {"steps": f"{int(cols['step'][lo])}-{int(cols['step'][hi - 1])}"}
        row.update({k: _nanmean(cols[k][lo:hi]) for k in BIN_COLUMNS if k in cols})
        rows.append(row | _cost(cols, lo, hi))
    return rows


def curve_stretches(run_dir: str) -> list[dict]:
    """One row per ``endorm train`` call of a resumed run: its start, steps, rollout sampler, s/step, peak RSS and
    mean reward, from ``invocations.jsonl`` (where each call resumed) and ``curves.csv``.

    A call's steps run from the checkpoint it resumed from to the one the next call resumed from (the steps a
    stopped call logged after its last checkpoint were dropped by that resume); a call that took no step is left
    out.
    """
    from endorm.rl.logging import read_curves

    run = Path(run_dir)
    cols = read_curves(run / "curves.csv")
    if not (run / "invocations.jsonl").is_file():
        raise FileNotFoundError(f"{run / 'invocations.jsonl'}: no record of the train calls (written by endorm "
                                "train since 2026-12-05); use --bins")
    calls = [json.loads(line) for line in (run / "invocations.jsonl").read_text().splitlines() if line.strip()]

    def first_step(call: dict) -> int:
        ck = call.get("resumed_from")
        if not ck:
            return 1
        if not (m := re.search(r"checkpoint-(\d+)", ck)):
            raise ValueError(f"{run / 'invocations.jsonl'}: the call started {call.get('started')} resumed from "
                             f"{ck!r}, not a checkpoint-N folder")
        return int(m.group(1)) + 1

    steps = [int(x) for x in cols["step"]]
    rows = []
    for k, call in enumerate(calls):
        lo = first_step(call)
        hi = first_step(calls[k + 1]) - 1 if k + 1 < len(calls) else steps[-1]
        idx = [i for i, st in enumerate(steps) if lo <= st <= hi]  # contiguous rows of curves.csv
        if not idx:
            continue
        rewards = cols["reward"][idx[0] : idx[-1] + 1]
        rows.append({"started": call.get("started", "?"), "steps": f"{steps[idx[0]]}-{steps[idx[-1]]}",
                     "sampler": call.get("rollout_sampler_used", "?"), "cpu": call.get("cpu", "?"),
                     "cpu_bf16": call.get("cpu_bf16"),
                     **_cost(cols, idx[0], idx[-1] + 1), "reward_mean": _nanmean(rewards), "rewards": rewards})
    return rows


def print_stretches(label: str, rows: list[dict]) -> None:
    print(f"\n{label}: one row per train call\n")
    print("| started (UTC) | steps | CPU | rollouts | s/step | peak RSS (GB) | mean reward | reward per step |")
    print("|---|---|---|---|---:|---:|---:|---|")
    for r in rows:
        per = ", ".join(f"{x:.2f}" for x in r["rewards"]) if len(r["rewards"]) <= 20 else "(see curves.csv)"
        # the same CPU name came with and without bf16 instructions (AVX512-BF16), which sets the step time
        bf16 = {True: ", bf16", False: ", no bf16"}.get(r.get("cpu_bf16"), "")
        print(f"| {r['started'][:16].replace('T', ' ')} | {r['steps']} | {r['cpu']}{bf16} | {r['sampler']} "
              f"| {r['s_per_step']:.0f} "
              f"| {r['peak_rss_gb']:.1f} | {r['reward_mean']:.2f} | {per} |")


def print_bins(label: str, rows: list[dict]) -> None:
    keys = [k for k in BIN_COLUMNS if k in rows[0]]
    print(f"\n{label}\n")
    print("| steps | " + " | ".join(BIN_COLUMNS[k] for k in keys) + " | s/step | peak RSS (GB) |")
    print("|---|" + "---:|" * (len(keys) + 2))
    for r in rows:
        cells = [f"{r[k]:.3f}" if k in ("kl", "entropy") else f"{r[k]:.2f}" for k in keys]
        print(f"| {r['steps']} | " + " | ".join(cells) + f" | {r['s_per_step']:.0f} | {r['peak_rss_gb']:.1f} |")


# the recommended-recipe rule's tie order: the run that needs no label first (docs/RESULTS.md, "The rule that
# names the recommended recipe")
TIE_ORDER = ("endogenous", "hybrid", "correctness")


def recommend(compare_json: str, runs: dict[str, str], steps: int = 100) -> dict:
    """The recommended-recipe rule of docs/RESULTS.md, applied to committed records.

    ``compare_json``: ``compare --json`` output (label -> gained, lost, McNemar p); ``runs``: label -> run folder
    with ``curves.csv``. A run enters once it has ``steps`` steps and an evaluation. It is "do not use" if it lost
    significantly (after below before, p < 0.05) or its last quarter collapsed (answered share < 0.9 or mean length
    under half its first quarter's); the pick is the largest gained - lost among the rest, ties by ``TIE_ORDER``.
    """
    from endorm.rl.logging import read_curves

    policies = json.loads(Path(compare_json).read_text())["policies"]
    verdicts = {}
    for label, run_dir in runs.items():
        if label not in policies:
            raise ValueError(f"{compare_json}: no evaluated policy {label!r} (run `compare` after its eval)")
        cols = read_curves(Path(run_dir) / "curves.csv")
        n = len(cols["step"])
        if n < steps:
            raise ValueError(f"{run_dir}: {n} steps in curves.csv, the rule needs {steps}")
        edges = _bin_edges(n, 4)  # the quarters of curve_bins
        first, last = slice(0, edges[1]), slice(edges[3], n)
        length_first = _nanmean(cols["completion_length"][first])
        length_last = _nanmean(cols["completion_length"][last])
        # without the answered monitor the collapse test would pass silently (nan < 0.9 is False): refuse instead
        answered_last = _nanmean(cols.get("reward_answered", [])[last])  # no column: an empty slice, nan
        if math.isnan(answered_last):
            raise ValueError(f"{run_dir}/curves.csv: no `reward_answered` values in steps {edges[3] + 1}-{n}; "
                             "the rule's collapse test needs the `answered` monitor")
        e = policies[label]
        lost_significantly = e["gained"] < e["lost"] and e["mcnemar_p"] < 0.05
        collapsed = answered_last < 0.9 or length_last < 0.5 * length_first
        verdicts[label] = {"gained": e["gained"], "lost": e["lost"], "net": e["gained"] - e["lost"],
                           "mcnemar_p": e["mcnemar_p"], "answered_last_quarter": answered_last,
                           "length_first_quarter": length_first, "length_last_quarter": length_last,
                           "use": not (lost_significantly or collapsed)}
    usable = [k for k, v in verdicts.items() if v["use"]]
    rank = {k: i for i, k in enumerate(TIE_ORDER)}
    pick = min(usable, key=lambda k: (-verdicts[k]["net"], rank.get(k, len(rank)))) if usable else None
    return {"runs": verdicts, "pick": pick,
            "significant": pick is not None and verdicts[pick]["mcnemar_p"] < 0.05 and verdicts[pick]["net"] > 0}


def probe(before: str, after: str, forms: list[str], model: str | None = None, rm=None) -> dict:
    """Score each problem's before- and after-training greedy answers with the frozen base model's reward.

    The question the RL runs raise: does a reward *form* prefer the collapsed answer ("The answer is N.")
    over the base model's own answer to the same prompt? One forward pass per answer (token stats kept),
    every form read off it. Prompts are the ``short`` template the runs trained and evaluated on.
    """
    from endorm import EndogenousRewardModel
    from endorm.chat import Example
    from endorm.mathx.data import load_benchmark
    from endorm.mathx.generate import PROMPT_TEMPLATES

    b, a = ({r["id"]: r["completions"][0] for r in _records(p)} for p in (before, after))
    questions = {q.id: q.question for q in load_benchmark("gsm8k")}
    ids = [i for i in b if i in a and i in questions]
    rm = rm if rm is not None else EndogenousRewardModel.from_pretrained(model)
    prompts = [PROMPT_TEMPLATES["short"].format(question=questions[i]) for i in ids]
    rows = [Example.from_pair(q, r) for q, r in zip(prompts, [b[i] for i in ids], strict=True)]
    rows += [Example.from_pair(q, r) for q, r in zip(prompts, [a[i] for i in ids], strict=True)]
    _, stats = rm.stats(rows)
    n = len(ids)
    res: dict = {"n": n, "tokens_before": sum(len(s.token_ids) for s in stats[:n]) / n,
                 "tokens_after": sum(len(s.token_ids) for s in stats[n:]) / n,
                 "mean_value_per_token": float(sum(s.values.mean() for s in stats) / len(stats)), "forms": {}}
    for form in forms:
        agg, _, g = form.partition("@")
        scorer = rm.with_config(aggregation=agg, gamma=float(g or 1.0))
        tot = [scorer.outcome(s)[1] for s in stats]
        wins = sum(tot[n + k] > tot[k] for k in range(n))
        res["forms"][form] = {"after_preferred": wins / n, "mean_before": sum(tot[:n]) / n,
                              "mean_after": sum(tot[n:]) / n}
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("plot", help="one figure with every run's reward/KL/length/entropy curves")
    p.add_argument("--runs", nargs="+", required=True, help="label=run_dir (holding curves.csv)")
    p.add_argument("--out", default="docs/figures/rl_curves.png")
    p.add_argument("--panels", nargs="+", default=["reward", "kl", "completion_length", "entropy"],
                   help="curves.csv columns, one panel each")
    c = sub.add_parser("compare", help="before/after accuracy with CIs and completion statistics")
    c.add_argument("--before", required=True)
    c.add_argument("--after", nargs="*", default=[], help="label=path/to/gsm8k.jsonl")
    c.add_argument("--json", default=None, help="also write the numbers here")
    s = sub.add_parser("curves", help="first/last-window means of each run's curves")
    s.add_argument("--runs", nargs="+", required=True, help="label=run_dir (holding curves.csv)")
    s.add_argument("--bins", type=int, default=0,
                   help="also a markdown table of means over this many equal runs of steps (4: quarters)")
    s.add_argument("--stretches", action="store_true",
                   help="also a markdown table with one row per train call (needs invocations.jsonl)")
    s.add_argument("--json", default=None, help="also write the numbers here")
    r = sub.add_parser("recommend", help="the recommended-recipe rule of RESULTS.md on the runs' records")
    r.add_argument("--compare", required=True, help="compare --json output (GSM8K)")
    r.add_argument("--runs", nargs="+", required=True, help="label=run_dir (holding curves.csv); label as in --compare")
    r.add_argument("--json", default=None, help="also write the verdicts here")
    q = sub.add_parser("probe", help="which reward forms prefer the trained policy's answers to the base model's")
    q.add_argument("--before", required=True, help="math-eval gsm8k.jsonl of the base model")
    q.add_argument("--after", required=True, help="math-eval gsm8k.jsonl of the trained policy")
    q.add_argument("--forms", nargs="+", default=["sum", "discounted@0.93", "discounted@0.8", "mean", "logprob"],
                   help="aggregation[@gamma]")
    q.add_argument("--model", default=None, help="reward model (default: the default model)")
    q.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if args.cmd == "plot":
        from endorm.rl.logging import plot_curves

        runs = dict(r.rsplit("=", 1) for r in args.runs)
        print(plot_curves({k: Path(v) / "curves.csv" for k, v in runs.items()}, args.out, panels=tuple(args.panels)))
    elif args.cmd == "compare":
        res = compare(args.before, args.after)
        print_compare(res, Path(args.before).stem.upper().replace("MATH500", "MATH-500"))
        if args.json:
            write_json(args.json, {"policies": res})
    elif args.cmd == "recommend":
        res = recommend(args.compare, dict(r.rsplit("=", 1) for r in args.runs))
        print("| run | gained / lost | McNemar p | answered (last quarter) | length first / last quarter | verdict |")
        print("|---|---|---|---|---|---|")
        for label, v in res["runs"].items():
            print(f"| {label} | +{v['gained']} / -{v['lost']} | {v['mcnemar_p']:.2f} | {v['answered_last_quarter']:.2f} "
                  f"| {v['length_first_quarter']:.0f} / {v['length_last_quarter']:.0f} | "
                  f"{'use' if v['use'] else 'do not use'} |")
        print(f"pick: {res['pick']} ({'significant' if res['significant'] else 'not significant: by the point estimate'})")
        if args.json:
            write_json(args.json, res)
    elif args.cmd == "probe":
        res = probe(args.before, args.after, args.forms, args.model)
        print(json.dumps(res, indent=2))
        if args.json:
            write_json(args.json, res)
    else:
        runs = {}
        for r in args.runs:
            label, d = r.rsplit("=", 1)
            runs[label] = {k: round(v, 4) for k, v in curve_summary(d).items()}
            print(label, json.dumps(runs[label]))
            if args.bins:
                rows = curve_bins(d, args.bins)
                print_bins(label, rows)
                runs[label]["bins"] = [{k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()}
                                       for r in rows]
            if args.stretches:
                rows = curve_stretches(d)
                print_stretches(label, rows)
                runs[label]["stretches"] = rows
        if args.json:
            write_json(args.json, {"runs": runs})
    return 0


if __name__ == "__main__":
    sys.exit(main())
