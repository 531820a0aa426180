"""Faster GRPO rollouts on a CPU: sample from a float32, bfloat16 or int8 copy of the current policy.

On a CPU the rollouts are most of a GRPO step (benchmarks/sampling_speed.py). ``rollout_trainer_class``
returns a subclass of TRL's GRPOTrainer whose plain-transformers generation path samples from a copy of the
policy with LoRA merged in, made once and refreshed in place each optimizer step (``refresh_copy``):
``float32`` keeps the copy in float32 (the policy's own distribution, without the unmerged adapter's extra
matmuls); ``bf16`` casts it to bfloat16 (2.5x the tokens/s of float32 on a CPU with AVX-512 BF16; 0.0002
nats/token from float32 on Qwen2.5-Coder-0.5B); ``auto`` takes the bf16 copy on any CPU and TRL's own generation
on a GPU (``resolve_rollout_sampler``). On an AVX2-only CPU a 64-token benchmark had float32 ahead (bf16 0.71x),
but in a real GRPO step of the 0.5B model (448-token static cache) float32 was the slower: 542 s against 484 s
for the same completions (docs/RESULTS.md), so auto does not switch on the CPU's flags;
``int8`` quantises every ``nn.Linear`` but the output layer (one weight scale per output channel, dynamic
activation scales), is rebuilt each step, and uses a static KV cache (0.27-0.35 nats/token). Everything else
(rewards, reference and policy log-probabilities, the loss) is TRL's, in float32.

What bf16 and int8 change: the rollouts come from a slightly different policy than the one being trained (the
per-token KL between the two is measured by ``benchmarks/sampling_speed.py --kl``). TRL treats them as
on-policy, as it does vLLM's rollouts when its importance-sampling correction is off; with one update per
batch (``num_iterations=1``) the ratio in the loss is 1 either way.
"""

from __future__ import annotations

import copy
from typing import Any

__all__ = ["ROLLOUT_SAMPLERS", "cpu_has_bf16", "refresh_copy", "resolve_rollout_sampler", "rollout_copy",
           "rollout_trainer_class"]

ROLLOUT_SAMPLERS = ("policy", "float32", "bf16", "int8", "auto")
COPY_KINDS = ("float32", "bf16", "int8")


def cpu_has_bf16(cpuinfo: str | None = None) -> bool:
    """Whether the CPU has bfloat16 matrix instructions (AVX-512 BF16 or AMX), read from ``/proc/cpuinfo``'s
    flags (or the given text); False where that file does not exist. Recorded with each ``endorm train`` call:
    step times differ by about 1.8x between the two kinds of CPU."""
    if cpuinfo is None:
        try:
            cpuinfo = open("/proc/cpuinfo").read()
        except OSError:
            return False
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def resolve_rollout_sampler(kind: str, device: str = "cpu") -> str:
    """``kind`` itself, or for ``auto`` the fastest sampler measured in a GRPO step that keeps the rollouts
    on-policy to 0.0002 nats/token: TRL's own generation on a GPU (``device`` starting with cuda), a bf16 copy on
    a CPU, with or without bfloat16 instructions."""
    if kind not in ROLLOUT_SAMPLERS:
        raise ValueError(f"rollout sampler: unknown {kind!r}; use one of {', '.join(ROLLOUT_SAMPLERS)}")
    if kind != "auto":
        return kind
    if device.startswith("cuda"):
        return "policy"
    return "bf16"


def rollout_copy(model: Any, kind: str) -> Any:
    """An inference copy of ``model`` (a PeftModel is merged first, in the copy) for sampling, converted as
    ``math-eval --sampler`` converts its sampler (``endorm.mathx.generate.make_sampler``): kept in float32
    (``float32``), cast to bfloat16 (``bf16``) or with its ``nn.Linear`` layers but the output layer in int8
    (``int8``)."""
    from endorm.mathx.generate import make_sampler

    if kind not in COPY_KINDS:
        raise ValueError(f"rollout copy: unknown {kind!r}; use {', '.join(COPY_KINDS)}")
    src = copy.deepcopy(model)
    if hasattr(src, "merge_and_unload"):  # peft: merge into the copy, leave the training model alone
        src = src.merge_and_unload()
    return make_sampler(src.eval(), kind, inplace=True)


