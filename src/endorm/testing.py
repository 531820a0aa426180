"""Tiny, offline models for tests and benchmarks: a random Llama from a config and a ChatML tokenizer
trained in-process (byte-level BPE), so nothing is downloaded."""

from __future__ import annotations

import functools

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_CORPUS = [
    "What is the capital of France? The capital of France is Paris.",
    "Berlin is the capital of Germany. Madrid is the capital of Spain.",
    "def add(a, b):\n    return a + b\n",
    "I cannot help with that request, but here is some safe information instead.",
    "The answer is 42. Let us think step by step: 6 times 7 equals 42.",
    "Write a short poem about the sea, the wind and the rain.",
    "Sure! Here is a detailed answer with **markdown** and a list:\n- one\n- two\n",
]


@functools.lru_cache(maxsize=4)
def tiny_tokenizer(vocab_size: int = 320, chat_template: bool = True):
    """A byte-level BPE tokenizer with ChatML special tokens; any text is encodable."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token="<|im_end|>" if chat_template else "<|endoftext|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    if chat_template:
        fast.chat_template = CHATML_TEMPLATE
    return fast


def tiny_model_and_tokenizer(seed: int = 0, chat_template: bool = True, **config_overrides):
    """A 2-layer random LlamaForCausalLM (float32, eval mode) and its in-process tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = tiny_tokenizer(chat_template=chat_template)
    cfg = dict(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=None,
    )
    cfg.update(config_overrides)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**cfg)).float().eval()
    # random init is tiny; widen the logits so rewards differ visibly between texts
    with torch.no_grad():
        model.lm_head.weight.mul_(20.0)
    return model, tok
