"""verl adapter: the endogenous reward as a verl ``compute_score`` function and as reward managers.

It imports no verl (verl is not a dependency); tests/test_verl.py runs it inside verl 0.9.1's own code.
- ``compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs) -> float`` for
  ``custom_reward_function.path/name`` (extra settings come from ``custom_reward_function.reward_kwargs``),
  and ``compute_score_batch`` with lists, for verl's ``batch`` reward manager.
- ``EndormRewardLoopManager``: a manager of verl's reward loop (``verl.experimental.reward_loop``, what
  verl 0.9's trainer runs): ``async run_single(data) -> {"reward_score", "reward_extra_info"}`` per sample
  and ``assemble_rm_scores``. Outcome reward only: that loop takes one number per sample.
- ``EndormRewardManager(tokenizer, num_examine, compute_score=None, reward_fn_key="data_source", **kw)``
  for the batch interface ``verl.workers.reward_manager`` (still shipped in 0.9, no longer what its trainer
  calls), whose ``__call__(data, return_dict=False)`` reads a ``DataProto``'s ``batch["prompts"]`` (left
  padded), ``batch["responses"]`` (right padded) and ``batch["attention_mask"]``, and returns a ``[batch,
  response length]`` float tensor of token-level rewards (or ``{"reward_tensor", "reward_extra_info"}``).

Scoring goes to a running ``endorm serve`` (``server_url``; one ``/score`` request per verl batch, so
the server batches it with other workers' requests) or to an in-process model (``model`` / ``rm``).

Token-level rewards: endorm's r_t live on the reward model's tokens; each is added to the policy's
response token that covers the last character of that reward-model token (character offsets of the
decoded texts), and anything past the policy's text (e.g. the end-of-turn token) to the last valid
position. What is placed is each token's term of the outcome under the scorer's aggregation
(``terms``: r_t for 'sum', gamma^(t-1) r_t for the default 'discounted', r_t / n for 'mean'), so a row's
token rewards sum to endorm's outcome reward and verl's undiscounted return equals it. With a contrast
(the contrast context's outcome is subtracted from the total only) or from a server too old to send
``terms``, token_level puts the outcome reward on the last token instead.
"""

from __future__ import annotations

import functools
import os
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from endorm.chat import Message

DEFAULT_URL = "http://127.0.0.1:8000"


# -- transport ------------------------------------------------------------------------------------
class EndormScorer:
    """Score rows on ``endorm serve`` (HTTP) or on an in-process ``EndogenousRewardModel``."""

    def __init__(self, server_url: str | None = None, api_key: str | None = None, model: str | None = None,
                 rm: Any = None, client: Any = None, timeout: float = 600.0, **reward_config: Any):
        self.rm = rm
        if rm is None and model is not None:
            from endorm.reward_model import EndogenousRewardModel

            self.rm = EndogenousRewardModel.from_pretrained(model, **reward_config)
        self.client = client
        if self.rm is None and client is None:
            import httpx

            url = server_url or os.environ.get("ENDORM_SERVER_URL") or DEFAULT_URL
            key = api_key if api_key is not None else os.environ.get("ENDORM_API_KEY")
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            self.client = httpx.Client(base_url=url, headers=headers, timeout=timeout)

    def score(self, rows: list[dict[str, Any]], tokens: bool = False) -> tuple[list[float], list[dict] | None]:
        """(outcome rewards, token rewards dicts or None) for rows as ``endorm score`` reads them."""
        if not rows:
            return [], ([] if tokens else None)
        if self.rm is not None:
            from endorm.io import row_to_example

            examples = [row_to_example(r, where=i) for i, r in enumerate(rows)]
            if tokens:
                trs = [t.to_dict() for t in self.rm.token_rewards_examples(examples)]
                return [t["total"] for t in trs], trs
            return self.rm.score_examples(examples), None
        resp = self.client.post("/score", json={"rows": rows, "tokens": tokens})
        if resp.status_code != 200:
            raise RuntimeError(f"endorm serve answered {resp.status_code}: {resp.text[:500]}")
        body = resp.json()
        return body["rewards"], body.get("token_rewards")


@functools.lru_cache(maxsize=8)
def _scorer(server_url: str | None, api_key: str | None, model: str | None) -> EndormScorer:
    # one client (or model) per worker process, reused across calls
    return EndormScorer(server_url=server_url, api_key=api_key, model=model)


