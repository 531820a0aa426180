"""GRPO with LoRA (peft) and int8 rollouts (endorm.rl.rollout) on the tiny model built in-process."""

from __future__ import annotations

import json

import pytest
import torch

from endorm import EndogenousRewardModel
from endorm.rl.config import TrainConfig
from endorm.testing import tiny_model_and_tokenizer

ROWS = [
    {"question": "What is 6 times 7?", "answer": "6*7=42\n#### 42"},
    {"question": "What is 2 plus 3?", "answer": "2+3=5\n#### 5"},
]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    model, tok = tiny_model_and_tokenizer(seed=0)
    d = tmp_path_factory.mktemp("tiny-lora")
    model.save_pretrained(d)
    tok.save_pretrained(d)
    data = d / "gsm8k_tiny.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return d, data


def test_int8_copy_merges_lora_and_leaves_the_policy_alone():
    from peft import LoraConfig, get_peft_model

    from endorm.rl.rollout import rollout_copy

    model, _ = tiny_model_and_tokenizer(seed=0)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    x = torch.tensor([[5, 9, 17, 33, 2]])
    with torch.no_grad():
        want = peft_model(x).logits
        q = rollout_copy(peft_model, "int8")
        got = q(x).logits
        without_lora = peft_model.get_base_model()
        with peft_model.disable_adapter():
            base = without_lora(x).logits
    assert isinstance(q.model.layers[0].self_attn.q_proj, torch.ao.nn.quantized.dynamic.Linear)
    # the copy carries the adapter (it is nearer the LoRA model than the base) and int8 moves logits only a little
    assert (got - want).abs().max() < (got - base).abs().max()
    assert (got - want).abs().max() < 0.05 * want.abs().max()
    # the training model still has its adapter, unmerged
    assert any("lora_A" in n for n, _ in peft_model.named_parameters())


def test_bf16_copy_merges_lora_and_leaves_the_policy_alone():
    from peft import LoraConfig, get_peft_model

    from endorm.rl.rollout import rollout_copy

    model, _ = tiny_model_and_tokenizer(seed=0)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    x = torch.tensor([[5, 9, 17, 33, 2]])
    with torch.no_grad():
        want = peft_model(x).logits
        c = rollout_copy(peft_model, "bf16")
        got = c(x).logits.float()
        with peft_model.disable_adapter():
            base = peft_model.get_base_model()(x).logits
    assert c.dtype == torch.bfloat16 and not any("lora" in n for n, _ in c.named_parameters())
    assert (got - want).abs().max() < (got - base).abs().max()
    assert next(peft_model.parameters()).dtype == torch.float32
    assert any("lora_A" in n for n, _ in peft_model.named_parameters())
    with pytest.raises(ValueError, match="unknown"):
        rollout_copy(peft_model, "fp8")


def test_float32_copy_is_the_merged_policy():
    from peft import LoraConfig, get_peft_model

    from endorm.rl.rollout import rollout_copy

    model, _ = tiny_model_and_tokenizer(seed=0)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    x = torch.tensor([[5, 9, 17, 33, 2]])
    with torch.no_grad():
        want = peft_model(x).logits
        c = rollout_copy(peft_model, "float32")
        got = c(x).logits
    assert c.dtype == torch.float32 and not any("lora" in n for n, _ in c.named_parameters())
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)  # merging changes nothing but rounding
    assert any("lora_A" in n for n, _ in peft_model.named_parameters())


@pytest.mark.parametrize("kind", ["float32", "bf16"])
def test_refresh_copy_writes_the_new_merged_weights_in_place(kind):
    from peft import LoraConfig, get_peft_model

    from endorm.rl.rollout import refresh_copy, rollout_copy

    model, _ = tiny_model_and_tokenizer(seed=0)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    c = rollout_copy(peft_model, kind)
    storage = c.model.layers[0].self_attn.q_proj.weight.data_ptr()
    with torch.no_grad():  # a training step moves the adapter
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.add_(0.5 * torch.randn_like(p))
    fresh = rollout_copy(peft_model, kind)
    assert refresh_copy(c, peft_model) is c
    assert c.model.layers[0].self_attn.q_proj.weight.data_ptr() == storage  # written in place
    for (name, got), (_, want) in zip(c.state_dict().items(), fresh.state_dict().items(), strict=True):
        assert torch.equal(got, want), name  # exactly the copy a new rollout_copy makes
    x = torch.tensor([[5, 9, 17, 33, 2]])
    with torch.no_grad():
        if kind == "float32":
            torch.testing.assert_close(c(x).logits, peft_model(x).logits, atol=1e-5, rtol=1e-5)
    # a copy whose layout differs from the model's is refused, not half-written silently
    other, _ = tiny_model_and_tokenizer(seed=0)
    other.register_buffer("extra", torch.zeros(1))
    with pytest.raises(KeyError, match="extra"):
        refresh_copy(other, peft_model)


CPUINFO = "processor\t: 0\nmodel name\t: Test CPU\nflags\t\t: fpu sse avx2 avx512f {extra}\n"


