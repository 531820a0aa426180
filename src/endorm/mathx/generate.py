"""Batched generation and scoring for math evaluation: greedy (accuracy) or sampled (pass@k).

pass@k uses the unbiased estimator of Chen et al. (2021): 1 - C(n-c, k) / C(n, k) over n samples with
c correct. Accuracy comes with a Wilson score interval, which stays inside [0, 1] at the few-percent
accuracies of small models (the normal approximation does not).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence

from endorm.mathx.data import MathProblem
from endorm.mathx.grading import extract_answer, grade_verdict

__all__ = [
    "PROMPT_TEMPLATES",
    "build_prompt",
    "generate_texts",
    "sample_completions",
    "make_sampler",
    "pass_at_k",
    "wilson_interval",
    "evaluate_problems",
]

# suffixes appended to the question (the "boxed" one is the Qwen2.5-Math evaluation's CoT instruction)
PROMPT_TEMPLATES: dict[str, str] = {
    "boxed": "{question}\nPlease reason step by step, and put your final answer within \\boxed{{}}.",
    "gsm8k": "{question}\nSolve it step by step and end with the line '#### <number>'.",
    "short": "{question}\nAnswer briefly: show the key calculation, then finish with 'The answer is <number>.'",
    "plain": "{question}",
}


def build_prompt(tokenizer, question: str, template: str = "boxed", system: str | None = None) -> str:
    """The text fed to the model: the chat template with a generation prompt when the tokenizer has one."""
    if template not in PROMPT_TEMPLATES:
        raise ValueError(f"unknown prompt template {template!r}: use one of {', '.join(PROMPT_TEMPLATES)}")
    user = PROMPT_TEMPLATES[template].format(question=question)
    if getattr(tokenizer, "chat_template", None):
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return (f"{system}\n\n" if system else "") + f"Question: {user}\nAnswer:"


def _batches(items: Sequence, size: int) -> Iterator[Sequence]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def end_ids_of(model, tokenizer) -> set[int]:
    """Token ids that end a completion: the tokenizer's EOS and the model's generation EOS ids."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    gen = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update([gen] if isinstance(gen, int) else (gen or []))
    return ids


