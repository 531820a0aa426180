"""Which generation engine samples best-of-N solutions fastest on this machine (real new tokens per second).

``benchmarks/sampling_speed.py`` compares samplers (float32, bfloat16, int8) with greedy 64-token decodes;
this compares the *engines* on the real workload of ``benchmarks/bestofn.sh sample``: N samples per problem at
a temperature, up to the cap L, where lengths vary from ~150 tokens to the cap. ``generate`` pads a batch to
its longest sequence (a row that ended waits); ``continuous`` (transformers' continuous batching) refills a
finished slot at once but attends over a paged cache whose size grows with the sequences of one call. Each
setting samples the same seeded problems; tokens/s counts the tokens of the completions only.

    python benchmarks/sampling_engines.py --problems 4 --settings continuous:4 generate:32 \
        --json records/sampling/engines_0.5b.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--sampler", default="bf16", help="float32 | bf16 | int8 (endorm.mathx.generate.make_sampler)")
    ap.add_argument("--problems", type=int, default=4, help="seeded GSM8K test problems (seed 0, boxed template)")
    ap.add_argument("--num-samples", type=int, default=8)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--max-new-tokens", type=int, default=448)
    ap.add_argument("--settings", nargs="+", default=["continuous:4", "generate:32"],
                    help="ENGINE:K: continuous with K problems per call, or generate with batches of K sequences")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)

    import torch

    from endorm.mathx.data import load_benchmark
    from endorm.mathx.generate import build_prompt, make_sampler, sample_completions
    from endorm.models import load_model_and_tokenizer

    torch.set_num_threads(a.threads)
    model, tok = load_model_and_tokenizer(a.model, "float32", "cpu")
    sampler = make_sampler(model, a.sampler)
    problems = load_benchmark("gsm8k", None, a.problems, 0)
    prompts = [build_prompt(tok, p.question, "boxed", None) for p in problems]
    rows = []
    for setting in a.settings:
        engine, k = setting.split(":")
        k = int(k)
        t0 = time.time()
        comps: list = []
        if engine == "continuous":
            for i in range(0, len(prompts), k):  # k problems per call, as math-eval --batch_size k
                comps += sample_completions(sampler, tok, prompts[i : i + k], max_new_tokens=a.max_new_tokens,
                                            temperature=a.temperature, num_samples=a.num_samples, seed=i,
                                            engine="continuous")
        else:
            comps = sample_completions(sampler, tok, prompts, max_new_tokens=a.max_new_tokens,
                                       temperature=a.temperature, num_samples=a.num_samples, batch_size=k,
                                       engine="generate")
        dt = time.time() - t0
        n = sum(c["n_tokens"] for cs in comps for c in cs)
        row = {"setting": setting, "sampler": a.sampler, "seconds": round(dt, 1), "new_tokens": n,
               "tokens_per_s": round(n / dt, 2), "cut_at_cap": sum(c["end_token"] is None for cs in comps for c in cs)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    if a.json:
        out = {"command": "python benchmarks/sampling_engines.py " + " ".join(sys.argv[1:] if argv is None else argv),
               "model": a.model, "threads": a.threads, "problems": a.problems, "num_samples": a.num_samples,
               "temperature": a.temperature, "max_new_tokens": a.max_new_tokens, "torch": torch.__version__,
               "machine": platform.machine(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
               "rows": rows}
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
