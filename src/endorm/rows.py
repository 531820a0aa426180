"""Output rows of ``endorm score``: the input row with its reward added.

Lives below both ``endorm.commands.score`` (one process) and ``endorm.distributed.ray_engine`` (Ray
actors), so the two build identical rows without importing each other.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from endorm.reward_model import EndogenousRewardModel


def scored_row(row: dict[str, Any], rm: EndogenousRewardModel, stats: Any, tokens: bool) -> dict[str, Any]:
    """The input row, every field kept, with "reward" (and "token_rewards") added."""
    out = dict(row)
    if tokens:
        view = rm.token_view(stats)
        out["reward"] = view.total
        out["token_rewards"] = view.to_dict()
    else:
        out["reward"] = rm.outcome(stats)[1]
    return out