def sample_completions(
    model,
    tokenizer,
    prompts: Sequence[str],
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    top_p: float = 1.0,
    num_samples: int = 1,
    batch_size: int = 8,
    seed: int = 0,
    cache_implementation: str | None = None,
    engine: str = "generate",
) -> list[list[dict]]:
    """``num_samples`` completions per prompt (greedy when ``temperature`` is 0; sampling uses the full
    distribution at ``temperature`` with nucleus ``top_p``: no top-k, no repetition penalty).

    ``engine``: ``generate`` runs left-padded batches of ``batch_size`` sequences through ``model.generate``
    (``cache_implementation`` is passed on, e.g. ``"static"``); ``continuous`` hands every prompt to
    transformers' continuous batching (``model.generate_batch``): a finished sequence's slot takes the next
    one at once, instead of idling until the longest sequence of its batch ends.

    Each completion is ``{"text", "n_tokens", "end_token"}``: ``n_tokens`` counts the generated tokens through
    the end token, ``end_token`` is the id that ended it, or None when it was cut at ``max_new_tokens``.
    """
    import torch

    if temperature <= 0 and num_samples > 1:
        raise ValueError("num_samples > 1 needs temperature > 0 (greedy decoding gives identical samples)")
    if engine == "continuous":
        return _continuous(model, tokenizer, prompts, max_new_tokens, temperature, top_p, num_samples, seed)
    if engine != "generate":
        raise ValueError(f"unknown generation engine {engine!r}; use generate or continuous")
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    device = next(model.parameters()).device
    ends = end_ids_of(model, tokenizer)
    torch.manual_seed(seed)
    out: list[list[dict]] = []
    try:
        for chunk in _batches(list(prompts), max(1, batch_size // max(1, num_samples))):
            enc = tokenizer(list(chunk), return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            kwargs = dict(max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id)
            if cache_implementation:  # "static": a preallocated KV cache, much faster on a CPU
                kwargs["cache_implementation"] = cache_implementation
            if temperature > 0:
                kwargs.update(do_sample=True, temperature=temperature, top_p=top_p, top_k=0,
                              repetition_penalty=1.0, num_return_sequences=num_samples)
            else:
                kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None, repetition_penalty=1.0)
            with torch.inference_mode():
                gen = model.generate(**enc, **kwargs)
            rows = [_completion(tokenizer, ids, ends) for ids in gen[:, enc["input_ids"].shape[1] :].tolist()]
            for i in range(len(chunk)):
                out.append(rows[i * num_samples : (i + 1) * num_samples])
    finally:
        tokenizer.padding_side = old_side
    return out


def _completion(tokenizer, ids: list[int], ends: set[int]) -> dict:
    """A generated id list as ``{"text", "n_tokens", "end_token"}``; what follows the first end token is padding."""
    cut = next((j for j, t in enumerate(ids) if t in ends), None)
    body = ids if cut is None else ids[:cut]
    return {"text": tokenizer.decode(body, skip_special_tokens=True), "n_tokens": len(body) + (cut is not None),
            "end_token": None if cut is None else ids[cut]}


def _continuous(model, tokenizer, prompts: Sequence[str], max_new_tokens: int, temperature: float, top_p: float,
                num_samples: int, seed: int) -> list[list[dict]]:
    """``sample_completions`` through transformers' continuous batching; every request must come back whole."""
    import torch
    from transformers import GenerationConfig
    from transformers.generation.configuration_utils import ContinuousBatchingConfig

    ends = end_ids_of(model, tokenizer)
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    sampling = dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=0) if temperature > 0 else \
        dict(do_sample=False)
    cfg = GenerationConfig(max_new_tokens=max_new_tokens, eos_token_id=sorted(ends), repetition_penalty=1.0,
                           pad_token_id=tokenizer.pad_token_id, num_return_sequences=num_samples, **sampling)
    torch.manual_seed(seed)
    with torch.inference_mode():
        # sized to this call's requests: by default the paged cache takes most of the free memory, and on a CPU
        # attention masks of [max_batch_tokens, cache tokens] floats are the other large allocation
        need = len(ids) * num_samples * (max(len(i) for i in ids) + max_new_tokens)
        cb = ContinuousBatchingConfig(seed=seed, num_blocks=-(-need // 256) + 1, max_batch_tokens=1024)
        results = list(model.generate_batch(ids, generation_config=cfg, progress_bar=False,
                                            continuous_batching_config=cb).values())
    # generate_batch logs a failed or missing request and returns the rest: that must not pass silently
    bad = [r.request_id for r in results if r.error is not None]
    if bad or len(results) != len(ids) * num_samples:
        raise RuntimeError(f"continuous batching returned {len(results)} of {len(ids) * num_samples} completions"
                           + (f"; failed: {', '.join(bad[:5])}" if bad else "") + " (see the log above)")
    rows = [_completion(tokenizer, list(r.generated_tokens), ends) for r in results]
    return [rows[i * num_samples : (i + 1) * num_samples] for i in range(len(ids))]


def generate_texts(model, tokenizer, prompts: Sequence[str], **kwargs) -> list[list[str]]:
    """``sample_completions``' texts only (same arguments)."""
    return [[c["text"] for c in cs] for cs in sample_completions(model, tokenizer, prompts, **kwargs)]


SAMPLERS = ("float32", "bf16", "int8", "int8-all")


def make_sampler(model, kind: str = "float32", inplace: bool = False):
    """The model that generates: the model itself (``float32``), a bfloat16 copy (``bf16``), or a copy whose
    ``nn.Linear`` layers run with int8 weights (one scale per output channel) and dynamically quantised
    activations: ``int8`` keeps the output layer (the logits) in float32, ``int8-all`` quantises it too.
    The copies are faster on a CPU and change the sampled distribution, bf16 by little (2.5x the tokens/s
    of float32 at 0.0002 nats/token on the 0.5B model), int8 by more (0.27-0.35 nats/token);
    benchmarks/sampling_speed.py --kl measures it. Scoring always uses ``model`` itself, unless ``inplace``
    (the caller's own copy is converted, e.g. ``endorm.rl.rollout``)."""
    import copy

    import torch

    if kind == "float32":
        return model
    if kind not in SAMPLERS:
        raise ValueError(f"unknown sampler {kind!r}; use one of {', '.join(SAMPLERS)}")
    target = model if inplace else copy.deepcopy(model)
    if kind == "bf16":
        return target.to(torch.bfloat16)
    return quantize_linear_layers(target, keep_head=kind == "int8")


def quantize_linear_layers(model, keep_head: bool = True):
    """``model`` (changed in place and returned) with its ``nn.Linear`` layers as dynamic int8 layers, one
    weight scale per output channel; ``keep_head`` leaves the output layer in float32."""
    import warnings

    import torch
    from torch.ao.quantization import per_channel_dynamic_qconfig

    head = model.get_output_embeddings() if keep_head else None
    spec = {name: per_channel_dynamic_qconfig for name, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and m is not head}
    with warnings.catch_warnings():  # torch.ao's deprecation notice, printed once per layer
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(model, spec, dtype=torch.qint8, inplace=True)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples of which ``c`` are correct."""
    if not 0 <= c <= n or k < 1:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and k >= 1 (got n={n}, c={c}, k={k})")
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples per problem (got {n})")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (95% for z=1.96)."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def evaluate_problems(
    model,
    tokenizer,
    problems: Sequence[MathProblem],
    template: str = "boxed",
    system: str | None = None,
    batch_size: int = 8,
    sampler=None,
    **gen_kwargs,
) -> Iterable[dict]:
    """Yield one record per problem (question, answer, completions, extracted answers, correctness and the
    grader that decided each, token counts, end tokens), batch by batch so callers can write them as they
    come. Correctness is ``grade_verdict``'s (math-verify's extraction and comparison); ``predictions`` are
    endorm's own extraction, for reading. ``sampler`` (default ``model``) is the model that generates, e.g.
    an int8 copy (``make_sampler``)."""
    seed = gen_kwargs.pop("seed", 0)
    for start in range(0, len(problems), batch_size):
        chunk = problems[start : start + batch_size]
        prompts = [build_prompt(tokenizer, p.question, template, system) for p in chunk]
        # one seed per chunk (seed + its first problem's index): chunks do not repeat one random stream, and
        # a run resumed at a chunk boundary (seed + problems done) samples what the whole run would have
        comps = sample_completions(sampler or model, tokenizer, prompts, batch_size=batch_size, seed=seed + start,
                                   **gen_kwargs)
        for p, cs in zip(chunk, comps, strict=True):
            texts = [c["text"] for c in cs]
            preds = [extract_answer(t) for t in texts]
            verdicts = [grade_verdict(t, p.answer) for t in texts]
            yield {
                "id": p.id,
                "source": p.source,
                "answer": p.answer,
                "completions": texts,
                "predictions": preds,
                "correct": [v.correct for v in verdicts],
                "graders": [v.grader for v in verdicts],
                "n_tokens": [c["n_tokens"] for c in cs],
                "end_token": [c["end_token"] for c in cs],
            }
