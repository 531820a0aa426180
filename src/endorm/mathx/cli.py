"""Generate answers on math benchmarks (GSM8K, MATH-500, AIME24, AMC23, Minerva, OlympiadBench) and grade them.

Greedy decoding gives accuracy (with a 95% Wilson interval); ``--num_samples n --temperature t`` gives
pass@k for k = 1 and every power of two up to n. Completions are written one JSON line per problem to
``output_dir/<model-tag>/<benchmark>.jsonl`` as they come (``--resume`` continues), and the summary is
printed in the layout of the paper's Table 3 (AIME24, AMC, MATH-500, Minerva, OlympiadBench, average).

Best-of-N (``--select FORMS`` with ``--num_samples N``): the N samples of each problem are scored by the same
model under every form (``endorm.mathx.bestofn``), one forward pass per sample, into ``<benchmark>.scores.jsonl``;
a greedy pass goes to ``<benchmark>.greedy.jsonl``; ``<benchmark>.bestofn.json`` holds every form's best-of-N
accuracy, within-problem AUROC and shorter-wins share on all problems and on the seeded dev / test halves.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_COLUMN_NAMES = {"aime24": "AIME24", "amc23": "AMC", "math500": "MATH-500", "minerva": "Minerva",
                 "olympiadbench": "OlympiadBench", "gsm8k": "GSM8K", "gsm8k-train": "GSM8K-train"}


@dataclass
class Config:
    """Settings of ``endorm math-eval``."""

    models: str = field(
        default="default",
        metadata={"help": "comma-separated models (registry name, local dir, hub id; 'default' = SmolLM2-135M-Instruct); "
                  "one row each in the table"},
    )
    benchmarks: str = field(
        default="aime24,amc23,math500,minerva,olympiadbench",
        metadata={"help": "comma-separated: gsm8k, gsm8k-train, math500, aime24, amc23, minerva, olympiadbench"},
    )
    limit: int | None = field(default=None, metadata={"help": "problems per benchmark (seeded random subset)"})
    seed: int = field(default=0, metadata={"help": "seed of the subset and of sampling"})
    prompt_template: str = field(default="boxed", metadata={"help": "boxed | gsm8k | short | plain"})
    system_prompt: str | None = field(default=None, metadata={"help": "system message (default: the model's)"})
    max_new_tokens: int = field(default=512, metadata={"help": "generation budget per answer"})
    temperature: float = field(default=0.0, metadata={"help": "0 = greedy; > 0 samples"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling"})
    num_samples: int = field(default=1, metadata={"help": "samples per problem (pass@k needs temperature > 0)"})
    batch_size: int = field(default=16, metadata={"help": "sequences per generate() call"})
    dtype: str = field(default="float32", metadata={"help": "float32 | bfloat16 | float16"})
    device: str = field(default="cpu", metadata={"help": "cpu | cuda"})
    num_threads: int | None = field(default=None, metadata={"help": "torch CPU threads"})
    output_dir: str = field(default="results/math_eval", metadata={"help": "per-problem JSONL and summary.json"})
    resume: bool = field(default=False, metadata={"help": "skip problems already in the output files"})
    data_dir: str | None = field(default=None, metadata={"help": "folder with gsm8k/ and math/ (default ../shared/data)"})
    select: str | None = field(default=None, metadata={
        "help": "best-of-N: score the samples under these forms (all | endogenous | intrinsic | a comma list, "
                "e.g. sum,discounted@0.93,self_certainty,majority) and report each form's choice"})
    sampler: str = field(default="float32", metadata={
        "help": "float32 | bf16 | int8 | int8-all: the model that generates (bf16: a bfloat16 copy, 2.5x faster on "
                "a CPU with AVX-512 BF16, 0.0002 nats/token from float32; int8: dynamic int8 linear layers, "
                "0.3 nats/token); scoring always uses the --dtype model. Each record notes its sampler"})
    engine: str = field(default="generate", metadata={
        "help": "generate (left-padded batches of --batch_size sequences) | continuous (transformers' continuous "
                "batching: --batch_size problems per call, slots refilled as sequences end; the same tokens, "
                "faster when lengths vary)"})
    cache: str = field(default="static", metadata={
        "help": "KV cache of generation: static (preallocated; faster on a CPU, the same tokens: "
                "benchmarks/sampling_speed.py) | dynamic"})
    greedy_baseline: bool = field(default=True, metadata={"help": "with --select: also a greedy pass (baseline)"})
    greedy_from: str | None = field(default=None, metadata={
        "help": "with --select: take the greedy baseline from this math-eval JSONL (a greedy run over the same "
                "problems) instead of a new pass"})
    regrade: bool = field(default=False, metadata={
        "help": "re-grade the records already in the output files with the current grader (no model; the files "
                "are rewritten atomically), then summarise"})
    split_seed: int = field(default=0, metadata={"help": "seed of the dev / test halves of the best-of-N report"})


def _tag(model: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", model.strip("/").split("/")[-1] if "/" in model else model) or "model"


def regrade_file(path: Path) -> int:
    """Re-grade every completion of a math-eval JSONL with the current grader; returns how many verdicts
    changed. The file is replaced atomically."""
    from endorm.io import replace_file
    from endorm.mathx.grading import grade_verdict

    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    changed = 0
    for r in records:
        verdicts = [grade_verdict(c, r["answer"]) for c in r["completions"]]
        changed += sum(v.correct != c for v, c in zip(verdicts, r["correct"], strict=True))
        r["correct"], r["graders"] = [v.correct for v in verdicts], [v.grader for v in verdicts]
    replace_file(path, "".join(json.dumps(r) + "\n" for r in records))
    return changed


def _bench_tag(bench: str) -> str:
    """The file name stem of a benchmark's outputs: its name, or the stem of a .jsonl path (never the path
    itself, which would put the outputs beside the input)."""
    return _tag(Path(bench).stem) if bench.endswith(".jsonl") else _tag(bench)


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Accuracy (first sample), its Wilson interval, and pass@k for the powers of two up to n."""
    from endorm.mathx.generate import pass_at_k, wilson_interval

    n = len(records)
    first = sum(bool(r["correct"][0]) for r in records)
    lo, hi = wilson_interval(first, n)
    out: dict[str, Any] = {"n": n, "correct": first, "accuracy": first / n if n else 0.0, "ci95": [lo, hi]}
    n_samples = min((len(r["correct"]) for r in records), default=1)
    if n_samples > 1:
        k = 1
        while k <= n_samples:
            out[f"pass@{k}"] = sum(pass_at_k(len(r["correct"]), sum(r["correct"]), k) for r in records) / n
            k *= 2
    lengths = [len(c) for r in records for c in r["completions"]]
    out["mean_completion_chars"] = sum(lengths) / len(lengths) if lengths else 0.0
    return out


