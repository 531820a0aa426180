"""EndoRM with the per-token mean aggregation, derived exactly from finished ``--aggregation sum`` runs.

R_mean = (1/n) sum_t r_t = R_sum / n, with n the response's token count, so the mean variant needs only
the tokenizer, not another forward pass. Reads ``examples.jsonl`` of an ``endorm eval`` run that
included ``endorm`` (aggregation sum), writes a run directory with method ``endorm-mean`` that
``endorm eval --merge`` can combine.
    python benchmarks/eval_derived.py runs/eval/rm-endorm runs/eval/rm-endorm-mean --limit 4
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from endorm.eval import report
from endorm.eval.cli import read_records
from endorm.eval.data import load_dsp, load_rmbench
from endorm.eval.harness import record_key
from endorm.eval.metrics import margin
from endorm.eval.prompts import DSP_SYSTEM_PROMPTS


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("out")
    ap.add_argument("--limit", type=int, required=True, help="items per domain (RM-Bench) or in all (DSP)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    from endorm.models import load_model_and_tokenizer
    from endorm.reward_model import EndogenousRewardModel

    settings = json.loads((Path(a.run) / "settings.json").read_text())
    if settings["aggregation"] != "sum":
        raise SystemExit("the source run must use --aggregation sum")
    bench = settings["benchmark"]
    items = load_rmbench(limit=a.limit, seed=a.seed) if bench == "rm-bench" else load_dsp(limit=a.limit, seed=a.seed)
    by_id = {it.id: it for it in items}
    model, tok = load_model_and_tokenizer(settings["model"])
    rm = EndogenousRewardModel.from_model(model, tok)
    wanted = {record_key("endorm", it.id, s) for it in items
              for s in ([None] if bench == "rm-bench" else settings["dsp_systems"].split(","))}
    recs = []
    for r in read_records(Path(a.run) / "examples.jsonl"):
        if r["key"] not in wanted:
            continue
        it = by_id[r["id"]]
        system = DSP_SYSTEM_PROMPTS.get(r["system"]) if r["system"] else it.system
        n = [len(rm.encode(it.example(k, system)).response_ids) for k in range(len(it.responses))]
        scores = [s / k for s, k in zip(r["scores"], n, strict=True)]
        recs.append({**r, "method": "endorm-mean", "scores": scores, "n_tokens": n, "elapsed_s": 0.0,
                     "margins": [[i, j, margin(scores[i], scores[j])] for i, j, _ in r["margins"]]})
    if len(recs) != len(wanted):
        raise SystemExit(f"{len(wanted) - len(recs)} of {len(wanted)} records are not scored yet in {a.run}")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "examples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    summary = {"benchmark": bench, "model": settings["model"] or "SmolLM2-135M-Instruct (default)",
               "methods": report.summarize(recs), "derived_from": a.run,
               "settings": {**settings, "aggregation": "mean", "limit": a.limit}}
    report.write_outputs(summary, out, make_plot=False)
    print(report.markdown(summary))


if __name__ == "__main__":
    main()