# -- compute_score --------------------------------------------------------------------------------
def _prompt_row(solution_str: str, extra_info: Any, prompt_key: str, system: str | None) -> dict[str, Any]:
    info = extra_info if isinstance(extra_info, dict) else {}
    prompt = info.get(prompt_key)
    if prompt is None:
        raise ValueError(
            f"extra_info has no {prompt_key!r} (keys: {sorted(info)}): endorm scores a response given its "
            "prompt; store the prompt in extra_info during preprocessing or set reward_kwargs.prompt_key")
    if isinstance(prompt, str):
        row: dict[str, Any] = {"prompt": prompt, "response": solution_str}
    else:  # a chat: list of {role, content}
        msgs = [dict(m) for m in prompt]
        row = {"messages": msgs + [{"role": "assistant", "content": solution_str}]}
        if msgs and msgs[0].get("role") == "system":
            system = None  # the chat has its own
    if system is not None:
        row["system"] = system
    return row


def compute_score(
    data_source: Any,
    solution_str: str,
    ground_truth: Any = None,
    extra_info: Any = None,
    *,
    server_url: str | None = None,
    api_key: str | None = None,
    model: str | None = None,
    prompt_key: str = "prompt",
    system: str | None = None,
    **_: Any,
) -> float:
    """verl ``custom_reward_function``: the endogenous reward of ``solution_str`` to ``extra_info[prompt_key]``.

    ``ground_truth`` and ``data_source`` are unused: the endogenous reward needs no reference answer.
    """
    rewards, _tok = _scorer(server_url, api_key, model).score(
        [_prompt_row(solution_str, extra_info, prompt_key, system)])
    return float(rewards[0])


def compute_score_batch(
    data_sources: Sequence[Any],
    solution_strs: Sequence[str],
    ground_truths: Sequence[Any],
    extra_infos: Sequence[Any],
    *,
    server_url: str | None = None,
    api_key: str | None = None,
    model: str | None = None,
    prompt_key: str = "prompt",
    system: str | None = None,
    **_: Any,
) -> list[float]:
    """The same for verl's ``batch`` reward manager: one request for the whole batch."""
    rows = [_prompt_row(s, e, prompt_key, system) for s, e in zip(solution_strs, extra_infos, strict=True)]
    return [float(r) for r in _scorer(server_url, api_key, model).score(rows)[0]]


# -- token alignment ------------------------------------------------------------------------------
def align_token_rewards(rm_tokens: Sequence[str], rm_rewards: Sequence[float],
                        policy_tokens: Sequence[str]) -> list[float]:
    """Move per-token rewards from the reward model's tokens onto the policy's tokens.

    Args: rm_tokens [m] and rm_rewards [m] (decoded text and r_t of each reward-model token),
    policy_tokens [n] (decoded text of each policy response token, n >= 1). Returns [n] rewards whose
    sum equals sum(rm_rewards): each r_t goes to the policy token covering the reward-model token's last
    character; characters past the policy's text go to the last policy token.
    """
    n = len(policy_tokens)
    if n == 0:
        raise ValueError("the policy response has no tokens")
    ends, pos = [], 0
    for t in policy_tokens:  # policy token j covers characters [ends[j-1], ends[j])
        pos += len(t)
        ends.append(pos)
    out = [0.0] * n
    char, j = 0, 0
    for t, r in zip(rm_tokens, rm_rewards, strict=True):
        char += len(t)
        last = max(char - 1, 0)
        while j < n - 1 and ends[j] <= last:
            j += 1
        out[j] += float(r)
    return out


