"""Core benchmarks (issue: memory, throughput, shared prompts, invariance), one command:

    python benchmarks/core.py            # prints a table and writes runs/bench_core.json

1. memory: peak RSS of the chunked path (endorm.scoring) vs the naive `model(...).logits` +
   log_softmax path, at a 151,936-token vocabulary (Qwen2.5's) and 4,096 tokens, each path in its own
   subprocess, on a random Llama whose hidden size is small so that the logits dominate as they do in
   the real setting.
2. throughput: endorm scoring vs the bare forward pass (`model(input_ids).logits`) of the default
   model on the same padded batches, tokens/s, interleaved repeats, median.
3. shared prompts: RM-Bench chat prompts with their six responses each (and 8-shot GSM8K best-of-6),
   scored with the prompt's KV cache reused vs each pair alone in one forward pass: speedup and max
   |score difference|; and vs each pair alone through the default (cached) path: max |difference|.
4. invariance: the same rows scored with batch size 1 / 8 and left / right padding: max |difference|.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _peak_child(mode: str, vocab: int, tokens: int, hidden: int, chunk: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--_memory-child", mode, str(vocab), str(tokens), str(hidden),
                          str(chunk)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def memory_child(mode: str, vocab: int, tokens: int, hidden: int, chunk: int) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from endorm.chat import Encoded
    from endorm.scoring import compute_stats

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=tokens + 8)
    model = LlamaForCausalLM(cfg).eval()
    ids = torch.randint(0, vocab, (tokens,)).tolist()
    enc = Encoded(ids, prompt_len=tokens // 8)  # 7/8 of the sequence is response
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    with torch.no_grad():
        if mode == "naive":
            logits = model(torch.tensor([ids])).logits  # [1, T, V] float32
            logp = torch.log_softmax(logits.float(), -1)  # [1, T, V]
            n = enc.prompt_len
            val = logp[0, n - 1 : -1].gather(-1, torch.tensor(ids[n:])[:, None]).sum().item()
        else:
            s = compute_stats(model, [enc], chunk_size=chunk)[0]
            val = s.logprobs.sum().item()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"mode": mode, "peak_mb": (peak - base) / 1024, "seconds": time.perf_counter() - t, "logp": val}))


def bench_memory(vocab: int, tokens: int, hidden: int, chunk: int) -> dict:
    naive = _peak_child("naive", vocab, tokens, hidden, chunk)
    chunked = _peak_child("chunked", vocab, tokens, hidden, chunk)
    return {"vocab": vocab, "tokens": tokens, "hidden": hidden, "chunk_size": chunk,
            "naive_peak_mb": round(naive["peak_mb"]), "chunked_peak_mb": round(chunked["peak_mb"]),
            "ratio": round(chunked["peak_mb"] / naive["peak_mb"], 3),
            "sum_logp_abs_diff": abs(naive["logp"] - chunked["logp"])}


def _rmbench_groups(n_prompts: int, seed: int = 0):
    from endorm.paths import shared_data_dir

    data = json.loads((shared_data_dir() / "rm-bench" / "chat_filtered.json").read_text())
    rng = random.Random(seed)
    rows = rng.sample(data, n_prompts)
    return [(r["prompt"], r["chosen"] + r["rejected"]) for r in rows]


def bench_throughput(rm, groups, repeats: int) -> dict:
    import torch

    from endorm.chat import Example
    from endorm.scoring import compute_stats, pad_batch

    examples = [Example.from_pair(p, r) for p, rs in groups for r in rs[:1]]
    enc = [rm.encode(e) for e in examples]
    bs = rm.config.batch_size
    order = sorted(range(len(enc)), key=lambda i: len(enc[i].input_ids), reverse=True)
    batches = [[enc[i] for i in order[k : k + bs]] for k in range(0, len(order), bs)]
    n_tokens = sum(len(e.input_ids) for e in enc)

    def bare():
        with torch.no_grad():
            for b in batches:
                ids, attn, _, pos = pad_batch(b, rm._pad_id)
                _ = rm.model(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=False).logits

    def endorm():
        for b in batches:
            compute_stats(rm.model, b, batch_size=bs, share_prompts=False, pad_id=rm._pad_id)

    def endorm_default():  # the default path: cached two-stage, one row per pass on a CPU
        compute_stats(rm.model, enc, batch_size=bs, share_prompts=True, pad_id=rm._pad_id)

    times = {"bare": [], "endorm": [], "endorm_default": []}
    bare()  # warm-up
    for _ in range(repeats):
        for name, fn in (("bare", bare), ("endorm", endorm), ("endorm_default", endorm_default)):
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    tb, te = statistics.median(times["bare"]), statistics.median(times["endorm"])
    return {"rows": len(enc), "tokens": n_tokens, "batch_size": bs, "repeats": repeats,
            "bare_tok_s": round(n_tokens / tb, 1), "endorm_tok_s": round(n_tokens / te, 1),
            "ratio": round(tb / te, 3),
            "endorm_default_tok_s": round(n_tokens / statistics.median(times["endorm_default"]), 1),
            "ratio_default": round(tb / statistics.median(times["endorm_default"]), 3)}


def _gsm8k_best_of_n(n_prompts: int, n_shots: int = 8, seed: int = 0):
    """Best-of-N with a long shared prompt: an n-shot GSM8K prompt and the six answers of six other items."""
    from endorm.paths import shared_data_dir

    rows = [json.loads(x) for x in (shared_data_dir() / "gsm8k" / "train.jsonl").read_text().splitlines()]
    rng = random.Random(seed)
    groups = []
    for _ in range(n_prompts):
        items = rng.sample(rows, n_shots + 7)
        shots = "\n\n".join(f"Question: {r['question']}\nAnswer: {r['answer']}" for r in items[:n_shots])
        q = items[n_shots]
        prompt = f"{shots}\n\nQuestion: {q['question']}\nAnswer:"
        groups.append((prompt, [q["answer"]] + [r["answer"] for r in items[n_shots + 2 :]]))
    return groups


def bench_shared(rm, groups) -> dict:
    """The same rows scored with the prompt's cache reused (batch 8) vs each pair alone (batch 1)."""
    from endorm.chat import Example
    from endorm.scoring import compute_stats

    enc = [rm.encode(Example.from_pair(p, r)) for p, rs in groups for r in rs]
    t = time.perf_counter()
    shared = compute_stats(rm.model, enc, batch_size=8, share_prompts=True, pad_id=rm._pad_id)
    t_shared = time.perf_counter() - t
    t = time.perf_counter()
    alone = [compute_stats(rm.model, [e], share_prompts=False, pad_id=rm._pad_id)[0] for e in enc]
    t_alone = time.perf_counter() - t
    # the default path on each row alone: the same two-stage computation, no company
    alone_default = [compute_stats(rm.model, [e], share_prompts=True, pad_id=rm._pad_id)[0] for e in enc]
    company = [abs(rm.outcome(a)[1] - rm.outcome(b)[1]) for a, b in zip(shared, alone_default, strict=True)]
    totals = [(rm.outcome(a)[1], rm.outcome(b)[1]) for a, b in zip(shared, alone, strict=True)]
    return {"prompts": len(groups), "responses": len(enc),
            "prompt_tokens_mean": round(statistics.mean(e.prompt_len for e in enc)),
            "response_tokens_mean": round(statistics.mean(len(e.response_ids) for e in enc)),
            "shared_s": round(t_shared, 1), "alone_s": round(t_alone, 1), "speedup": round(t_alone / t_shared, 2),
            "max_abs_diff_vs_default_alone": max(company),
            "max_abs_diff": max(abs(a - b) for a, b in totals),
            "max_rel_diff": max(abs(a - b) / max(abs(b), 1e-9) for a, b in totals),
            "max_token_logprob_diff": max((a.logprobs - b.logprobs).abs().max().item() for a, b in zip(shared, alone, strict=True)),
            "max_token_value_diff": max((a.values - b.values).abs().max().item() for a, b in zip(shared, alone, strict=True))}


