"""Wire ``TrainConfig`` into TRL's GRPOTrainer: prompts dataset, reward function, GRPOConfig, curve logging.

The policy is loaded by TRL from a path (TRL also builds the KL reference model from that path when
beta > 0); the reward model is a separate frozen copy of the base model (``reward_model`` or the policy's
own starting weights), so the reward never moves while the policy trains.

``--resume`` continues from the newest complete checkpoint with the Trainer's own restore (weights,
optimizer, scheduler, RNG, global step, data position) plus one repair: the prompt order of each epoch is
made a function of the epoch (``EpochOrder``), so a run resumed past its first epoch sees the prompts an
uninterrupted run would (TRL's sampler would start again from the first epoch's order).
"""

from __future__ import annotations

import logging
from dataclasses import fields
from pathlib import Path
from typing import Any

from endorm.rl.config import TrainConfig

log = logging.getLogger(__name__)

__all__ = ["build_dataset", "build_grpo_config", "build_trainer", "last_checkpoint", "record_invocation",
           "rollout_sampler_for", "train"]


def _require_trl() -> None:
    try:
        import datasets  # noqa: F401
        import trl  # noqa: F401
    except ImportError as e:
        raise ImportError("endorm train needs TRL: pip install 'endorm[rl]'  (trl, datasets)") from e


def build_dataset(cfg: TrainConfig, data_dir: str | Path | None = None) -> Any:
    """A conversational prompt dataset: columns ``prompt`` ([{"role": "user", ...}]) and ``answer``."""
    from datasets import Dataset

    from endorm.mathx.data import load_benchmark
    from endorm.mathx.generate import PROMPT_TEMPLATES

    if cfg.prompt_template not in PROMPT_TEMPLATES:
        raise ValueError(f"prompt_template: unknown {cfg.prompt_template!r}; use one of {', '.join(PROMPT_TEMPLATES)}")
    from endorm.mathx.data import select_subset

    problems = load_benchmark(cfg.dataset, data_dir=data_dir)
    if cfg.max_question_chars:
        problems = [p for p in problems if len(p.question) <= cfg.max_question_chars]
        if not problems:
            raise ValueError(f"max_question_chars={cfg.max_question_chars}: no question of {cfg.dataset} is that short")
    problems = select_subset(problems, cfg.num_prompts, cfg.seed)
    tmpl = PROMPT_TEMPLATES[cfg.prompt_template]
    return Dataset.from_list(
        [
            {"prompt": [{"role": "user", "content": tmpl.format(question=p.question)}], "answer": p.answer, "id": p.id}
            for p in problems
        ]
    )


def build_grpo_config(cfg: TrainConfig) -> Any:
    """TRL's GRPOConfig from ours (names checked against TRL 1.16: beta, num_generations, max_completion_length)."""
    import torch
    from trl import GRPOConfig

    use_cpu = cfg.device == "cpu" or (cfg.device == "auto" and not torch.cuda.is_available())
    # transformers 5.2x renamed gradient_checkpointing to activation_checkpointing (the old name warns, goes in v6)
    ckpt = "activation_checkpointing" if "activation_checkpointing" in {f.name for f in fields(GRPOConfig)} \
        else "gradient_checkpointing"
    return GRPOConfig(
        output_dir=cfg.output_dir,
        max_steps=cfg.max_steps,
        beta=cfg.beta,
        learning_rate=cfg.learning_rate,
        num_generations=cfg.num_generations,
        per_device_train_batch_size=cfg.per_device_train_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        max_completion_length=cfg.max_completion_length,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        loss_type=cfg.loss_type,
        scale_rewards=cfg.scale_rewards,
        num_iterations=cfg.num_iterations,
        seed=cfg.seed,
        logging_steps=cfg.logging_steps,
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        bf16=cfg.bf16 and not use_cpu,
        use_cpu=use_cpu,
        **{ckpt: cfg.gradient_checkpointing},
        report_to=cfg.report_to,
        model_init_kwargs={"dtype": "bfloat16" if cfg.bf16 and not use_cpu else "float32"},
        cache_implementation=cfg.cache_implementation,
        disable_dropout=True,
        log_completions=False,
        dataloader_num_workers=0,
    )


