"""Output rows of ``endorm score``: the input row with its reward added.

Lives below both ``endorm.commands.score`` (one process) and ``endorm.distributed.ray_engine`` (Ray
actors), so the two build identical rows without importing each other.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from endorm.reward_model import EndogenousRewardModel


def scored_row(row: dict[str, Any], rm: EndogenousRewardModel, stats: Any, tokens: bool,
               base: Any = None) -> dict[str, Any]:
    """The input row, every field kept, with "reward" (and "token_rewards") added.

    ``base``: the TokenStats of the row's contrast context when ``rm`` has a contrast (else None)."""
    out = dict(row)
    if tokens:
        view = rm.token_view(stats, base)
        out["reward"] = view.total
        out["token_rewards"] = view.to_dict()
    else:
        out["reward"] = rm.totals([stats], None if base is None else [base])[0]
    return out
