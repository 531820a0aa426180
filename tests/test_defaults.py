"""One default reward everywhere: with no flags, the Python API, `endorm score`, the server, the TRL and verl
adapters, `endorm eval` and `endorm train` all use RewardConfig's defaults and give the same number."""

import json
from dataclasses import fields

import pytest

from endorm import EndogenousRewardModel
from endorm.cli import main
from endorm.reward_model import RewardConfig

PROMPT, RESPONSE = "What is the capital of France?", "The capital of France is Paris."
FORM = ("aggregation", "gamma", "contrast", "alpha", "neutral_prompt")


def test_config_defaults_are_shared():
    from endorm.commands.score import Config as ScoreConfig
    from endorm.eval.cli import Config as EvalConfig
    from endorm.eval.cli import primary_variant
    from endorm.rl.config import TrainConfig
    from endorm.serve.cli import Config as ServeConfig

    base = RewardConfig()
    for cls in (ScoreConfig, ServeConfig):
        assert all(getattr(cls(), f) == getattr(base, f) for f in FORM), cls
    v = primary_variant(EvalConfig())
    assert (v.aggregation, v.gamma, v.contrast) == (base.aggregation, base.gamma, base.contrast)
    t = TrainConfig()
    assert (t.aggregation, t.gamma, t.contrast, t.alpha) == (base.aggregation, base.gamma, base.contrast, base.alpha)
    # every RewardConfig field reaches the model from the score and serve commands
    assert {f.name for f in fields(RewardConfig)} <= {f.name for f in fields(ScoreConfig)}


def test_every_entry_point_gives_the_same_number(tmp_path, tiny_model_dir):
    from fastapi.testclient import TestClient

    from endorm.integrations.trl import EndogenousRewardFunction
    from endorm.integrations.verl import EndormScorer
    from endorm.serve.cli import Config as ServeConfig
    from endorm.serve.cli import build

    model = str(tiny_model_dir)
    api = EndogenousRewardModel.from_pretrained(model).score([PROMPT], [RESPONSE])[0]

    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    inp.write_text(json.dumps({"prompt": PROMPT, "response": RESPONSE}) + "\n")
    assert main(["score", "--input", str(inp), "--output", str(out), "--model", model, "--show", "0"]) == 0
    cli = json.loads(out.read_text())["reward"]

    app, _ = build(ServeConfig(model=model))
    with TestClient(app) as client:
        r = client.post("/score", json={"rows": [{"prompt": PROMPT, "response": RESPONSE}]})
        assert r.status_code == 200, r.text
        served = r.json()["rewards"][0]

    trl = EndogenousRewardFunction(model_name_or_path=model)([PROMPT], [RESPONSE])[0]
    verl = EndormScorer(model=model).score([{"prompt": PROMPT, "response": RESPONSE}])[0][0]

    for name, got in (("endorm score", cli), ("server", served), ("TRL", trl), ("verl", verl)):
        assert got == pytest.approx(api, abs=1e-5), name
    # and the default is what the docs name as the default (docs/CORE.md)
    c = RewardConfig()
    rm = EndogenousRewardModel.from_pretrained(model, aggregation=c.aggregation, gamma=c.gamma, contrast=c.contrast)
    assert rm.score([PROMPT], [RESPONSE])[0] == pytest.approx(api, abs=1e-6)


@pytest.mark.parametrize("contrast", ["prompt", "system"])
def test_contrast_is_the_same_everywhere(tmp_path, tiny_model_dir, contrast):
    from fastapi.testclient import TestClient

    from endorm.serve.cli import Config as ServeConfig
    from endorm.serve.cli import build

    model = str(tiny_model_dir)
    row = {"prompt": PROMPT, "response": RESPONSE, "system": "Be brief."}
    rm = EndogenousRewardModel.from_pretrained(model, contrast=contrast, aggregation="discounted", gamma=0.9)
    api = rm.score([PROMPT], [RESPONSE], systems=["Be brief."])[0]
    plain = rm.with_config(contrast="none")
    expected = plain.score([PROMPT], [RESPONSE], systems=["Be brief."])[0] - (
        plain.score(["Write a response."], [RESPONSE], systems=["Be brief."])[0] if contrast == "prompt"
        else plain.score([PROMPT], [RESPONSE])[0])
    assert api == pytest.approx(expected, abs=1e-5)

    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    inp.write_text(json.dumps(row) + "\n")
    flags = ["--contrast", contrast, "--aggregation", "discounted", "--gamma", "0.9"]
    assert main(["score", "--input", str(inp), "--output", str(out), "--model", model, "--show", "0",
                 "--tokens", *flags]) == 0
    got = json.loads(out.read_text())
    assert got["reward"] == pytest.approx(api, abs=1e-5)
    assert got["token_rewards"]["total"] == pytest.approx(api, abs=1e-5)
    assert set(got["token_stats"]) == {"plain", contrast}

    app, _ = build(ServeConfig(model=model, contrast=contrast, aggregation="discounted", gamma=0.9))
    with TestClient(app) as client:
        r = client.post("/score", json={"rows": [row], "tokens": True})
        assert r.status_code == 200, r.text
        assert r.json()["rewards"][0] == pytest.approx(api, abs=1e-5)
        assert r.json()["token_rewards"][0]["total"] == pytest.approx(api, abs=1e-5)


def test_score_tokens_sidecar_reaggregates_to_direct_scoring(tmp_path, tiny_model_dir):
    from endorm import rewards as R
    from endorm.commands.score import stats_path
    from endorm.stats_file import StatsReader

    model = str(tiny_model_dir)
    rows = [{"prompt": f"Question {k}?", "response": "Answer " * (k + 1)} for k in range(5)]
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    inp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["score", "--input", str(inp), "--output", str(out), "--model", model, "--show", "0",
                 "--tokens"]) == 0
    reader = StatsReader(stats_path(out))
    scored = [json.loads(x) for x in out.read_text().splitlines()]
    rm = EndogenousRewardModel.from_pretrained(model)
    for agg, gamma in (("sum", 1.0), ("mean", 1.0), ("discounted", 0.9), ("logprob", 0.8)):
        direct = rm.with_config(aggregation=agg, gamma=gamma).score([r["prompt"] for r in rows],
                                                                   [r["response"] for r in rows])
        again = [float(R.outcome(*reader.get(s["token_stats"]["plain"], s["token_stats_id"]), agg, gamma, 1.0)[1])
                 for s in scored]
        assert again == pytest.approx(direct, abs=1e-5), agg