class EpochOrder:
    """Wraps TRL's ``RepeatSampler`` so epoch e's order is the (e+1)-th permutation drawn after seeding.

    TRL seeds the sampler's generator once and draws one permutation per pass, so in an uninterrupted run
    epoch e gets the (e+1)-th draw; a resumed run builds a new sampler and would get the first draw again.
    Here every pass reseeds and skips e draws first (the Trainer calls ``set_epoch`` before each epoch,
    also on resume): the same orders as TRL's in an uninterrupted run, and the right one after a resume.
    """

    def __init__(self, inner: Any):
        self.inner = inner
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Any:
        import torch

        inner = self.inner
        if getattr(inner, "shuffle", False) and getattr(inner, "seed", None) is not None:
            inner.generator.manual_seed(inner.seed)
            for _ in range(self.epoch):
                torch.randperm(inner.num_samples, generator=inner.generator)
        self.epoch += 1  # a pass without set_epoch moves on, as TRL's sampler does
        return iter(inner)

    def __len__(self) -> int:
        return len(self.inner)


def _trainer_class(rollout_sampler: str = "policy") -> Any:
    """TRL's GRPOTrainer (or its int8-rollout subclass, ``endorm.rl.rollout``) with the resumable epoch order."""
    from endorm.rl.rollout import rollout_trainer_class

    class Trainer(rollout_trainer_class(rollout_sampler)):
        completion_log: Any = None  # an endorm.rl.logging.CompletionLog, set by build_trainer

        def _get_train_sampler(self, dataset: Any = None) -> Any:
            return EpochOrder(super()._get_train_sampler(dataset))

        def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
            super().log(logs, start_time)
            if self.completion_log is None or "reward" not in logs or not self.model.training:
                return
            # TRL keeps the latest generation batch in self._logs (what its log_completions prints)
            tl = getattr(self, "_logs", None)
            if not isinstance(tl, dict) or not {"prompt", "completion", "rewards", "advantages"} <= tl.keys():
                log.warning("this TRL keeps no per-completion logs; completions.jsonl is not written")
                self.completion_log = None
                return
            from endorm.rl.logging import completion_rows

            self.completion_log.append(completion_rows(
                self.state.global_step, list(tl["prompt"]), list(tl["completion"]),
                {k: list(v) for k, v in tl["rewards"].items()}, list(tl["advantages"])))

    return Trainer


def build_trainer(cfg: TrainConfig, model_path: str | None = None, reward_model: Any | None = None,
                  data_dir: str | Path | None = None, callbacks: list | None = None) -> Any:
    """A ready GRPOTrainer. ``model_path`` overrides ``cfg.model`` (already resolved to a loadable path);
    ``reward_model`` (an EndogenousRewardModel) overrides loading the frozen copy."""
    _require_trl()
    from transformers import AutoTokenizer

    from endorm.integrations.trl import EndogenousRewardFunction
    from endorm.models import resolve
    from endorm.rl.logging import CompletionLog, CurveLogger
    from endorm.rl.rewards import MONITORS, FormatGate, make_reward_func

    path = model_path or resolve(cfg.model)
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    erm = None
    if cfg.reward in ("endogenous", "mean_logprob", "neg_entropy") or cfg.endogenous_weight:
        if reward_model is None:
            from endorm import EndogenousRewardModel

            reward_model = EndogenousRewardModel.from_pretrained(
                cfg.reward_model or path, alpha=cfg.alpha, aggregation=cfg.aggregation, gamma=cfg.gamma,
                contrast=cfg.contrast)
        for p in reward_model.model.parameters():
            p.requires_grad_(False)
        erm = EndogenousRewardFunction(reward_model)
    reward_fns = [make_reward_func(cfg.reward, erm)]
    weights = [1.0]
    if cfg.endogenous_weight:  # TRL sums the weighted rewards before the group advantage
        reward_fns.append(erm)
        weights.append(cfg.endogenous_weight)
    if cfg.format_gate:
        reward_fns[0] = FormatGate(reward_fns[0])
    monitors = [m() for m in MONITORS]
    args = build_grpo_config(cfg)
    args.reward_weights = weights + [0.0] * len(monitors)  # the monitors are curves, not rewards
    dataset = build_dataset(cfg, data_dir)
    cbs = [CurveLogger(cfg.output_dir, title=cfg.reward), *(callbacks or [])]
    trainer = _trainer_class(rollout_sampler_for(cfg))(model=path, reward_funcs=[*reward_fns, *monitors], args=args,
                                                    train_dataset=dataset,
                                                    processing_class=tok, callbacks=cbs, peft_config=lora_config(cfg))
    if cfg.log_completions:
        trainer.completion_log = CompletionLog(Path(cfg.output_dir) / "completions.jsonl")
    return trainer


