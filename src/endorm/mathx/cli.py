"""Generate answers on math benchmarks (GSM8K, MATH-500, AIME24, AMC23, Minerva, OlympiadBench) and grade them.

Greedy decoding gives accuracy (with a 95% Wilson interval); ``--num_samples n --temperature t`` gives
pass@k for k = 1 and every power of two up to n. Completions are written one JSON line per problem to
``output_dir/<model-tag>/<benchmark>.jsonl`` as they come (``--resume`` continues), and the summary is
printed in the layout of the paper's Table 3 (AIME24, AMC, MATH-500, Minerva, OlympiadBench, average).
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


def _tag(model: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", model.strip("/").split("/")[-1] if "/" in model else model) or "model"


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


def format_table(summary: dict[str, dict[str, dict[str, Any]]], benchmarks: list[str], metric: str = "accuracy") -> str:
    """Rows = models, columns = benchmarks then the average (percent), as in the paper's Table 3."""
    cols = [_COLUMN_NAMES.get(b, b) for b in benchmarks] + ["Avg."]
    width = max(12, *(len(m) for m in summary)) if summary else 12
    lines = [f"{'Model':<{width}} " + " ".join(f"{c:>13}" for c in cols)]
    for model, per in summary.items():
        vals = [100 * per[b].get(metric, per[b]["accuracy"]) for b in benchmarks if b in per]
        cells = [f"{100 * per[b].get(metric, per[b]['accuracy']):13.1f}" if b in per else f"{'-':>13}" for b in benchmarks]
        avg = sum(vals) / len(vals) if vals else float("nan")
        lines.append(f"{model:<{width}} " + " ".join(cells) + f" {avg:13.1f}")
    return "\n".join(lines)


def run(config: Config) -> int:
    import torch

    from endorm.io import JsonlWriter, count_complete_lines
    from endorm.mathx.data import load_benchmark
    from endorm.mathx.generate import PROMPT_TEMPLATES, evaluate_problems
    from endorm.models import load_model_and_tokenizer

    if config.prompt_template not in PROMPT_TEMPLATES:
        raise ValueError(f"--prompt_template: unknown {config.prompt_template!r}; use {', '.join(PROMPT_TEMPLATES)}")
    if config.num_samples > 1 and config.temperature <= 0:
        raise ValueError("--num_samples > 1 needs --temperature > 0")
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    benchmarks = [b.strip() for b in config.benchmarks.split(",") if b.strip()]
    models = [m.strip() for m in config.models.split(",") if m.strip()]
    problems = {b: load_benchmark(b, config.data_dir, config.limit, config.seed) for b in benchmarks}
    out_root = Path(config.output_dir)
    summary: dict[str, dict[str, dict[str, Any]]] = {}
    for name in models:
        model, tok = load_model_and_tokenizer(None if name == "default" else name, config.dtype, config.device)
        tag = _tag(name)
        summary[tag] = {}
        for b in benchmarks:
            path = out_root / tag / f"{b}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            done = count_complete_lines(path) if (config.resume and path.exists()) else 0
            todo = problems[b][done:]
            t0 = time.time()
            with JsonlWriter(path, resume=config.resume, overwrite=not config.resume) as w:
                for rec in evaluate_problems(
                    model, tok, todo, template=config.prompt_template, system=config.system_prompt,
                    batch_size=config.batch_size, max_new_tokens=config.max_new_tokens,
                    temperature=config.temperature, top_p=config.top_p, num_samples=config.num_samples,
                    seed=config.seed,
                ):
                    w.write([rec])
            records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            s = summarize(records)
            s["seconds"] = round(time.time() - t0, 1)
            summary[tag][b] = s
            lo, hi = s["ci95"]
            print(f"{tag} {b}: {s['correct']}/{s['n']} = {100 * s['accuracy']:.1f}% "
                  f"(95% CI {100 * lo:.1f}-{100 * hi:.1f}) in {s['seconds']} s", flush=True)
        del model
    (out_root / "summary.json").write_text(json.dumps(summary, indent=2))
    print()
    print(format_table(summary, benchmarks))
    if config.num_samples > 1:
        print()
        print(f"pass@{config.num_samples if config.num_samples & (config.num_samples - 1) == 0 else 1}:")
        top = 1
        while top * 2 <= config.num_samples:
            top *= 2
        print(format_table(summary, benchmarks, metric=f"pass@{top}"))
    return 0
