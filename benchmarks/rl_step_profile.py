"""Where a GRPO step's time goes on this machine: rollout, reward, reference and policy passes.

Builds the trainer of an ``endorm train`` config through ``endorm.rl.trainer.build_trainer`` (the real entry
point's builder) and wraps four of its parts in wall-clock timers, without changing what they compute:

- ``rollout``:   ``_generate_single_turn`` (sampling the group's completions, including the bf16 copy);
- ``reward``:    each reward function's ``__call__`` (the endogenous reward's frozen-model pass, graders);
- ``reference``: ``_get_per_token_logps_and_entropies`` under ``torch.no_grad`` (the KL's reference pass;
                 with LoRA, TRL runs it as the policy with the adapter disabled);
- ``policy``:    the rest of ``training_step`` (the policy's forward, backward and the optimizer step).

    python benchmarks/rl_step_profile.py --config configs/qwen05_grpo_endogenous.yaml --steps 2 \
        --json records/rl/qwen05/step_profile.json

Prints one line per step and the mean share of each part; writes them as JSON. The first step includes
one-off costs (the bf16 copy's first build is the same each step; loading the model is not counted).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections import defaultdict
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True, help="an endorm train YAML config")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--output_dir", default="runs/step_profile")
    ap.add_argument("--json", default=None, help="write the per-step timings here")
    args = ap.parse_args()

    import torch

    from endorm.cli import parse_config
    from endorm.rl.config import TrainConfig
    from endorm.rl.trainer import build_trainer

    cfg = parse_config(TrainConfig, ["--config", args.config, "--max_steps", str(args.steps),
                                     "--save_steps", "100000", "--output_dir", args.output_dir])
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    t_load = time.perf_counter()
    trainer = build_trainer(cfg)
    t_load = time.perf_counter() - t_load

    spent: dict[str, float] = defaultdict(float)

    def timed(name: str, fn):
        def wrapper(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                spent[name] += time.perf_counter() - t
        return wrapper

    trainer._generate_single_turn = timed("rollout", trainer._generate_single_turn)
    trainer.reward_funcs = [timed("reward", f) if callable(f) and not isinstance(f, torch.nn.Module) else f
                            for f in trainer.reward_funcs]
    inner_logps = trainer._get_per_token_logps_and_entropies

    def logps(*a, **k):  # no_grad passes outside the loss are the reference (and old-policy) passes
        name = "policy" if torch.is_grad_enabled() else "reference"
        return timed(name + "_logps", inner_logps)(*a, **k)

    trainer._get_per_token_logps_and_entropies = logps
    inner_step = trainer.training_step
    rows = []

    def step(*a, **k):
        before = dict(spent)
        t = time.perf_counter()
        out = inner_step(*a, **k)
        total = time.perf_counter() - t
        parts = {n: spent[n] - before.get(n, 0.0) for n in spent}
        parts["policy_rest"] = total - sum(parts.values())  # forward+backward bookkeeping, optimizer
        rows.append({"step": len(rows) + 1, "total_s": total, **{k2: round(v, 2) for k2, v in parts.items()}})
        print(json.dumps(rows[-1]), flush=True)
        return out

    trainer.training_step = step
    trainer.train()
    keys = sorted({k for r in rows for k in r if k not in ("step", "total_s")})
    mean_total = sum(r["total_s"] for r in rows) / len(rows)
    share = {k: sum(r.get(k, 0.0) for r in rows) / len(rows) / mean_total for k in keys}
    print(f"mean step {mean_total:.1f} s over {len(rows)} steps (model load {t_load:.0f} s); shares: "
          + ", ".join(f"{k} {v:.0%}" for k, v in share.items()))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({
            "config": args.config, "steps": rows, "mean_step_s": mean_total, "share": share,
            "model_load_s": t_load, "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
            "date": time.strftime("%Y-%m-%d")}, indent=2) + "\n")


if __name__ == "__main__":
    main()
