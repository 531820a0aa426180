"""Sampling speed on this machine: new tokens per second of chain-of-thought generation, per setting.

For best-of-N and GRPO the sampler is the cost. This measures, on real GSM8K prompts (the ``boxed``
template), the settings a user can reach with the libraries' own switches:

- ``fp32``:          transformers ``generate``, float32, dynamic KV cache (the reference);
- ``static``:        the same with ``cache_implementation="static"`` (preallocated cache);
- ``bf16``:          weights and activations in bfloat16 (changes the numbers);
- ``int8``:          ``torch.ao.quantization.quantize_dynamic`` on every ``nn.Linear`` (int8 weights with one
                     scale per tensor, dynamic activation scales; changes the numbers);
- ``int8pc``:        the same with one weight scale per output channel (``per_channel_dynamic_qconfig``);
                     ``int8pc-head`` keeps the output layer in float32 (endorm's ``--sampler int8``);
- ``compile``:       ``torch.compile`` of the forward with the static cache;
- ``int8+static``, ``bf16+static``: both switches.

Each setting generates greedily for the same prompts at batch sizes from ``--batch-sizes`` and reports
new tokens/s (real tokens only: rows that have finished are not counted while they wait for the batch),
and, against ``fp32`` at the same batch size, the share of prompts whose greedy token ids are identical and
the mean index of the first different token. Only settings whose outputs are identical change nothing but
speed; the others say what they change, measured as well by ``--kl``: the mean per-token KL(pi_fp32 || pi_setting)
of the next-token distributions along fp32's own greedy completions (teacher-forced, so it does not depend on
where two greedy decodes part).

    python benchmarks/sampling_speed.py --model qwen2.5-coder-0.5b-instruct --settings fp32 static bf16 int8 \
        --batch-sizes 1 8 16 --prompts 16 --max-new-tokens 128 --json records/sampling/speed_0.5b.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

SETTINGS = ("fp32", "static", "bf16", "int8", "int8+static", "int8pc+static", "int8pc-head+static", "bf16+static",
            "compile")


def _load(name: str, setting: str):
    import torch

    from endorm.models import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(name, "bfloat16" if "bf16" in setting else "float32", "cpu")
    model.eval()
    if "int8pc" in setting:  # per-output-channel weight scales; "-head": the output layer stays float32
        from endorm.mathx.generate import make_sampler

        model = make_sampler(model, "int8" if "-head" in setting else "int8-all")
    elif "int8" in setting:  # torch's default: one scale per weight tensor
        model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    if setting == "compile":
        model.forward = torch.compile(model.forward, dynamic=False)
    return model, tok


def _generate(model, tok, prompts: list[str], batch_size: int, max_new_tokens: int, setting: str):
    """Greedy completions' token ids (EOS and what follows removed) and the wall time."""
    import torch

    tok.padding_side = "left"
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    eos = {tok.eos_token_id, *([model.generation_config.eos_token_id] if isinstance(
        model.generation_config.eos_token_id, int) else model.generation_config.eos_token_id or [])}
    outs: list[list[int]] = []
    t0 = time.perf_counter()
    for i in range(0, len(prompts), batch_size):
        enc = tok(prompts[i : i + batch_size], return_tensors="pt", padding=True, add_special_tokens=False)
        kw = dict(max_new_tokens=max_new_tokens, do_sample=False, temperature=None, top_p=None, top_k=None,
                  pad_token_id=tok.pad_token_id)
        if "static" in setting or setting == "compile":
            kw["cache_implementation"] = "static"
        with torch.inference_mode():
            gen = model.generate(**enc, **kw)
        for row in gen[:, enc["input_ids"].shape[1] :].tolist():
            cut = next((j for j, t in enumerate(row) if t in eos), None)
            outs.append(row[: cut + 1] if cut is not None else row)
    return outs, time.perf_counter() - t0


