"""RL on the endogenous reward: GRPO through TRL (``endorm train``), with intrinsic and supervised baselines."""

from endorm.rl.config import TrainConfig
from endorm.rl.rewards import REWARDS, make_reward_func

__all__ = ["REWARDS", "TrainConfig", "make_reward_func"]
