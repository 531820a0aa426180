"""The verl adapter inside verl 0.9.1 itself (installed by scripts/install-integrations, without its
pinned dependencies): batches are verl's own ``DataProto``; the batch manager is registered in and built
through ``verl.workers.reward_manager`` and checked against verl's ``NaiveRewardManager`` running endorm's
``compute_score``; the reward-loop manager is loaded and run by verl's ``RewardLoopWorker`` (its
``load_reward_manager``, ``compute_score_batch``), as verl 0.9's trainer does, against ``endorm serve`` on
the tiny model. Rewards are checked against direct scoring with the same model."""

import asyncio
import inspect
from functools import partial

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from omegaconf import OmegaConf
from verl import DataProto

from endorm.integrations.verl import (
    EndormRewardLoopManager,
    EndormRewardManager,
    EndormScorer,
    align_token_rewards,
    compute_score,
    compute_score_batch,
)
from endorm.io import row_to_example
from endorm.serve.app import create_app

PAIRS = [
    ("What is the capital of France?", "The capital of France is Paris."),
    ("Write a poem about the sea.", "The sea, the wind and the rain."),
    ("What is 6 times 7?", "The answer is 42."),
]


def make_batch(tok, pairs, resp_len=24, raw=False, empty_last=False):
    pad = tok.pad_token_id
    p_ids = [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
             for p, _ in pairs]
    p_ids = [tok(t, add_special_tokens=False)["input_ids"] for t in p_ids]
    r_ids = [tok(r, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for _, r in pairs]
    if empty_last:
        r_ids[-1] = [tok.eos_token_id]
    P = max(map(len, p_ids))
    prompts = torch.tensor([[pad] * (P - len(x)) + x for x in p_ids])
    responses = torch.tensor([x + [pad] * (resp_len - len(x)) for x in r_ids])
    mask = torch.tensor([[0] * (P - len(p)) + [1] * len(p) + [1] * len(r) + [0] * (resp_len - len(r))
                         for p, r in zip(p_ids, r_ids, strict=True)])
    nt = {"data_source": np.array(["toy"] * len(pairs), dtype=object),
          "reward_model": np.array([{"ground_truth": "unused"} for _ in pairs], dtype=object),
          "extra_info": np.array([{"prompt": [{"role": "user", "content": p}]} for p, _ in pairs], dtype=object)}
    if raw:
        nt["raw_prompt"] = _object_array([[{"role": "user", "content": p}] for p, _ in pairs])
    tensors = {"prompts": prompts, "responses": responses, "attention_mask": mask,
               "input_ids": torch.cat([prompts, responses], dim=1)}
    return DataProto.from_dict(tensors=tensors, non_tensors=nt), r_ids


def _object_array(items):
    # one object per row, as verl's dataset stores chats (np.array would make a 2-D array of dicts)
    out = np.empty(len(items), dtype=object)
    for i, x in enumerate(items):
        out[i] = x
    return out


@pytest.mark.parametrize("raw", [False, True])
def test_reward_manager_token_level(tiny_rm, raw):
    # per-token r_t need the paper's undiscounted sum (docs/SERVING.md); the default form is tested below
    tiny_rm = tiny_rm.with_config(aggregation="sum", gamma=1.0)
    tok = tiny_rm.tokenizer
    data, r_ids = make_batch(tok, PAIRS, raw=raw)
    mgr = EndormRewardManager(tok, num_examine=0, rm=tiny_rm)
    out = mgr(data, return_dict=True)
    reward = out["reward_tensor"]
    assert reward.shape == data.batch["responses"].shape and reward.dtype == torch.float32
    for i, (p, r) in enumerate(PAIRS):
        ref = tiny_rm.token_rewards(p, r)
        n = len(r_ids[i])
        assert ref.token_ids == r_ids[i]  # same tokenizer: endorm's tokens are the policy's tokens
        assert reward[i, :n].tolist() == pytest.approx(ref.rewards, abs=1e-4)
        assert torch.all(reward[i, n:] == 0)
        assert out["reward_extra_info"]["endorm_reward"][i] == pytest.approx(ref.total, abs=1e-4)


@pytest.mark.parametrize("server", [False, True])
def test_reward_manager_default_form_spreads_discounted_terms(tiny_rm, server):
    assert tiny_rm.config.aggregation == "discounted"  # the default form, gamma^(t-1) r_t per token
    g = tiny_rm.config.gamma
    tok = tiny_rm.tokenizer
    data, r_ids = make_batch(tok, PAIRS)
    if server:
        with TestClient(create_app(tiny_rm)) as client:
            reward = EndormRewardManager(tok, client=client)(data)
    else:
        reward = EndormRewardManager(tok, num_examine=0, rm=tiny_rm)(data)
    for i, (p, r) in enumerate(PAIRS):
        n = len(r_ids[i])
        ref = tiny_rm.token_rewards(p, r)
        assert reward[i, :n].tolist() == pytest.approx([g**t * x for t, x in enumerate(ref.rewards)], abs=1e-4)
        assert reward[i, :n].sum().item() == pytest.approx(tiny_rm.score([p], [r])[0], abs=1e-3)
        assert torch.all(reward[i, n:] == 0)


def test_reward_manager_contrast_puts_the_outcome_last(tiny_rm):
    rm = tiny_rm.with_config(contrast="prompt")
    tok = tiny_rm.tokenizer
    data, r_ids = make_batch(tok, PAIRS)
    reward = EndormRewardManager(tok, num_examine=0, rm=rm)(data)
    for i, (p, r) in enumerate(PAIRS):
        n = len(r_ids[i])
        assert reward[i, n - 1].item() == pytest.approx(rm.score([p], [r])[0], abs=1e-4)
        assert torch.all(reward[i, : n - 1] == 0) and torch.all(reward[i, n:] == 0)


def test_reward_manager_outcome_only_and_via_server(tiny_rm):
    tok = tiny_rm.tokenizer
    data, r_ids = make_batch(tok, PAIRS, empty_last=True)
    with TestClient(create_app(tiny_rm)) as client:
        mgr = EndormRewardManager(tok, rm=None, client=client, token_level=False, empty_reward=-7.0)
        reward = mgr(data)
        served_tokens = EndormRewardManager(tok, client=client)(data)
    ref = tiny_rm.score([p for p, _ in PAIRS[:2]], [r for _, r in PAIRS[:2]])
    for i in range(2):
        n = len(r_ids[i])
        assert reward[i, n - 1].item() == pytest.approx(ref[i], abs=1e-4)
        assert torch.count_nonzero(reward[i]).item() == 1
        assert served_tokens[i].sum().item() == pytest.approx(ref[i], abs=1e-3)
    assert reward[2, 0].item() == -7.0  # the EOS-only response is not scored


def test_rm_scores_pass_through(tiny_rm):
    data, _ = make_batch(tiny_rm.tokenizer, PAIRS)
    data.batch["rm_scores"] = torch.ones(3, 24)
    assert EndormRewardManager(tiny_rm.tokenizer, rm=tiny_rm)(data) is data.batch["rm_scores"]


def test_align_token_rewards_preserves_sum_and_position():
    # reward-model tokens "Pa|ris|.|<e>" onto policy tokens "P|aris|.<e>"
    got = align_token_rewards(["Pa", "ris", ".", "<e>"], [1.0, 2.0, 4.0, 8.0], ["P", "aris", ".<e>"])
    assert got == [0.0, 3.0, 12.0]
    # characters past the policy text land on its last token
    assert align_token_rewards(["ab", "cd", "<eot>"], [1.0, 1.0, 5.0], ["a", "bcd"]) == [0.0, 7.0]
    with pytest.raises(ValueError):
        align_token_rewards(["a"], [1.0], [])


def test_compute_score_functions(tiny_rm, monkeypatch):
    import endorm.integrations.verl as V

    monkeypatch.setattr(V, "_scorer", lambda *a: EndormScorer(rm=tiny_rm))
    ref = tiny_rm.score([p for p, _ in PAIRS], [r for _, r in PAIRS])
    got = compute_score("toy", PAIRS[0][1], "unused", {"question": PAIRS[0][0]}, prompt_key="question")
    assert got == pytest.approx(ref[0], abs=1e-4)
    chat = [{"role": "user", "content": PAIRS[1][0]}]
    assert compute_score("toy", PAIRS[1][1], None, {"prompt": chat}) == pytest.approx(ref[1], abs=1e-4)
    batch = compute_score_batch(["toy"] * 3, [r for _, r in PAIRS], [None] * 3, [{"prompt": p} for p, _ in PAIRS])
    assert batch == pytest.approx(ref, abs=1e-4)
    with pytest.raises(ValueError, match="extra_info has no 'prompt'"):
        compute_score("toy", "x", None, {"question": "q"})


# -- verl's own reward-manager machinery -----------------------------------------------------------
def test_batch_manager_in_verls_registry_matches_verls_naive_manager(tiny_rm, monkeypatch):
    """Registered and built as verl builds a ``verl.workers.reward_manager`` manager; its outcome rewards
    equal those of verl's own NaiveRewardManager running endorm's compute_score on the same DataProto."""
    from verl.workers.reward_manager import NaiveRewardManager, get_reward_manager_cls, register
    from verl.workers.reward_manager.abstract import AbstractRewardManager

    import endorm.integrations.verl as V

    register("endorm-test")(EndormRewardManager)
    cls = get_reward_manager_cls("endorm-test")
    assert cls is EndormRewardManager
    assert set(AbstractRewardManager.__abstractmethods__) <= set(vars(EndormRewardManager))
    tok = tiny_rm.tokenizer
    data, r_ids = make_batch(tok, PAIRS, raw=True)
    ours = cls(tokenizer=tok, num_examine=1, compute_score=None, reward_fn_key="data_source", rm=tiny_rm,
               token_level=False)(data, return_dict=True)
    monkeypatch.setattr(V, "_scorer", lambda *a: EndormScorer(rm=tiny_rm))
    theirs = NaiveRewardManager(tok, num_examine=0, compute_score=compute_score)(data, return_dict=True)
    assert torch.allclose(ours["reward_tensor"], theirs["reward_tensor"], atol=1e-4)
    ref = tiny_rm.score([p for p, _ in PAIRS], [r for _, r in PAIRS])
    for i in range(len(PAIRS)):
        assert theirs["reward_tensor"][i, len(r_ids[i]) - 1].item() == pytest.approx(ref[i], abs=1e-4)


def _loop_config(tiny_model_dir, manager: dict, reward_kwargs: dict | None = None, custom_fn: dict | None = None):
    """The parts of verl 0.9's trainer config that its RewardLoopWorker reads."""
    return OmegaConf.create({
        "actor_rollout_ref": {"model": {"path": str(tiny_model_dir), "tokenizer_path": None}},
        "reward": {
            "custom_reward_function": custom_fn or {"path": None, "name": "compute_score"},
            "reward_manager": manager,
            "reward_model": {"enable": False},
            "sandbox_fusion": None,
            "reward_kwargs": reward_kwargs or {},
        },
    })


def test_reward_loop_worker_runs_endorms_manager(tiny_rm, tiny_model_dir, served_tiny):
    """verl's RewardLoopWorker loads EndormRewardLoopManager by importlib (the way that reaches its Ray
    workers), scores each sample against endorm serve, and the manager assembles rm_scores like verl's base."""
    from verl.experimental.reward_loop.reward_loop import RewardLoopWorker
    from verl.experimental.reward_loop.reward_manager.base import RewardManagerBase

    manager = {"source": "importlib", "name": "EndormRewardLoopManager",
               "module": {"path": "pkg://endorm.integrations.verl", "name": "unused"}}
    worker = RewardLoopWorker(_loop_config(tiny_model_dir, manager, {"server_url": served_tiny}))
    assert type(worker.reward_manager) is EndormRewardLoopManager
    assert set(RewardManagerBase.__abstractmethods__) <= set(vars(EndormRewardLoopManager))
    assert inspect.iscoroutinefunction(EndormRewardLoopManager.run_single)
    data, r_ids = make_batch(worker.input_tokenizer, PAIRS, empty_last=True)
    out = worker.loop.run_until_complete(worker.compute_score_batch(data))  # its loop, as in its Ray actor
    ref = tiny_rm.score([p for p, _ in PAIRS[:2]], [r for _, r in PAIRS[:2]])
    scores = [o["reward_score"] for o in out]
    assert scores[:2] == pytest.approx(ref, abs=1e-4) and scores[2] == 0.0  # the EOS-only response
    assert [o["reward_extra_info"]["endorm_reward"] for o in out] == scores
    rm_scores = EndormRewardLoopManager.assemble_rm_scores(data, scores)
    assert torch.equal(rm_scores, RewardManagerBase.assemble_rm_scores(data, scores))
    for i in range(2):
        assert rm_scores[i, len(r_ids[i]) - 1].item() == pytest.approx(ref[i], abs=1e-4)
        assert torch.count_nonzero(rm_scores[i]).item() == 1


def test_reward_loop_worker_runs_compute_score_over_http(tiny_rm, tiny_model_dir, served_tiny):
    """verl's own reward-loop NaiveRewardManager calling endorm's compute_score, loaded by verl from
    custom_reward_function (with its reward_kwargs), against endorm serve."""
    manager = {"source": "register", "name": "naive", "module": {"path": None, "name": "unused"}}
    custom = {"path": "pkg://endorm.integrations.verl", "name": "compute_score",
              "reward_kwargs": {"server_url": served_tiny, "prompt_key": "question"}}
    from verl.experimental.reward_loop.reward_loop import RewardLoopWorker
    from verl.experimental.reward_loop.reward_manager import NaiveRewardManager

    worker = RewardLoopWorker(_loop_config(tiny_model_dir, manager, custom_fn=custom))
    assert type(worker.reward_manager) is NaiveRewardManager
    data, _ = make_batch(worker.input_tokenizer, PAIRS)
    data.non_tensor_batch["extra_info"] = np.array([{"question": p} for p, _ in PAIRS], dtype=object)
    out = worker.loop.run_until_complete(worker.compute_score_batch(data))  # its loop, as in its Ray actor
    ref = tiny_rm.score([p for p, _ in PAIRS], [r for _, r in PAIRS])
    assert [o["reward_score"] for o in out] == pytest.approx(ref, abs=1e-4)


def test_reward_loop_manager_settings_and_errors(tiny_rm):
    cfg = OmegaConf.create({"reward": {"reward_kwargs": {"system": "Be brief.", "empty_reward": -3,
                                                           "overlong_buffer_cfg": {"enable": False}}}})
    mgr = EndormRewardLoopManager(cfg, tiny_rm.tokenizer, None, rm=tiny_rm)
    assert mgr.empty_reward == -3.0 and mgr.reader.system == "Be brief."
    data, _ = make_batch(tiny_rm.tokenizer, PAIRS[:1])
    got = asyncio.run(mgr.run_single(data))["reward_score"]
    row = {"prompt": PAIRS[0][0], "response": PAIRS[0][1], "system": "Be brief."}
    assert got == pytest.approx(tiny_rm.score_examples([row_to_example(row)])[0], abs=1e-4)
    assert got != pytest.approx(tiny_rm.score([PAIRS[0][0]], [PAIRS[0][1]])[0], abs=1e-4)
    with pytest.raises(ValueError, match="tokenizer"):
        EndormRewardLoopManager(cfg, None, None, rm=tiny_rm)


def test_compute_score_batch_is_verls_batch_manager_function(tiny_rm, monkeypatch):
    """verl's BatchRewardManager calls compute_score_batch with its own keyword names."""
    from verl.workers.reward_manager import BatchRewardManager

    import endorm.integrations.verl as V

    monkeypatch.setattr(V, "_scorer", lambda *a: EndormScorer(rm=tiny_rm))
    tok = tiny_rm.tokenizer
    data, r_ids = make_batch(tok, PAIRS)
    data.non_tensor_batch["extra_info"] = np.array([{"question": p} for p, _ in PAIRS], dtype=object)
    mgr = BatchRewardManager(tok, num_examine=0, compute_score=partial(compute_score_batch, prompt_key="question"))
    reward = mgr(data)
    ref = tiny_rm.score([p for p, _ in PAIRS], [r for _, r in PAIRS])
    for i in range(len(PAIRS)):
        assert reward[i, len(r_ids[i]) - 1].item() == pytest.approx(ref[i], abs=1e-4)
