"""One default reward everywhere, checked where users meet it.

The default form is the one docs/RESULTS.md's pre-registered rule chose: ``discounted`` with gamma = 0.93, no
contrast, alpha = 1. The expected rewards are computed here without endorm's scoring path: the tiny model's
logits from transformers, r_t from ``endorm.rewards``' pure functions and the discount written out, for rows on
which the default differs from every neighbouring form (checked first). With no form flags, every entry point
must give exactly those rewards: ``endorm score``, ``endorm eval`` (and its accuracy) and ``endorm serve``
(over HTTP, /score and OpenRLHF's /get_reward) as subprocesses; the Python API, the TRL reward function,
``endorm train``'s reward as ``build_trainer`` makes it from a default TrainConfig, and verl's
``compute_score`` (in process and against the server).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import fields
from pathlib import Path

import pytest
import torch

import endorm
from endorm import EndogenousRewardModel
from endorm import rewards as R
from endorm.chat import NEUTRAL_PROMPT, Example, encode
from endorm.cli import main
from endorm.reward_model import RewardConfig

GAMMA = 0.93  # the default's discount (docs/RESULTS.md); written here, not read from RewardConfig
TOL = 1e-4  # float32 scoring, batched and padded vs one row at a time
PROMPT = "What is the capital of France?"
# On the tiny model '!' tokens cost ~5 nats each and words ~10: the long '!' answers lose under sum and win
# under the discount, which caps a response's reach at ~1 / (1 - gamma) tokens.
RESPONSES = ["!" * 24, "The capital of France is Paris.", "Paris.", "!" * 16, "Paris" + "!" * 20, "!" * 12]
PAIRS = [(0, 1), (2, 3), (4, 5)]  # (chosen, rejected) indices into RESPONSES, for endorm eval
ROWS = [{"prompt": PROMPT, "response": r} for r in RESPONSES]


def token_terms(model, tok, prompt: str, response: str, alpha: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(r_t [n], log pi(a_t|s_t) [n]) of one response, from one unbatched forward pass."""
    enc = encode(tok, Example.from_pair(prompt, response))
    ids = torch.tensor([enc.input_ids])  # [1, T]
    with torch.no_grad():
        logits = model(input_ids=ids).logits  # [1, T, V]
    states, actions = logits[:, enc.prompt_len - 1 : -1], ids[:, enc.prompt_len :]  # [1, n, V], [1, n]
    logp = R.action_logprobs(states, actions, alpha)  # [1, n]
    values = R.soft_values(states, alpha)  # [1, n]
    r = R.token_rewards(logp, values, torch.ones_like(actions, dtype=torch.bool), alpha)  # [1, n]
    return r[0], logp[0]


def discounted(x: torch.Tensor, gamma: float) -> float:
    return sum(gamma**t * v for t, v in enumerate(x.tolist()))


