"""GRPO (TRL) on the frozen base model's endogenous reward, or an intrinsic/supervised baseline."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from endorm.rl.config import TrainConfig

log = logging.getLogger(__name__)

Config = TrainConfig


def run(config: TrainConfig) -> int:
    from endorm.rl.trainer import train

    t0 = time.time()
    final = train(config)
    out = Path(config.output_dir)
    (out / "train_config.json").write_text(json.dumps(vars(config), indent=2))
    print(f"trained {config.max_steps} steps with reward={config.reward}, beta={config.beta} in "
          f"{time.time() - t0:.0f} s; policy: {final}; curves: {out / 'curves.csv'}, {out / 'curves.png'}")
    return 0