# -- reading a DataProto -------------------------------------------------------------------------
class _BatchReader:
    """A verl ``DataProto`` -> endorm rows (one chat per sample) and each sample's valid response ids."""

    def __init__(self, tokenizer: Any, system: str | None = None):
        self.tokenizer = tokenizer
        self.system = system
        self._splitter = None

    def _messages(self, prompt_ids: list[int], response_ids: list[int], raw: Any, i: int) -> list[Message]:
        response = self.tokenizer.decode(response_ids, skip_special_tokens=True)
        if raw is not None:  # verl's data.return_raw_chat=True keeps the chat as a list of messages
            return [dict(m) for m in raw] + [{"role": "assistant", "content": response}]
        from endorm.serve.openrlhf import QuerySplitter

        if self._splitter is None:
            self._splitter = QuerySplitter(self.tokenizer)
        prompt = self.tokenizer.decode(prompt_ids, skip_special_tokens=False)
        query = prompt + self.tokenizer.decode(response_ids, skip_special_tokens=False)
        ex = self._splitter.split(query, prompt, row=i)
        sys = [{"role": "system", "content": ex.system}] if ex.system is not None else []
        return sys + ex.messages

    def rows(self, data: Any) -> tuple[list[dict[str, Any]], list[list[int]]]:
        """(rows as ``/score`` reads them, valid response ids) for ``batch["prompts"]`` (left padded),
        ``batch["responses"]`` (right padded) and ``batch["attention_mask"]`` over both."""
        prompts, responses = data.batch["prompts"], data.batch["responses"]
        mask = data.batch["attention_mask"]
        p_len = prompts.shape[-1]
        raw_prompts = data.non_tensor_batch.get("raw_prompt") if hasattr(data, "non_tensor_batch") else None
        rows, spans = [], []
        for i in range(len(responses)):
            n_p = int(mask[i, :p_len].sum())
            n_r = int(mask[i, p_len:].sum())
            p_ids = prompts[i, p_len - n_p :].tolist()
            r_ids = responses[i, :n_r].tolist()
            raw = raw_prompts[i] if raw_prompts is not None else None
            msgs = self._messages(p_ids, r_ids, raw, i)
            row: dict[str, Any] = {"messages": msgs}
            if self.system is not None and msgs[0]["role"] != "system":
                row["system"] = self.system
            rows.append(row)
            spans.append(r_ids)
        return rows, spans


def _is_empty(row: dict[str, Any]) -> bool:
    return not row["messages"][-1]["content"].strip()


# -- reward manager: verl.workers.reward_manager ---------------------------------------------------
class EndormRewardManager:
    """A verl reward manager whose rewards are endorm's (token-level by default), for the batch interface
    ``verl.workers.reward_manager`` (``AbstractRewardManager``: ``__call__(data, return_dict)``).

    verl registers managers by name; see docs/SERVING.md for the two ways to plug this one in. verl 0.9's
    trainer computes rewards in its reward loop instead: use ``EndormRewardLoopManager`` there.
    """

    def __init__(
        self,
        tokenizer: Any,
        num_examine: int = 0,
        compute_score: Any = None,  # accepted for verl's constructor call; endorm computes the reward
        reward_fn_key: str = "data_source",
        *,
        server_url: str | None = None,
        api_key: str | None = None,
        model: str | None = None,
        rm: Any = None,
        client: Any = None,
        token_level: bool = True,
        system: str | None = None,
        empty_reward: float = 0.0,
        **_: Any,
    ):
        self.tokenizer = tokenizer
        self.empty_reward = empty_reward  # endorm cannot score an empty response (EOS only); it gets this
        self.num_examine = num_examine
        self.reward_fn_key = reward_fn_key
        self.token_level = token_level
        self.reader = _BatchReader(tokenizer, system)
        self.scorer = EndormScorer(server_url=server_url, api_key=api_key, model=model, rm=rm, client=client)

    def __call__(self, data: Any, return_dict: bool = False) -> Any:
        import torch

        if "rm_scores" in data.batch.keys():  # rewards already computed upstream: pass through, as verl does
            return {"reward_tensor": data.batch["rm_scores"]} if return_dict else data.batch["rm_scores"]
        rows, spans = self.reader.rows(data)
        responses = data.batch["responses"]
        live = [i for i, row in enumerate(rows) if not _is_empty(row)]
        got, got_trs = self.scorer.score([rows[i] for i in live], tokens=self.token_level)
        totals: list[float] = [float(self.empty_reward)] * len(rows)
        trs: list[dict | None] = [None] * len(rows)
        for k, i in enumerate(live):
            totals[i] = float(got[k])
            trs[i] = got_trs[k] if got_trs is not None else None
        reward = torch.zeros_like(responses, dtype=torch.float32)
        for i, r_ids in enumerate(spans):
            if not r_ids:
                continue
            tr = trs[i]
            # each token gets its term of the outcome; where the terms do not sum to it (a contrast, or an
            # older server without "terms" and an aggregation other than sum) the outcome goes last
            terms = None if tr is None else tr.get("terms") or tr["rewards"]
            if terms is not None and abs(sum(terms) - float(totals[i])) <= 1e-3 * max(1.0, abs(totals[i])):
                policy_tokens = [self.tokenizer.decode([t]) for t in r_ids]
                if list(tr["token_ids"]) == list(r_ids):  # same tokenizer and tokens: no alignment needed
                    vals = list(terms)
                else:
                    vals = align_token_rewards(tr["tokens"], terms, policy_tokens)
                reward[i, : len(r_ids)] = torch.tensor(vals, dtype=torch.float32)
            else:
                reward[i, len(r_ids) - 1] = float(totals[i])
        self._print_examples(data, rows, totals)
        if return_dict:
            return {"reward_tensor": reward, "reward_extra_info": {"endorm_reward": [float(t) for t in totals]}}
        return reward

    def _print_examples(self, data: Any, rows: list[dict[str, Any]], totals: list[float]) -> None:
        if self.num_examine <= 0:
            return
        sources = getattr(data, "non_tensor_batch", {}).get(self.reward_fn_key)
        shown: dict[Any, int] = defaultdict(int)
        for i, (row, total) in enumerate(zip(rows, totals, strict=True)):
            key = sources[i] if sources is not None else None
            if shown[key] < self.num_examine:
                shown[key] += 1
                print("[endorm prompt]", row["messages"][-2]["content"][:200])
                print("[endorm response]", row["messages"][-1]["content"][:200])
                print("[endorm reward]", total)


