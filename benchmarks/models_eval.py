"""Time-boxed RM-Bench / DSP runs of ``endorm eval``'s methods on one registry model, growing the subset.

Built from ``endorm.eval``'s own pieces (same items, same methods, same records, same tables), with two
additions that matter on a shared CPU:

- the endorm aggregation variants (sum = the paper's R, mean, logprob = sum log pi without values,
  ...) are extra ``EndoRMMethod`` objects that share one forward pass through ``StatsMemo``, so all
  variants cost one pass (``endorm eval`` would need one run per ``--aggregation``);
- the seeded subset grows in steps (``--limits 2,4,6``: n per RM-Bench domain, or DSP queries). Each
  step only scores the new items (the subset for a larger n contains the smaller one), then writes a
  complete, balanced summary ``results-n{L}.json``; a step is not started after ``--deadline``. So the
  figures at any moment are those of the largest finished n, and an interrupted run resumes from
  ``examples.jsonl``.

Usage (one model per process; OMP_NUM_THREADS=1 on a shared machine):
    OMP_NUM_THREADS=1 python benchmarks/models_eval.py --model qwen2.5-coder-0.5b-instruct \
        --benchmark rm-bench --domains chat,code,safety --limits 2,4,6,8 --out-dir runs/models/q05-rmbench
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--benchmark", default="rm-bench", choices=("rm-bench", "dsp"))
    ap.add_argument("--domains", default="chat,code,safety")
    ap.add_argument("--limits", default="2,4,6,8,10", help="growing n (per RM-Bench domain / DSP queries)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--aggregations", default="sum,mean,logprob",
                    help="endorm variants sharing one forward pass (AGG or AGG@GAMMA; gamma 1 when not given)")
    ap.add_argument("--methods", default="logprob-mean,genrm-pointwise,verifier,genrm-pairwise",
                    help="other endorm.eval methods (judges and baselines) on the same model")
    ap.add_argument("--out-dir", default=None)
    ap.add_argument("--deadline", default=None, help="UTC HH:MM after which no new step starts")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--items-per-batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--summarize-only", action="store_true",
                    help="no model: summarise the items of --out-dir that every method finished (after a stop)")
    ap.add_argument("--compare", default=None,
                    help="no model: comma-separated RM-Bench results JSON files -> one table across models")
    ap.add_argument("--paired", default=None,
                    help="no model: comma-separated run folders -> endorm minus each other method, paired per prompt")
    args = ap.parse_args()
    if args.summarize_only:
        summarize_partial(Path(args.out_dir), args.model)
        return
    if args.compare:
        print(compare_table(args.compare.split(",")))
        return
    if args.paired:
        print(paired_differences(args.paired.split(",")))
        return

    import torch

    from endorm.eval import metrics as M
    from endorm.eval import report
    from endorm.eval.data import load_benchmark
    from endorm.eval.harness import evaluate
    from endorm.eval.methods import EndoRMMethod, StatsMemo, build_method
    from endorm.eval.prompts import DSP_DOMAINS
    from endorm.eval.variants import Variant
    from endorm.io import JsonlWriter, read_jsonl
    from endorm.reward_model import EndogenousRewardModel

    if not args.model or not args.out_dir:
        ap.error("--model and --out-dir are required")
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    deadline = None
    if args.deadline:
        h, m = map(int, args.deadline.split(":"))
        now = dt.datetime.now(dt.timezone.utc)
        deadline = now.replace(hour=h, minute=m, second=0, microsecond=0)
    limits = [int(x) for x in args.limits.split(",")]
    domains = [d for d in args.domains.split(",") if d] if args.benchmark == "rm-bench" else None

    t0 = time.perf_counter()
    rm = EndogenousRewardModel.from_pretrained(args.model, batch_size=args.batch_size)
    load_s = time.perf_counter() - t0
    memo = StatsMemo()
    methods = []
    for agg in args.aggregations.split(","):
        v = Variant.parse(agg)  # 'sum', 'logprob' (gamma 1, as measured), 'discounted@0.93', ...
        m = EndoRMMethod(rm.with_config(aggregation=v.aggregation, gamma=v.gamma), memo)
        m.name = "endorm" if agg == "sum" else f"endorm-{agg}"
        methods.append(m)
    methods += [build_method(name, rm, memo) for name in args.methods.split(",") if name]
    names = [m.name for m in methods]

    records_path = out / "examples.jsonl"
    log = open(out / "progress.log", "a")
    for limit in limits:
        if deadline and dt.datetime.now(dt.timezone.utc) >= deadline:
            print(f"deadline {args.deadline} UTC reached; not starting n={limit}", file=log, flush=True)
            break
        items = load_benchmark(args.benchmark, None, domains, limit, args.seed)
        done = {r["key"] for _, r in read_jsonl(records_path)} if records_path.exists() else set()
        t1 = time.perf_counter()
        with JsonlWriter(records_path, resume=records_path.exists()) as writer:
            new = evaluate(methods, items, done, writer.write, args.items_per_batch, DSP_DOMAINS, memo, False)
        step_s = time.perf_counter() - t1
        wanted = {(m, it.id) for m in names for it in items}
        recs = [r for _, r in read_jsonl(records_path) if (r["method"], r["id"]) in wanted]
        summary = {
            "benchmark": args.benchmark, "model": args.model, "methods": report.summarize(recs),
            "n_items": len(items), "subset": f"seeded random subset, limit {limit} seed {args.seed}"
            + (f" per domain ({','.join(domains)})" if domains else ""),
            "tie_rule": M.TIE_RULE, "threads": torch.get_num_threads(), "model_load_s": round(load_s, 1),
            "elapsed_s_step": round(step_s, 1), "new_records": new,
            "finished_utc": dt.datetime.now(dt.timezone.utc).strftime("%H:%M"),
        }
        summary["methods"] = {m: summary["methods"][m] for m in names if m in summary["methods"]}
        (out / f"results-n{limit}.json").write_text(json.dumps(report._nan_to_none(summary), indent=1) + "\n")
        report.write_outputs(summary, out, make_plot=False)
        print(f"n={limit}: {len(items)} items, {new} new records, {step_s:.0f} s, done {summary['finished_utc']} UTC",
              file=log, flush=True)
    log.close()


def summarize_partial(out: Path, model: str) -> None:
    """results-partial.json / table-partial.md over the items that every method in examples.jsonl finished."""
    from collections import defaultdict

    from endorm.eval import metrics as M
    from endorm.eval import report
    from endorm.io import read_jsonl

    recs = [r for _, r in read_jsonl(out / "examples.jsonl")]
    methods = list(dict.fromkeys(r["method"] for r in recs))
    have: dict[str, set] = defaultdict(set)
    for r in recs:
        have[r["id"]].add(r["method"])
    complete = {i for i, ms in have.items() if ms == set(methods)}
    keep = [r for r in recs if r["id"] in complete]
    summary = {"benchmark": recs[0]["benchmark"], "model": model, "methods": report.summarize(keep),
               "n_items": len(complete), "subset": "items every method finished before the run was stopped",
               "tie_rule": M.TIE_RULE, "incomplete_items_left_out": sorted(set(have) - complete)}
    summary["methods"] = {m: summary["methods"][m] for m in methods if m in summary["methods"]}
    (out / "results-partial.json").write_text(json.dumps(report._nan_to_none(summary), indent=1) + "\n")
    (out / "table-partial.md").write_text(report.markdown(summary))
    print(report.markdown(summary))


def compare_table(paths: list[str]) -> str:
    """RM-Bench accuracy per (model, method): domains, levels, avg ± s.e. over prompts, EndoRM minus the best judge."""
    judges = ("genrm-pointwise", "verifier", "genrm-pairwise")
    lines = ["| model | method | n/domain | chat | code | safety | easy | normal | hard | avg |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    gaps = []
    for path in paths:
        d = json.loads(Path(path).read_text())
        ms = d["methods"]
        for name, r in ms.items():
            dom = r["domains"]
            n = sorted({v["n"] for v in dom.values()})
            cells = [dom.get(k, {}).get("avg") for k in ("chat", "code", "safety")]
            cells += [r["overall"].get(k) for k in ("easy", "normal", "hard", "avg")]
            fmt = ["—" if c is None else f"{c:.1f}" for c in cells]
            if r["overall"].get("se") is not None:
                fmt[-1] += f" ± {r['overall']['se']:.1f}"
            lines.append(f"| {d['model']} | {name} | {'/'.join(map(str, n))} | " + " | ".join(fmt) + " |")
        best = max((ms[j]["overall"]["avg"] for j in judges if j in ms), default=None)
        if best is not None and "endorm" in ms:
            gaps.append(f"{d['model']}: endorm {ms['endorm']['overall']['avg']:.1f} - best judge {best:.1f} = "
                        f"{ms['endorm']['overall']['avg'] - best:+.1f} points")
    return "\n".join(lines + [""] + gaps)


def paired_differences(runs: list[str], reference: str = "endorm") -> str:
    """Per run folder: mean over items of (reference's accuracy - each other method's) ± s.e. over items.

    Only (item, system prompt) records that both methods finished count, so the two are compared on
    identical comparisons; a DSP item's four system prompts are averaged before the standard error.
    """
    from collections import defaultdict

    from endorm.eval import metrics as M
    from endorm.eval import report
    from endorm.io import read_jsonl

    lines = []
    for run in runs:
        acc: dict[str, dict[tuple, float]] = defaultdict(dict)  # method -> (item, system) -> accuracy %
        model = Path(run).name
        for _, r in read_jsonl(Path(run) / "examples.jsonl"):
            acc[r["method"]][(r["id"], r["system"])] = 100 * M.accuracy([report._m(m) for _, _, m in r["margins"]])
        for other in acc:
            if other == reference or reference not in acc:
                continue
            keys = set(acc[reference]) & set(acc[other])
            by_item: dict[str, list[float]] = defaultdict(list)  # DSP: one item's system prompts are not independent
            for k in keys:
                by_item[k[0]].append(acc[reference][k] - acc[other][k])
            d = [M.mean(v) for v in by_item.values()]
            lines.append(f"{model}: {reference} - {other} = {M.mean(d):+.1f} ± {M.standard_error(d):.1f} points "
                         f"(paired over {len(d)} items, {len(keys)} item x system prompt)")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
