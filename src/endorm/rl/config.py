"""``TrainConfig``: every setting of ``endorm train`` (GRPO on the endogenous reward), readable from YAML."""

from __future__ import annotations

from dataclasses import dataclass, field

from endorm.reward_model import RewardConfig
from endorm.rl.rewards import REWARDS


@dataclass
class TrainConfig:
    """GRPO (TRL's GRPOTrainer) of a policy on the frozen base model's endogenous reward or a baseline."""

    model: str | None = field(
        default=None,
        metadata={"help": "policy to train: registry name, local HF dir or hub id (default: SmolLM2-135M-Instruct)"},
    )
    reward: str = field(default="endogenous", metadata={"help": f"reward: {' | '.join(REWARDS)}"})
    reward_model: str | None = field(
        default=None, metadata={"help": "frozen reward model for the model-based rewards (default: the policy's base)"}
    )
    alpha: float = field(default=RewardConfig.alpha, metadata={"help": "alpha of the endogenous reward (soft-Q temperature)"})
    aggregation: str = field(default=RewardConfig.aggregation, metadata={
        "help": "endogenous reward's aggregation: sum (the paper's formula as written) | mean | discounted | logprob"})
    gamma: float = field(default=RewardConfig.gamma, metadata={"help": "endogenous reward's discount"})
    contrast: str = field(default=RewardConfig.contrast, metadata={"help": "endogenous reward's contrast: none | prompt | system"})
    format_gate: bool = field(default=False, metadata={
        "help": "a completion with no extractable final answer gets its group's lowest reward (RENT's gate)"})
    endogenous_weight: float = field(default=0.0, metadata={
        "help": "add this weight times the endogenous reward (aggregation, gamma above) to a non-endogenous "
                "reward, e.g. correctness + lambda * endogenous (the paper's hybrid; TRL's reward_weights)"})
    dataset: str = field(
        default="gsm8k-train",
        metadata={"help": "training prompts: a benchmark name of `endorm math-eval` (e.g. gsm8k-train) or a .jsonl"},
    )
    prompt_template: str = field(
        default="short", metadata={"help": "question template: short | gsm8k | boxed | plain (endorm.mathx.generate)"}
    )
    num_prompts: int | None = field(default=None, metadata={"help": "use a seeded random subset of this many prompts"})
    max_question_chars: int | None = field(
        default=None, metadata={"help": "keep only questions of at most this many characters (cheaper CPU steps)"}
    )
    output_dir: str = field(default="runs/train", metadata={"help": "checkpoints, curves.csv/png, final policy"})
    max_steps: int = field(default=100, metadata={"help": "optimizer steps"})
    beta: float = field(default=0.01, metadata={"help": "KL coefficient to the reference (base) model (paper: 0.01)"})
    learning_rate: float = field(default=1e-6, metadata={"help": "AdamW learning rate"})
    num_generations: int = field(default=4, metadata={"help": "completions per prompt (GRPO group size)"})
    per_device_train_batch_size: int = field(
        default=8, metadata={"help": "completions per step (a multiple of num_generations)"}
    )
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "micro-batches per optimizer step"})
    max_completion_length: int = field(default=64, metadata={"help": "max new tokens per completion"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature of the rollouts"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling of the rollouts"})
    loss_type: str = field(default="dapo", metadata={"help": "TRL GRPO loss: grpo | dr_grpo | dapo | bnpo ..."})
    scale_rewards: str = field(default="group", metadata={"help": "advantage scaling: group | batch | none"})
    num_iterations: int = field(default=1, metadata={"help": "policy updates per generated batch (mu)"})
    seed: int = field(default=0, metadata={"help": "seed for prompt subset, sampling and init"})
    logging_steps: int = field(default=1, metadata={"help": "log (CSV row) every this many steps"})
    log_completions: bool = field(default=True, metadata={
        "help": "append each logged step's prompts, completions, rewards and advantages to output_dir/completions.jsonl"
                " (with logging_steps > 1, only the last step's before each log)"})
    save_steps: int = field(default=50, metadata={"help": "checkpoint every this many steps (for --resume)"})
    save_total_limit: int = field(default=1, metadata={"help": "checkpoints kept"})
    resume: bool = field(default=False, metadata={"help": "continue from the last checkpoint in output_dir"})
    num_threads: int | None = field(default=None, metadata={"help": "torch CPU threads (default: torch's choice)"})
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda (auto: cuda when available)"})
    bf16: bool = field(default=False, metadata={"help": "bf16 mixed precision (GPU); float32 otherwise"})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "trade compute for memory"})
    lora_r: int = field(default=0, metadata={"help": "LoRA rank through peft (0 = full fine-tuning); the KL reference "
                                             "is then the base with the adapter disabled"})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA scaling alpha"})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout"})
    lora_target_modules: str = field(default="q_proj,k_proj,v_proj,o_proj", metadata={
        "help": "comma-separated module names LoRA adapts, or all-linear"})
    rollout_sampler: str = field(default="policy", metadata={
        "help": "policy (TRL's generation) | float32 (a float32 copy of the current policy, LoRA merged, refreshed "
                "each step) | bf16 (a bfloat16 copy: 2.5x float32 on a CPU with AVX-512 BF16, 1.1x in a GRPO step on "
                "AVX2 only; 0.0002 nats/token off-policy) | int8 (an int8 copy, static KV cache: faster, 0.3 nats/token "
                "off-policy) | auto (bf16 on a CPU, policy on a GPU); endorm.rl.rollout"})
    cache_implementation: str | None = field(default=None, metadata={
        "help": "KV cache of TRL's own generation (e.g. static: faster on a CPU, same samples)"})
    report_to: str = field(default="none", metadata={"help": "transformers report_to (none | tensorboard | wandb)"})

    def __post_init__(self) -> None:
        if self.reward not in REWARDS:
            raise ValueError(f"reward: unknown {self.reward!r}; use one of {', '.join(REWARDS)}")
        if self.num_generations < 2:
            raise ValueError("num_generations: GRPO needs at least 2 completions per prompt")
        if self.per_device_train_batch_size * self.gradient_accumulation_steps % self.num_generations:
            raise ValueError(
                "per_device_train_batch_size * gradient_accumulation_steps must be a multiple of num_generations "
                f"(got {self.per_device_train_batch_size} * {self.gradient_accumulation_steps} and {self.num_generations})"
            )
        if self.beta < 0:
            raise ValueError("beta: the KL coefficient must be >= 0")
        if self.alpha <= 0:
            raise ValueError("alpha must be > 0")
        if self.max_steps < 1:
            raise ValueError("max_steps must be >= 1")
        if self.endogenous_weight < 0:
            raise ValueError("endogenous_weight must be >= 0")
        if self.endogenous_weight and self.reward == "endogenous":
            raise ValueError("endogenous_weight adds the endogenous reward to another reward; with reward: "
                             "endogenous leave it 0")
        if self.lora_r < 0:
            raise ValueError("lora_r must be >= 0 (0 = full fine-tuning)")
        from endorm.rl.rollout import ROLLOUT_SAMPLERS

        if self.rollout_sampler not in ROLLOUT_SAMPLERS:
            raise ValueError(f"rollout_sampler: unknown {self.rollout_sampler!r}; use one of {', '.join(ROLLOUT_SAMPLERS)}")