def common_pass_at_k(summary: dict[str, dict[str, dict[str, Any]]], benchmarks: list[str]) -> int | None:
    """The largest k whose pass@k every (model, benchmark) cell of the table holds, or None.

    ``summarize`` builds the pass@k keys from each file's records (a folder may hold runs of different N), so
    the table's k comes from the cells themselves, not from this run's --num_samples."""
    # only the cells the table shows: the folder's summary may hold other benchmarks from earlier runs
    cells = [per[b] for per in summary.values() for b in benchmarks if b in per]
    ks = [{int(key[5:]) for key in cell if key.startswith("pass@")} for cell in cells]
    common = set.intersection(*ks) if ks else set()
    return max(common) if common else None


def format_table(summary: dict[str, dict[str, dict[str, Any]]], benchmarks: list[str], metric: str = "accuracy") -> str:
    """Rows = models, columns = benchmarks then the average (percent), as in the paper's Table 3."""
    cols = [_COLUMN_NAMES.get(b, b) for b in benchmarks] + ["Avg."]
    width = max(12, *(len(m) for m in summary)) if summary else 12
    lines = [f"{'Model':<{width}} " + " ".join(f"{c:>13}" for c in cols)]
    for model, per in summary.items():
        # a cell without the metric prints "-": falling back to accuracy would put it under another label
        vals = [100 * per[b][metric] for b in benchmarks if metric in per.get(b, {})]
        cells = [f"{100 * per[b][metric]:13.1f}" if metric in per.get(b, {}) else f"{'-':>13}" for b in benchmarks]
        avg = sum(vals) / len(vals) if vals else float("nan")
        lines.append(f"{model:<{width}} " + " ".join(cells) + f" {avg:13.1f}")
    return "\n".join(lines)


def _generate_file(config: Config, path: Path, problems: list, model: Any, sampler: Any, tok: Any,
                   temperature: float, num_samples: int, on_record: Any = None) -> None:
    """Append the records of the problems not yet in ``path`` (all of them without --resume); ``on_record``
    is called with each record once it is written (best-of-N scores it there, so both files grow together)."""
    from endorm.io import JsonlWriter, count_complete_lines
    from endorm.mathx.generate import evaluate_problems

    done = count_complete_lines(path) if (config.resume and path.exists()) else 0
    _check_prefix(path, problems, done)
    with JsonlWriter(path, resume=config.resume, overwrite=not config.resume) as w:
        for rec in evaluate_problems(
            model, tok, problems[done:], template=config.prompt_template, system=config.system_prompt,
            batch_size=config.batch_size, max_new_tokens=config.max_new_tokens, temperature=temperature,
            top_p=config.top_p, num_samples=num_samples, seed=config.seed + done, sampler=sampler,
            cache_implementation=None if config.cache == "dynamic" else config.cache, engine=config.engine,
        ):
            rec["sampler"] = config.sampler  # a resumed file may mix samplers: each record says which drew it
            w.write([rec])
            if on_record is not None:
                on_record(rec)