def rollout_sampler_for(cfg: TrainConfig) -> str:
    """The rollout sampler this machine runs ``cfg`` with (``auto`` resolved: endorm.rl.rollout)."""
    import torch

    from endorm.rl.rollout import resolve_rollout_sampler

    cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    return resolve_rollout_sampler(cfg.rollout_sampler, "cuda" if cuda else "cpu")


def record_invocation(cfg: TrainConfig, resumed_from: str | None) -> dict[str, Any]:
    """Append one line per ``train`` call to ``output_dir/invocations.jsonl``: when, on which machine, from
    which checkpoint and with which rollout sampler. A 100-step CPU run spans sessions and machines, and a
    step's time (the curves' elapsed_s) means little without the CPU that ran it."""
    import datetime
    import json
    import platform

    import torch

    from endorm.rl.rollout import cpu_has_bf16

    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        cpuinfo = ""
    names = [line.partition(":")[2].strip() for line in cpuinfo.splitlines() if line.startswith("model name")]
    cpu = names[0] if names else platform.processor() or platform.machine()
    row = {"started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "resumed_from": resumed_from, "rollout_sampler": cfg.rollout_sampler,
           "rollout_sampler_used": rollout_sampler_for(cfg), "cpu": cpu, "cpu_bf16": cpu_has_bf16(cpuinfo),
           "threads": torch.get_num_threads(), "torch": torch.__version__}
    with open(Path(cfg.output_dir) / "invocations.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    log.info("rollouts: %s (rollout_sampler %s)", row["rollout_sampler_used"], cfg.rollout_sampler)
    return row


def lora_config(cfg: TrainConfig) -> Any:
    """peft's LoraConfig for ``cfg.lora_r > 0`` (None = full fine-tuning)."""
    if cfg.lora_r == 0:
        return None
    try:
        from peft import LoraConfig
    except ImportError as e:
        raise ImportError("lora_r > 0 needs peft: pip install 'endorm[rl]'") from e
    targets = cfg.lora_target_modules.strip()
    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, task_type="CAUSAL_LM",
                      target_modules=targets if targets == "all-linear" else [t.strip() for t in targets.split(",")])


def last_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete ``checkpoint-N`` in ``output_dir``, or None.

    The Trainer writes ``trainer_state.json`` last, so a checkpoint without it was cut off mid-save (a kill
    during saving); resuming from it would fail, and the previous, complete one is used instead.
    """
    ckpts = [p for p in Path(output_dir).glob("checkpoint-*") if p.name.split("-")[-1].isdigit()]
    ckpts.sort(key=lambda p: int(p.name.split("-")[-1]))
    for p in reversed(ckpts):
        if (p / "trainer_state.json").is_file():
            return p
        log.warning("--resume: skipping the incomplete checkpoint %s (no trainer_state.json)", p)
    return None


def train(cfg: TrainConfig, **kwargs: Any) -> Path:
    """Run GRPO and save the final policy (with its tokenizer) to ``output_dir/final``."""
    import torch

    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not cfg.resume and (out / "curves.csv").exists():
        (out / "curves.csv").unlink()  # a fresh run starts a fresh curve
    trainer = build_trainer(cfg, **kwargs)
    resume = None
    if cfg.resume:
        last = last_checkpoint(out)
        resume = str(last) if last else None
        if resume is None:
            log.info("--resume: no checkpoint in %s, starting fresh", out)
    record_invocation(cfg, resume)
    trainer.train(resume_from_checkpoint=resume)
    final = out / "final"
    trainer.save_model(str(final))
    trainer.processing_class.save_pretrained(str(final))
    log.info("saved the policy to %s", final)
    return final