def test_auto_rollout_sampler_follows_the_cpu():
    from endorm.rl.rollout import cpu_has_bf16, resolve_rollout_sampler

    assert cpu_has_bf16(CPUINFO.format(extra="avx512_bf16"))
    assert cpu_has_bf16(CPUINFO.format(extra="amx_bf16 amx_tile"))
    assert not cpu_has_bf16(CPUINFO.format(extra="avx512vnni"))
    assert not cpu_has_bf16("")
    # bf16 on any CPU: a real GRPO step was faster with the bf16 copy on an AVX2-only CPU too
    assert resolve_rollout_sampler("auto", "cpu") == "bf16"
    assert resolve_rollout_sampler("float32", "cpu") == "float32"
    assert resolve_rollout_sampler("auto", "cuda:0") == "policy"
    assert resolve_rollout_sampler("int8", "cuda") == "int8"  # an explicit choice is kept
    with pytest.raises(ValueError, match="unknown"):
        resolve_rollout_sampler("fp8")


@pytest.mark.parametrize("sampler", ["int8", "bf16", "auto"])
def test_lora_grpo_with_copied_rollouts(tiny_dir, tmp_path, monkeypatch, sampler):
    pytest.importorskip("trl")
    import endorm.rl.rollout as rollout
    from endorm.rl.trainer import train

    calls = []
    real = rollout.rollout_copy
    monkeypatch.setattr(rollout, "rollout_copy", lambda m, k: calls.append(k) or real(m, k))
    refreshed = []
    real_refresh = rollout.refresh_copy
    monkeypatch.setattr(rollout, "refresh_copy", lambda c, m: refreshed.append(1) or real_refresh(c, m))
    model_dir, data = tiny_dir
    cfg = TrainConfig(reward="endogenous", dataset=str(data), output_dir=str(tmp_path / "run"), max_steps=2,
                      num_generations=2, per_device_train_batch_size=4, max_completion_length=8, learning_rate=1e-2,
                      save_steps=1000, seed=0, prompt_template="plain", lora_r=4, rollout_sampler=sampler)
    m, t = tiny_model_and_tokenizer(seed=0)
    final = train(cfg, model_path=str(model_dir), reward_model=EndogenousRewardModel.from_model(m, t))
    from endorm.rl.rollout import resolve_rollout_sampler

    used = resolve_rollout_sampler(sampler, "cpu")
    # int8 builds a new copy each optimizer step; float32 and bf16 build one and refresh it in place
    assert calls == ([used, used] if used == "int8" else [used])
    assert refreshed == ([] if used == "int8" else [1])
    runs = [json.loads(line) for line in (tmp_path / "run" / "invocations.jsonl").read_text().splitlines()]
    assert len(runs) == 1 and runs[0]["rollout_sampler"] == sampler and runs[0]["rollout_sampler_used"] == used
    assert runs[0]["resumed_from"] is None and runs[0]["threads"] >= 1
    assert (final / "adapter_config.json").is_file() and (final / "adapter_model.safetensors").is_file()
    from safetensors.torch import load_file

    weights = load_file(final / "adapter_model.safetensors")
    lora_b = [v for k, v in weights.items() if "lora_B" in k]
    assert lora_b and max(v.abs().max().item() for v in lora_b) > 0  # B starts at 0; training moved it
    assert not any("lora" not in k for k in weights)  # only the adapter is saved


def test_lora_config_validation():
    with pytest.raises(ValueError, match="lora_r"):
        TrainConfig(lora_r=-1)
    with pytest.raises(ValueError, match="rollout_sampler"):
        TrainConfig(rollout_sampler="fp8")
    from endorm.rl.trainer import lora_config

    assert lora_config(TrainConfig()) is None
    lc = lora_config(TrainConfig(lora_r=8, lora_target_modules="q_proj, v_proj"))
    assert lc.r == 8 and set(lc.target_modules) == {"q_proj", "v_proj"}


def test_an_adapter_dir_loads_as_its_merged_model(tiny_dir, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from endorm.models.loading import load_model_and_tokenizer

    model_dir, _ = tiny_dir
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir),
                                LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft_model.save_pretrained(tmp_path / "adapter")
    merged, tok = load_model_and_tokenizer(str(tmp_path / "adapter"))
    x = torch.tensor([[5, 9, 17, 33, 2]])
    with torch.no_grad():
        want = peft_model.eval()(x).logits
        got = merged(x).logits
        base = AutoModelForCausalLM.from_pretrained(model_dir)(x).logits
    assert (got - want).abs().max() < 1e-4 and (got - base).abs().max() > 1e-3
    assert tok.pad_token_id is not None


def test_adapter_base_maps_another_machines_cache_to_the_registry_name(tmp_path):
    from endorm.models.loading import adapter_base

    (tmp_path / "adapter_config.json").write_text(json.dumps(
        {"base_model_name_or_path": "/elsewhere/.cache/endorm/models/qwen2.5-coder-0.5b-instruct/hf-float32"}))
    assert adapter_base(tmp_path) == "qwen2.5-coder-0.5b-instruct"
    (tmp_path / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "/nowhere/else"}))
    assert adapter_base(tmp_path) == "/nowhere/else"