@pytest.fixture(scope="module")
def forms(tiny_model_dir) -> dict[str, list[float]]:
    """Each form's reward of every row of ROWS: the default and its neighbours."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).float().eval()
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    out: dict[str, list[float]] = {}
    for resp in RESPONSES:
        r, logp = token_terms(model, tok, PROMPT, resp)
        r_neutral, _ = token_terms(model, tok, NEUTRAL_PROMPT, resp)
        r_alpha2, _ = token_terms(model, tok, PROMPT, resp, alpha=2.0)
        default = discounted(r, GAMMA)
        for name, value in (("default", default), ("sum", float(r.sum())), ("mean", float(r.mean())),
                            ("discounted@0.9", discounted(r, 0.9)), ("discounted@0.95", discounted(r, 0.95)),
                            ("logprob@0.93", discounted(logp, GAMMA)), ("alpha=2", discounted(r_alpha2, GAMMA)),
                            ("contrast=prompt", default - discounted(r_neutral, GAMMA))):
            out.setdefault(name, []).append(value)
    return out


def accuracy(scores: list[float]) -> float:
    return 100 * sum(scores[i] > scores[j] for i, j in PAIRS) / len(PAIRS)


def check(got: list[float], forms: dict[str, list[float]], where: str) -> None:
    assert got == pytest.approx(forms["default"], abs=TOL), where


def test_the_rows_tell_the_default_from_its_neighbours(forms):
    """Without this, the entry-point tests below could pass on a wrong form."""
    for name, values in forms.items():
        if name != "default":
            gap = max(abs(a - b) for a, b in zip(values, forms["default"], strict=True))
            assert gap > 1000 * TOL, name
    assert accuracy(forms["default"]) != accuracy(forms["sum"])


# ---- subprocesses --------------------------------------------------------------------------------------

def _env() -> dict[str, str]:
    """The test's own endorm sources first; no server or key from the caller's shell."""
    src = str(Path(endorm.__file__).resolve().parents[1])
    env = {k: v for k, v in os.environ.items() if k not in ("ENDORM_API_KEY", "ENDORM_SERVER_URL")}
    env["PYTHONPATH"] = os.pathsep.join([src, *filter(None, [os.environ.get("PYTHONPATH")])])
    env["OMP_NUM_THREADS"] = "1"
    return env


def endorm_cli(*args: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "endorm", *args], env=_env(), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_endorm_score(tmp_path, tiny_model_dir, forms):
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    inp.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    endorm_cli("score", "--input", str(inp), "--output", str(out), "--model", str(tiny_model_dir), "--show", "0")
    check([json.loads(line)["reward"] for line in out.read_text().splitlines()], forms, "endorm score")


def test_endorm_eval(tmp_path, tiny_model_dir, forms):
    data, run = tmp_path / "pairs.jsonl", tmp_path / "run"
    data.write_text("".join(json.dumps({"id": k, "prompt": PROMPT, "chosen": RESPONSES[i],
                                        "rejected": RESPONSES[j]}) + "\n" for k, (i, j) in enumerate(PAIRS)))
    endorm_cli("eval", "--benchmark", "pairs", "--data", str(data), "--method", "endorm", "--model",
               str(tiny_model_dir), "--output-dir", str(run), "--plot", "false", "--progress", "false")
    results = json.loads((run / "results.json").read_text())
    assert results["methods"]["endorm"]["accuracy"] == pytest.approx(accuracy(forms["default"]))
    recs = [json.loads(line) for line in (run / "examples.jsonl").read_text().splitlines()]
    by_pair = {r["id"]: r["scores"] for r in recs if r["method"] == "endorm"}
    got = {}
    for k, (i, j) in enumerate(PAIRS):
        got[i], got[j] = by_pair[f"pairs/{k}"]
    check([got[i] for i in range(len(RESPONSES))], forms, "endorm eval")


def test_endorm_serve_and_verl_against_it(tmp_path, tiny_model_dir, forms):
    import httpx
    from transformers import AutoTokenizer

    from endorm.integrations.verl import compute_score

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "server.log"
    cmd = [sys.executable, "-m", "endorm", "serve", "--model", str(tiny_model_dir), "--port", str(port),
           "--log-level", "warning"]
    with open(log, "wb") as f:
        proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=f)
    try:
        t0 = time.monotonic()
        while True:  # bounded; torch's import is slow on a busy machine
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() - t0 < 300, "the server did not come up within 300 s"
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        r = httpx.post(f"{url}/score", json={"rows": ROWS}, timeout=120)
        assert r.status_code == 200, r.text
        check(r.json()["rewards"], forms, "endorm serve /score")
        tok = AutoTokenizer.from_pretrained(tiny_model_dir)
        queries = [tok.apply_chat_template([{"role": "user", "content": PROMPT},
                                            {"role": "assistant", "content": resp}], tokenize=False)
                   for resp in RESPONSES]
        r = httpx.post(f"{url}/get_reward", json={"query": queries}, timeout=120)
        assert r.status_code == 200, r.text
        check(r.json()["rewards"], forms, "endorm serve /get_reward")
        got = [compute_score("any", resp, None, {"prompt": PROMPT}, server_url=url) for resp in RESPONSES]
        check(got, forms, "verl compute_score via the server")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)


# ---- in process ----------------------------------------------------------------------------------------

def test_python_api_trl_and_verl(tiny_model_dir, forms):
    from endorm.integrations.trl import EndogenousRewardFunction
    from endorm.integrations.verl import compute_score

    model = str(tiny_model_dir)
    check(EndogenousRewardModel.from_pretrained(model).score([PROMPT] * len(RESPONSES), RESPONSES), forms,
          "EndogenousRewardModel")
    trl = EndogenousRewardFunction(model_name_or_path=model)
    check(trl([[{"role": "user", "content": PROMPT}]] * len(RESPONSES),
              [[{"role": "assistant", "content": r}] for r in RESPONSES]), forms, "TRL reward function")
    check([compute_score("any", r, None, {"prompt": PROMPT}, model=model) for r in RESPONSES], forms,
          "verl compute_score")


def test_endorm_train_reward(tmp_path, tiny_model_dir, forms):
    """The reward ``endorm train`` optimises: the one build_trainer loads for a TrainConfig with no form set."""
    pytest.importorskip("trl", reason="endorm[rl] extra (trl, datasets) not installed")
    from endorm.rl.config import TrainConfig
    from endorm.rl.trainer import build_trainer

    data = tmp_path / "gsm.jsonl"
    data.write_text(json.dumps({"question": "What is 6 times 7?", "answer": "6*7=42\n#### 42"}) + "\n")
    cfg = TrainConfig(model=str(tiny_model_dir), dataset=str(data), output_dir=str(tmp_path / "train"),
                      prompt_template="plain", device="cpu", max_steps=1, num_generations=2,
                      per_device_train_batch_size=2)
    trainer = build_trainer(cfg)
    reward = trainer.reward_funcs[0]  # the others are weight-0 monitors (curves)
    assert list(trainer.args.reward_weights) == [1.0] + [0.0] * (len(trainer.reward_funcs) - 1)
    got = reward(prompts=[[{"role": "user", "content": PROMPT}]] * len(RESPONSES),
                 completions=[[{"role": "assistant", "content": r}] for r in RESPONSES], answer=["42"] * len(RESPONSES))
    check(got, forms, "endorm train's reward")


NON_DEFAULT = {"alpha": 2.0, "gamma": 0.5, "aggregation": "mean", "contrast": "system",
               "neutral_prompt": "Say something.", "system_prompt": "Be brief.", "max_length": 256,
               "batch_size": 3, "chunk_size": 17, "share_prompts": False}


def test_every_reward_flag_reaches_the_model(tiny_model_dir):
    """Each RewardConfig field, given as a flag of `endorm score` / `endorm serve`, ends up in the model's config."""
    from endorm.cli import parse_config
    from endorm.commands.score import Config as ScoreConfig
    from endorm.commands.score import reward_config
    from endorm.serve.cli import Config as ServeConfig
    from endorm.serve.cli import build

    assert set(NON_DEFAULT) == {f.name for f in fields(RewardConfig)}  # a new field must be added here
    assert all(getattr(RewardConfig(), k) != v for k, v in NON_DEFAULT.items())
    flags = [x for k, v in NON_DEFAULT.items() for x in (f"--{k.replace('_', '-')}", str(v))]
    want = RewardConfig(**NON_DEFAULT)
    score = parse_config(ScoreConfig, ["--input", "a", "--output", "b", *flags])
    assert reward_config(score) == want
    app, _ = build(parse_config(ServeConfig, ["--model", str(tiny_model_dir), *flags]))
    assert app.state.rm.config == want


@pytest.mark.parametrize("contrast", ["prompt", "system"])
def test_contrast_is_the_same_everywhere(tmp_path, tiny_model_dir, contrast):
    from fastapi.testclient import TestClient

    from endorm.serve.cli import Config as ServeConfig
    from endorm.serve.cli import build

    model = str(tiny_model_dir)
    row = {"prompt": PROMPT, "response": RESPONSES[1], "system": "Be brief."}
    rm = EndogenousRewardModel.from_pretrained(model, contrast=contrast, aggregation="discounted", gamma=0.9)
    api = rm.score([PROMPT], [row["response"]], systems=["Be brief."])[0]
    plain = rm.with_config(contrast="none")
    expected = plain.score([PROMPT], [row["response"]], systems=["Be brief."])[0] - (
        plain.score(["Write a response."], [row["response"]], systems=["Be brief."])[0] if contrast == "prompt"
        else plain.score([PROMPT], [row["response"]])[0])
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