# -- reward manager: verl's reward loop (verl 0.9) -------------------------------------------------
REWARD_LOOP_KWARGS = ("server_url", "api_key", "model", "system", "empty_reward")


def _reward_loop_kwargs(config: Any) -> dict[str, Any]:
    """endorm's settings from verl's ``reward.reward_kwargs`` (the place verl's own DAPO manager reads)."""
    reward = config.get("reward") if config is not None and hasattr(config, "get") else None
    kw = (reward.get("reward_kwargs") if reward is not None else None) or {}
    return {k: kw[k] for k in REWARD_LOOP_KWARGS if k in kw}


class EndormRewardLoopManager:
    """endorm's outcome reward as a manager of verl's reward loop (``verl.experimental.reward_loop``, what
    verl 0.9's trainer runs): the interface of its ``RewardManagerBase``, without importing verl.

    verl builds it as ``cls(config=, tokenizer=, compute_score=, reward_router_address=,
    reward_model_tokenizer=)``; settings come from ``reward.reward_kwargs`` (``server_url``, ``api_key``,
    ``model``, ``system``, ``empty_reward``). ``run_single`` scores one sample (one ``/score`` request; the
    server batches the concurrent ones); ``assemble_rm_scores`` puts each score on the sample's last response
    token. That loop takes one number per sample, so this manager gives the outcome reward only.
    """

    def __init__(self, config: Any = None, tokenizer: Any = None, compute_score: Any = None,
                 reward_router_address: str | None = None, reward_model_tokenizer: Any = None, **kwargs: Any):
        kw = {**_reward_loop_kwargs(config), **kwargs}
        if tokenizer is None:
            raise ValueError("EndormRewardLoopManager needs the policy's tokenizer (verl passes tokenizer=)")
        self.config = config
        self.tokenizer = tokenizer
        self.empty_reward = float(kw.get("empty_reward", 0.0))
        self.reader = _BatchReader(tokenizer, kw.get("system"))
        self.scorer = EndormScorer(server_url=kw.get("server_url"), api_key=kw.get("api_key"),
                                   model=kw.get("model"), rm=kw.get("rm"), client=kw.get("client"))

    async def run_single(self, data: Any) -> dict[str, Any]:
        import asyncio

        rows, _ = self.reader.rows(data[-1:])  # several sequences (multi-turn): the last one, as verl's own
        if _is_empty(rows[0]):
            reward = self.empty_reward
        else:
            got, _tok = await asyncio.get_running_loop().run_in_executor(None, self.scorer.score, rows)
            reward = float(got[0])
        return {"reward_score": reward, "reward_extra_info": {"endorm_reward": reward}}

    @classmethod
    def assemble_rm_scores(cls, data: Any, scores: Sequence[float]) -> Any:
        """[batch, response length] float32: ``scores[i]`` on sample i's last valid response token."""
        import torch

        p_len = data.batch["prompts"].shape[-1]
        n_r = data.batch["attention_mask"][:, p_len:].sum(dim=1)
        out = torch.zeros_like(data.batch["responses"], dtype=torch.float32)
        for i, (n, s) in enumerate(zip(n_r.tolist(), scores, strict=True)):
            out[i, max(int(n), 1) - 1] = float(s)
        return out