def refresh_copy(copy_: Any, model: Any) -> Any:
    """Write ``model``'s current weights (a PeftModel's LoRA merged) into ``copy_``, a float32 or bf16 copy from
    ``rollout_copy``, in place, and return it: the copy a fresh ``rollout_copy`` would give, without allocating
    a new model each step (the copy's tensors keep their storage; only each LoRA layer's merged weight is a
    temporary). Raises KeyError when the two do not match name for name (e.g. peft's ``modules_to_save``) and
    NotImplementedError for DoRA, whose merge is not W + BA; the caller then builds a new copy."""
    import torch

    dst = copy_.state_dict()  # detached views of the copy's own tensors: copy_() writes into the model
    if hasattr(model, "get_base_model") and hasattr(model, "active_adapters"):
        from peft.tuners.lora import LoraLayer

        base = model.get_base_model()
        adapters = list(model.active_adapters)
        lora = {name: m for name, m in base.named_modules() if isinstance(m, LoraLayer)}
        if any(m.use_dora.get(a, False) for m in lora.values() for a in adapters):
            raise NotImplementedError("refresh_copy: DoRA adapters are merged by rollout_copy only")
    else:
        base, adapters, lora = model, [], {}
    written = set()
    with torch.no_grad():
        for key, t in base.state_dict().items():
            if ".lora_" in key:  # the adapter's own factors, merged below
                continue
            name = key.replace(".base_layer.", ".")  # a LoRA layer's wrapped nn.Linear has the plain name merged
            module = name.rpartition(".")[0]
            if module in lora and key.endswith("base_layer.weight"):
                for a in adapters:
                    if a in lora[module].lora_A:
                        t = t + lora[module].get_delta_weight(a)  # W + scaling * B A, as peft's merge
            dst[name].copy_(t)  # KeyError when the layouts differ
            written.add(name)
    if missing := set(dst) - written:
        raise KeyError(f"refresh_copy: the copy has tensors the model does not: {sorted(missing)[:3]}")
    return copy_


def rollout_trainer_class(sampler: str) -> type:
    """TRL's GRPOTrainer, or its subclass that samples rollouts from ``rollout_copy(policy, sampler)``."""
    from trl import GRPOTrainer

    if sampler == "policy":
        return GRPOTrainer
    if sampler not in COPY_KINDS:
        raise ValueError(f"rollout sampler: unknown {sampler!r}; use policy or one of {', '.join(COPY_KINDS)} "
                         "(resolve auto first: resolve_rollout_sampler)")

    class CopyRolloutGRPOTrainer(GRPOTrainer):
        _sampler: Any = None
        _sampler_step: int = -1

        def _rollout_model(self) -> Any:
            step = self.state.global_step
            if self._sampler is None or self._sampler_step != step:
                policy = self.accelerator.unwrap_model(self.model)
                if self._sampler is not None and sampler != "int8":
                    try:  # the same copy, new weights: no 1-2 GB allocation per step
                        refresh_copy(self._sampler, policy)
                        self._sampler_step = step
                        return self._sampler
                    except (KeyError, NotImplementedError):
                        pass
                self._sampler = None  # free the old copy before building the new one
                self._sampler = rollout_copy(policy, sampler)
                self._sampler_step = step
            return self._sampler

        def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations,
                                  has_tool_images=False):
            import torch
            from trl.trainer.utils import pad

            if self.use_vllm or self.use_transformers_continuous_batching or images or multimodal_fields:
                return super()._generate_single_turn(prompt_ids, images, multimodal_fields, num_generations,
                                                     has_tool_images)
            tensors = [torch.tensor(ids) for ids in prompt_ids]
            ids = pad(tensors, padding_value=self._tokenizer.pad_token_id, padding_side="left")  # [B, P]
            attn = pad([torch.ones_like(t) for t in tensors], padding_value=0, padding_side="left")  # [B, P]
            gen_cfg = copy.deepcopy(self.generation_config)
            if sampler == "int8":  # measured faster for int8; bf16 keeps the configured cache
                gen_cfg.cache_implementation = "static"
            with torch.no_grad():
                out = self._rollout_model().generate(input_ids=ids, attention_mask=attn, generation_config=gen_cfg)
            completions = out[:, ids.shape[1] :]  # [B, C]
            eos = torch.isin(completions, torch.tensor(self.eos_token_ids))  # [B, C]
            result = []
            for row, hit in zip(completions.tolist(), eos.tolist(), strict=True):
                cut = hit.index(True) + 1 if True in hit else len(row)  # keep the end token, drop what follows
                result.append(row[:cut])
            return result, None

    return CopyRolloutGRPOTrainer
