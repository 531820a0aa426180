"""``endorm score --engine ray``: distributed batch scoring with Ray Data.

The rows go into a Ray Dataset as ``(index, JSON text)`` pairs (JSON keeps arbitrary, heterogeneous
rows intact through Arrow), ``map_batches`` runs them through a pool of actors that each hold one
model replica (one GPU each with ``num_gpus_per_actor=1``), and the driver writes the scored rows back
in input order as they arrive. Each actor scores with the same code as the single-process path
(``endorm.rows.scored_row`` on ``endorm.scoring.compute_stats``), so the output rows have the
same fields and, up to float32 rounding between batch compositions, the same numbers.

On a laptop this starts a local Ray cluster; on a real cluster, set ``RAY_ADDRESS=auto`` (or pass
``address``) and the same call schedules the actors across the cluster's nodes.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import fields
from typing import Any

from endorm.reward_model import RewardConfig

log = logging.getLogger(__name__)


def _reward_kwargs(config: Any) -> dict[str, Any]:
    kw = {f.name: getattr(config, f.name) for f in fields(RewardConfig) if hasattr(config, f.name)}
    system = getattr(config, "system", None)  # endorm score's --system overrides --system-prompt
    if system is not None:
        kw["system_prompt"] = system
    return kw


class RowScorer:
    """A Ray Data actor: loads one model replica, then scores batches of ``{"i", "row"}`` (JSON rows)."""

    def __init__(self, config: Any, model_factory: Callable[[], tuple[Any, Any]] | None = None,
                 device: str | None = None, threads: int | None = None):
        import torch

        from endorm.reward_model import EndogenousRewardModel

        if threads:
            # Ray sets OMP_NUM_THREADS to the actor's CPUs only when the driver's environment leaves it unset;
            # an inherited value would let every actor use every core (and round differently from the driver)
            torch.set_num_threads(threads)

        kw = _reward_kwargs(config)
        if model_factory is not None:
            model, tok = model_factory()
            if device:
                model = model.to(device)
            self.rm = EndogenousRewardModel.from_model(model, tok, **kw)
        else:
            self.rm = EndogenousRewardModel.from_pretrained(
                getattr(config, "model", None), dtype=getattr(config, "dtype", "float32"),
                device=device or getattr(config, "device", "cpu"), **kw)
        self.tokens = bool(getattr(config, "tokens", False))

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import numpy as np

        from endorm.io import row_to_example
        from endorm.rows import scored_row

        rm = self.rm
        rows = [json.loads(s) for s in batch["row"]]
        stats, base = rm.stats_with_contrast([row_to_example(r, where=f"row {int(i)}")
                                              for i, r in zip(batch["i"], rows, strict=True)])
        out = [json.dumps(scored_row(r, rm, s, self.tokens, None if base is None else base[k]), ensure_ascii=False)
               for k, (r, s) in enumerate(zip(rows, stats, strict=True))]
        return {"i": np.asarray(batch["i"]), "out": np.asarray(out, dtype=object)}


def score_rows_ray(
    rows: Sequence[dict[str, Any]],
    config: Any,
    num_actors: int | None = None,
    writer: Any = None,
    *,
    batch_size: int = 64,
    num_gpus_per_actor: float | None = None,
    num_cpus_per_actor: float = 1.0,
    model_factory: Callable[[], tuple[Any, Any]] | None = None,
    address: str | None = None,
) -> list[dict[str, Any]] | int:
    """Score ``rows`` on a Ray actor pool; the scored rows in input order.

    Args:
        rows: input rows (``{"prompt", "response"}`` or ``{"messages"}``, optional ``system``; extra fields kept).
        config: ``endorm score``'s Config (or any object with RewardConfig fields plus ``model``, ``dtype``,
            ``device``, ``tokens``, ``num_actors``).
        num_actors: model replicas (default ``config.num_actors``, else 1).
        writer: a ``JsonlWriter``; if given, rows are written in order as they finish and the count is
            returned instead of the list.
        batch_size: rows per actor call (each call runs ``config.batch_size`` rows per forward pass).
        num_gpus_per_actor: GPUs per replica (default 1 when ``config.device`` starts with cuda, else 0).
        num_cpus_per_actor: CPUs reserved per replica; on CPU each replica also runs that many torch threads.
        model_factory: picklable ``() -> (model, tokenizer)`` to use instead of loading ``config.model``.
        address: Ray cluster address (default: ``RAY_ADDRESS`` or a new local cluster).
    """
    import ray

    n_actors = int(num_actors or getattr(config, "num_actors", 1) or 1)
    if n_actors < 1:
        raise ValueError(f"num_actors must be >= 1, got {n_actors}")
    rows = list(rows)
    if not rows:
        return 0 if writer is not None else []
    device = getattr(config, "device", "cpu") or "cpu"
    gpus = num_gpus_per_actor if num_gpus_per_actor is not None else (1.0 if device.startswith("cuda") else 0.0)
    actor_device = "cuda" if gpus > 0 else device  # Ray sets CUDA_VISIBLE_DEVICES per actor
    threads = max(1, int(num_cpus_per_actor)) if actor_device == "cpu" else None

    started = False
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
        started = True
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.execution_options.preserve_order = True
        ds = ray.data.from_items([{"i": i, "row": json.dumps(r, ensure_ascii=False)} for i, r in enumerate(rows)])
        ds = ds.map_batches(
            RowScorer,
            fn_constructor_kwargs={"config": config, "model_factory": model_factory, "device": actor_device,
                                   "threads": threads},
            batch_size=batch_size,
            batch_format="numpy",
            concurrency=n_actors,  # a fixed pool of n_actors actors, each with its own model
            num_cpus=num_cpus_per_actor,
            num_gpus=gpus,
        )
        return _collect(ds.iter_rows(), len(rows), writer)
    finally:
        if started:
            ray.shutdown()


def _collect(results: Iterable[dict[str, Any]], n: int, writer: Any) -> list[dict[str, Any]] | int:
    """Put results back in input order; with a writer, write each contiguous run as soon as it is complete."""
    pending: dict[int, dict[str, Any]] = {}
    done: list[dict[str, Any]] = []
    nxt = written = 0
    for r in results:
        pending[int(r["i"])] = json.loads(r["out"])
        ready = []
        while nxt in pending:
            ready.append(pending.pop(nxt))
            nxt += 1
        if ready:
            if writer is not None:
                writer.write(ready)
                written += len(ready)
            else:
                done.extend(ready)
    if nxt != n or pending:
        raise RuntimeError(f"Ray returned {nxt} of {n} rows in order ({len(pending)} out of order): rows lost")
    return written if writer is not None else done