def _check_prefix(path: Path, problems: list, done: int) -> None:
    """--resume continues a file only if its records are the first ``done`` problems of this run, in order."""
    if not done:
        return
    with path.open(encoding="utf-8") as f:
        ids = [json.loads(line)["id"] for line, _ in zip(f, range(done), strict=False)]
    want = [p.id for p in problems[:done]]
    if ids != want:
        raise ValueError(f"--resume: {path} holds other problems than this run's first {done} (different "
                         "--limit, --seed or benchmark); use another --output_dir or drop --resume")


def _sample_and_score(config: Config, path: Path, bench: str, problems: list, model: Any, sampler: Any, tok: Any,
                      forms: list[str]) -> None:
    """Sample and score chunk by chunk: each problem's scores are written right after its samples, so a run
    cut short leaves both files on the same prefix (samples written but not yet scored are scored first on
    --resume)."""
    from endorm.io import JsonlWriter, count_complete_lines
    from endorm.mathx.bestofn import score_problem
    from endorm.mathx.generate import build_prompt

    spath = path.with_name(f"{bench}.scores.jsonl")
    done = count_complete_lines(path) if (config.resume and path.exists()) else 0
    scored = count_complete_lines(spath) if (config.resume and spath.exists()) else 0
    if scored > done:
        raise ValueError(f"--resume: {spath} has {scored} problems but {path} only {done}; the files do not belong "
                         "together (drop --resume to start again)")
    _check_prefix(path, problems, done)
    _check_prefix(spath, problems, scored)
    questions = {p.id: p.question for p in problems}
    t0 = time.time()
    with JsonlWriter(spath, resume=config.resume, overwrite=not config.resume) as w:
        def score(rec: dict) -> None:
            prompt = build_prompt(tok, questions[rec["id"]], config.prompt_template, config.system_prompt)
            w.write([{"id": rec["id"], "scores": score_problem(model, tok, prompt, rec, forms)}])

        if scored < done:  # a run cut between sampling and scoring
            with path.open(encoding="utf-8") as f:
                pending = [json.loads(line) for i, line in enumerate(f) if scored <= i < done]
            for rec in pending:
                score(rec)
        _generate_file(config, path, problems, model, sampler, tok, config.temperature, config.num_samples,
                       on_record=score)
    log.info("sampled and scored in %.0f s", time.time() - t0)


def _best_of_n(config: Config, folder: Path, bench: str, problems: list, records: list[dict], model: Any,
               sampler: Any, tok: Any, forms: list[str]) -> dict[str, Any]:
    """The greedy baseline and the best-of-N summary of the sampled and scored problems."""
    from endorm.mathx.bestofn import ENDOGENOUS_FORMS, format_summary, rl_candidate, summarize

    greedy = None
    if config.greedy_from:
        greedy = [json.loads(line) for line in Path(config.greedy_from).read_text().splitlines() if line.strip()]
        missing = {r["id"] for r in records} - {g["id"] for g in greedy}
        if missing:
            raise ValueError(f"--greedy_from {config.greedy_from}: {len(missing)} of this run's problems are not in it "
                             f"(e.g. {sorted(missing)[0]!r})")
    elif config.greedy_baseline:
        gpath = folder / f"{bench}.greedy.jsonl"
        _generate_file(config, gpath, problems, model, sampler, tok, 0.0, 1)
        greedy = [json.loads(line) for line in gpath.read_text().splitlines() if line.strip()]
    spath = folder / f"{bench}.scores.jsonl"
    scored = [json.loads(line) for line in spath.read_text().splitlines() if line.strip()]
    missing = [f for f in forms if any(f not in s["scores"] for s in scored)]
    if missing:
        raise ValueError(f"{spath} lacks the forms {', '.join(missing)} (scored with another --select); "
                         "rerun without --resume to rescore")
    summary = summarize(records, [{"id": s["id"], **s["scores"]} for s in scored], forms, greedy,
                        split_seed=config.split_seed)
    endo = [f for f in forms if f in ENDOGENOUS_FORMS]
    if endo:
        summary["rl_candidate"] = rl_candidate(summary, tuple(endo))
    (folder / f"{bench}.bestofn.json").write_text(json.dumps(summary, indent=1))
    print(format_summary(summary, "all"))
    if summary.get("rl_candidate"):
        print(f"\nRL candidate (highest dev AUROC among the endogenous forms): {summary['rl_candidate']}")
    elif "rl_candidate" in summary:
        print("\nno RL candidate: no problem of the dev half has both a correct and a wrong sample (no AUROC)")
    return summary


