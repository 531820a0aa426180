"""The records/ convention (records/README.md): study.sh copies a step's summary JSON there unchanged."""

import json
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_study_records_copies_the_summary_json(tmp_path):
    step = tmp_path / "runs" / "rm-smollm-plain"
    step.mkdir(parents=True)
    (step / "results.json").write_text(json.dumps({"command": "endorm eval --limit 3", "methods": {}}))
    (step / "variants.json").write_text(json.dumps({"command": "endorm eval --limit 3", "variants": {}}))
    (step / "examples.jsonl").write_text("{}\n")  # bulky per-example data stays in runs/
    subprocess.run(["bash", str(ROOT / "benchmarks" / "study.sh"), "records", "rm-smollm-plain"], cwd=tmp_path,
                   env={"OUT": str(tmp_path / "runs"), "PATH": "/usr/bin:/bin"}, check=True, capture_output=True)
    got = tmp_path / "records" / "study" / "rm-smollm-plain"
    assert sorted(p.name for p in got.iterdir()) == ["results.json", "variants.json"]
    for name in ("results.json", "variants.json"):
        assert (got / name).read_bytes() == (step / name).read_bytes()