def bench_invariance(rm, groups) -> dict:
    from endorm.chat import Example
    from endorm.scoring import compute_stats

    examples = [Example.from_pair(p, r) for p, rs in groups for r in rs[:2]]
    enc = [rm.encode(e) for e in examples]
    runs = {}
    for bs in (1, 8):
        for side in ("left", "right"):
            st = compute_stats(rm.model, enc, batch_size=bs, share_prompts=False, padding_side=side, pad_id=rm._pad_id)
            runs[(bs, side)] = [rm.outcome(s)[1] for s in st]
    ref = runs[(1, "right")]
    return {"rows": len(enc), "max_abs_diff": max(abs(a - b) for r in runs.values() for a, b in zip(r, ref, strict=True))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench_core.json"))
    ap.add_argument("--parts", default="memory,throughput,shared,invariance", help="comma-separated subset to run")
    args = ap.parse_args()
    import torch

    from endorm import EndogenousRewardModel

    res: dict = {"machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, {platform.processor() or ''}",
                 "torch": torch.__version__, "command": "python " + " ".join(sys.argv)}
    t0 = time.perf_counter()
    parts = set(args.parts.split(","))
    if "memory" in parts:
        res["memory"] = bench_memory(151_936, 1024 if args.quick else 4096, 64, 512)
        print("memory", res["memory"], flush=True)
    rm = EndogenousRewardModel.from_pretrained()
    groups = _rmbench_groups(3 if args.quick else 6)
    if "throughput" in parts:
        res["throughput"] = bench_throughput(rm, _rmbench_groups(8 if args.quick else 16, seed=1), 1 if args.quick else 3)
        print("throughput", res["throughput"], flush=True)
    if "shared" in parts:
        res["shared_prompts"] = bench_shared(rm, groups)
        print("shared_prompts (RM-Bench chat)", res["shared_prompts"], flush=True)
        res["shared_prompts_long"] = bench_shared(rm, _gsm8k_best_of_n(2 if args.quick else 4))
        print("shared_prompts (8-shot GSM8K best-of-6)", res["shared_prompts_long"], flush=True)
    if "invariance" in parts:
        res["invariance"] = bench_invariance(rm, groups)
        print("invariance", res["invariance"], flush=True)
    res["elapsed_s"] = round(time.perf_counter() - t0)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--_memory-child":
        memory_child(sys.argv[2], *map(int, sys.argv[3:7]))
    else:
        main()