def _read_summary(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        merged = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e}); move it away to start a new summary") from None
    if not isinstance(merged, dict):
        raise ValueError(f"{path}: expected a JSON object of models, got {type(merged).__name__}")
    return merged


def write_summary(path: Path, summary: dict[str, dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """Merge this run's {model: {benchmark: figures}} into ``path`` and write it atomically: models and
    benchmarks of earlier runs into the same folder are kept (a second model must not erase the first's)."""
    from endorm.io import replace_file

    merged = _read_summary(path)
    for tag, per_bench in summary.items():
        merged.setdefault(tag, {}).update(per_bench)
    replace_file(path, json.dumps(merged, indent=2))
    return merged


def run(config: Config) -> int:
    import torch

    from endorm.mathx.data import load_benchmark
    from endorm.mathx.generate import PROMPT_TEMPLATES, SAMPLERS, make_sampler
    from endorm.models import load_model_and_tokenizer

    if config.prompt_template not in PROMPT_TEMPLATES:
        raise ValueError(f"--prompt_template: unknown {config.prompt_template!r}; use {', '.join(PROMPT_TEMPLATES)}")
    if config.num_samples > 1 and config.temperature <= 0:
        raise ValueError("--num_samples > 1 needs --temperature > 0")
    if config.engine not in ("generate", "continuous"):
        raise ValueError(f"--engine: unknown {config.engine!r}; use generate or continuous")
    if config.cache not in ("static", "dynamic"):
        raise ValueError(f"--cache: unknown {config.cache!r}; use static or dynamic")
    if config.sampler not in SAMPLERS:
        raise ValueError(f"--sampler: unknown {config.sampler!r}; use {', '.join(SAMPLERS)}")
    forms = None
    if config.select:
        from endorm.mathx.bestofn import parse_forms

        forms = parse_forms(config.select)
        if config.num_samples < 2:
            raise ValueError("--select needs --num_samples >= 2 (and --temperature > 0): it chooses among samples")
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    benchmarks = [b.strip() for b in config.benchmarks.split(",") if b.strip()]
    models = [m.strip() for m in config.models.split(",") if m.strip()]
    problems = {b: load_benchmark(b, config.data_dir, config.limit, config.seed) for b in benchmarks}
    out_root = Path(config.output_dir)
    summary: dict[str, dict[str, dict[str, Any]]] = {}
    earlier = _read_summary(out_root / "summary.json")
    for name in models:
        tag = _tag(name)
        if config.regrade:
            for b in benchmarks:
                for f in sorted((out_root / tag).glob(f"{_bench_tag(b)}*.jsonl")):
                    if not f.name.endswith(".scores.jsonl"):
                        print(f"{f}: {regrade_file(f)} verdicts changed", flush=True)
        model, tok = load_model_and_tokenizer(None if name == "default" else name, config.dtype, config.device)
        sampler = make_sampler(model, config.sampler)
        summary[tag] = {}
        for b in benchmarks:
            path = out_root / tag / f"{_bench_tag(b)}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            resumed = path.exists() and path.stat().st_size > 0
            t0 = time.time()
            if forms:
                _sample_and_score(config, path, _bench_tag(b), problems[b], model, sampler, tok, forms)
            else:
                _generate_file(config, path, problems[b], model, sampler, tok, config.temperature, config.num_samples)
            records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            s = summarize(records)
            s["seconds_this_run"] = round(time.time() - t0, 1)
            # a resumed file's time is the earlier invocations' plus this one's, so the figure covers every record
            before = earlier.get(tag, {}).get(b, {}).get("seconds", 0.0) if resumed else 0.0
            s["seconds"] = round(before + s["seconds_this_run"], 1)
            summary[tag][b] = s
            lo, hi = s["ci95"]
            # with N samples the headline is the first sample's accuracy, not a best-of-N figure: say so
            which = " (first sample of each problem)" if config.num_samples > 1 else ""
            print(f"{tag} {b}: {s['correct']}/{s['n']} = {100 * s['accuracy']:.1f}%{which} "
                  f"(95% CI {100 * lo:.1f}-{100 * hi:.1f}) in {s['seconds']} s", flush=True)
            if forms:
                _best_of_n(config, out_root / tag, _bench_tag(b), problems[b], records, model, sampler, tok, forms)
        del model, sampler
    write_summary(out_root / "summary.json", summary)
    print()
    if config.num_samples == 1:
        print(format_table(summary, benchmarks))
    else:
        print("accuracy of the first sample of each problem:")
        print(format_table(summary, benchmarks))
        top = common_pass_at_k(summary, benchmarks)
        if top is not None:
            print()
            print(f"pass@{top}:")
            print(format_table(summary, benchmarks, metric=f"pass@{top}"))
    return 0