def _mean_kl(ref, model, tok, prompts: list[str], completions: list[list[int]]) -> float:
    """Mean over completion tokens of KL(pi_ref(.|s_t) || pi_model(.|s_t)), teacher-forced on ``completions``."""
    import torch

    total, n = 0.0, 0
    for p, c in zip(prompts, completions, strict=True):
        ids = tok(p, add_special_tokens=False)["input_ids"]
        x = torch.tensor([ids + c])
        with torch.inference_mode():
            a = torch.log_softmax(ref(x).logits[0, len(ids) - 1 : -1].float(), -1)  # [n, V]
            b = torch.log_softmax(model(x).logits[0, len(ids) - 1 : -1].float(), -1)  # [n, V]
        total += float((a.exp() * (a - b)).sum(-1).sum())
        n += len(c)
    return round(total / max(n, 1), 5)


def _first_diff(a: list[int], b: list[int]) -> int | None:
    for j, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return j
    return None if len(a) == len(b) else min(len(a), len(b))


def main(argv: list[str] | None = None) -> int:
    import torch

    from endorm.mathx.data import load_benchmark
    from endorm.mathx.generate import build_prompt

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--settings", nargs="+", default=["fp32", "static", "bf16", "int8"], choices=SETTINGS)
    ap.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 8, 16])
    ap.add_argument("--prompts", type=int, default=16, help="seeded GSM8K test problems")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    ap.add_argument("--kl", action="store_true", help="also the per-token KL from fp32 (needs fp32 first)")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    problems = load_benchmark("gsm8k", limit=a.prompts, seed=1)
    rows, reference = [], {}
    ref_model = None
    for setting in a.settings:
        model, tok = _load(a.model, setting)
        prompts = [build_prompt(tok, p.question, "boxed") for p in problems]
        # warm-up (lazy kernel initialisation; for compile, the compilation itself): not timed
        _generate(model, tok, prompts[: max(a.batch_sizes)], max(a.batch_sizes), 8, setting)
        for bs in a.batch_sizes:
            outs, secs = _generate(model, tok, prompts, bs, a.max_new_tokens, setting)
            n_tok = sum(len(o) for o in outs)
            row = {"setting": setting, "batch_size": bs, "new_tokens": n_tok, "seconds": round(secs, 2),
                   "tokens_per_s": round(n_tok / secs, 2)}
            if setting == "fp32":
                reference[bs] = outs
            ref = reference.get(bs)
            if ref is not None:
                diffs = [_first_diff(o, r) for o, r in zip(outs, ref, strict=True)]
                row["identical_to_fp32"] = sum(d is None for d in diffs) / len(diffs)
                changed = [d for d in diffs if d is not None]
                row["mean_first_diff_token"] = round(sum(changed) / len(changed), 1) if changed else None
            if "fp32" in reference and bs != 1 and 1 in reference and setting == "fp32":
                same = sum(o == r for o, r in zip(outs, reference[1], strict=True)) / len(outs)
                row["identical_to_batch1"] = same
            rows.append(row)
            print(json.dumps(row), flush=True)
        if a.kl and setting != "fp32" and ref_model is not None:
            kl = _mean_kl(ref_model, model, tok, prompts, reference[max(reference)])
            for r in rows:
                if r["setting"] == setting:
                    r["kl_from_fp32"] = kl
            print(json.dumps({"setting": setting, "kl_from_fp32": kl}), flush=True)
        if setting == "fp32" and a.kl:
            ref_model = model
        del model
    base = {r["batch_size"]: r["tokens_per_s"] for r in rows if r["setting"] == "fp32"}
    print(f"\n{'setting':<9} {'batch':>5} {'tok/s':>8} {'x fp32':>7} {'identical':>9}")
    for r in rows:
        ratio = r["tokens_per_s"] / base[r["batch_size"]] if r["batch_size"] in base else float("nan")
        ident = r.get("identical_to_fp32")
        print(f"{r['setting']:<9} {r['batch_size']:>5} {r['tokens_per_s']:>8.1f} {ratio:>7.2f} "
              f"{'' if ident is None else f'{100 * ident:.0f}%':>9}")
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps({
            "command": "python benchmarks/sampling_speed.py " + " ".join(argv or __import__("sys").argv[1:]),
            "model": a.model, "threads": a.threads, "prompts": a.prompts, "max_new_tokens": a.max_new_tokens,
            "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
