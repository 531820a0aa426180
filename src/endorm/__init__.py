"""endorm: the endogenous reward of any causal language model (arXiv 2506.23235)."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["EndogenousRewardModel", "__version__"]


def __getattr__(name: str):
    # keep `import endorm` light: torch and transformers load only when the model class is used
    if name == "EndogenousRewardModel":
        from endorm.reward_model import EndogenousRewardModel

        return EndogenousRewardModel
    raise AttributeError(name)
