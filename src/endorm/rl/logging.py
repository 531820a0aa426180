"""Per-step training curves: a TrainerCallback that appends TRL's logged metrics to a CSV and redraws a PNG.

Columns: step, elapsed seconds, reward (mean over the batch), reward_std, kl (to the reference model, only
logged by TRL when beta > 0), completion mean length, entropy (of the policy over completion tokens),
loss, learning rate, the process's peak RSS, and the mean of every reward function (``rewards/<name>/mean``,
the weight-0 monitors ``answered`` and ``distinct_answers`` included). The CSV is flushed
every step, so a run that is stopped keeps its curve; a resumed run appends.

``completions.jsonl`` beside it keeps what the curves average: one row per completion (step, prompt, completion,
each reward function's value, the group advantage), so a step's reward can be checked by reading its samples.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from endorm.io import replace_file
from endorm.rl.rewards import completion_text  # the text the rewards grade

__all__ = ["CurveLogger", "CompletionLog", "completion_rows", "plot_curves", "read_curves", "CURVE_COLUMNS"]

CURVE_COLUMNS = ["step", "elapsed_s", "reward", "reward_std", "kl", "completion_length", "entropy", "loss",
                 "learning_rate", "clipped_ratio", "peak_rss_mb"]
# TRL's metric names -> ours
_TRL_KEYS = {
    "reward": "reward",
    "reward_std": "reward_std",
    "kl": "kl",
    "completions/mean_length": "completion_length",
    "entropy": "entropy",
    "loss": "loss",
    "learning_rate": "learning_rate",
    "completions/clipped_ratio": "clipped_ratio",
}


class CurveLogger(TrainerCallback):
    """Write ``curves.csv`` (one row per logging step) and redraw ``curves.png`` every ``plot_every`` rows."""

    def __init__(self, output_dir: str | Path, plot_every: int = 10, title: str = ""):
        self.dir = Path(output_dir)
        self.csv_path = self.dir / "curves.csv"
        self.png_path = self.dir / "curves.png"
        self.plot_every = plot_every
        self.title = title
        self._t0 = time.time()
        self._columns: list[str] | None = None
        self._rows = 0

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self._t0 = time.time()
        if self.csv_path.exists():
            with self.csv_path.open(newline="") as f:
                rows = list(csv.reader(f))
            self._columns = rows[0] if rows and rows[0] else None
            if self._columns and len(rows) > 1:
                last = dict(zip(self._columns, rows[-1], strict=False))
                if last.get("elapsed_s"):
                    self._t0 -= float(last["elapsed_s"])  # a resumed run continues the clock

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if not logs or "reward" not in logs:  # the final train summary has no reward
            return
        if self._rows == 0 and self.csv_path.exists():
            self._drop_rows_from(state.global_step)
        row: dict[str, Any] = {"step": state.global_step, "elapsed_s": round(time.time() - self._t0, 2),
                               "peak_rss_mb": round(_peak_rss_mb(), 1)}
        for k, ours in _TRL_KEYS.items():
            if k in logs:
                row[ours] = logs[k]
        for k, v in logs.items():
            if k.startswith("rewards/") and k.endswith("/mean"):
                row["reward_" + k.split("/")[1]] = v
        if self._columns is None:
            extra = sorted(c for c in row if c not in CURVE_COLUMNS)
            self._columns = CURVE_COLUMNS + extra
            _replace_rows(self.csv_path, [self._columns])  # atomic: a reader or a kill never sees it half-made
        with self.csv_path.open("a", newline="") as f:
            csv.writer(f).writerow([_fmt(row.get(c)) for c in self._columns])
        self._rows += 1
        if self.plot_every and self._rows % self.plot_every == 0:
            plot_curves({self.title or "run": self.csv_path}, self.png_path)

    def _drop_rows_from(self, step: int) -> None:
        # a run resumed from checkpoint k re-logs steps k+1...; drop the rows logged after that checkpoint
        with self.csv_path.open(newline="") as f:
            rows = list(csv.reader(f))
        if len(rows) <= 1:
            return
        keep = [rows[0]] + [r for r in rows[1:] if r and int(float(r[0])) < step]
        if len(keep) != len(rows):
            _replace_rows(self.csv_path, keep)  # atomic: a kill here keeps every finished row

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.csv_path.exists():
            plot_curves({self.title or "run": self.csv_path}, self.png_path)


def _replace_rows(path: Path, rows: Sequence[Sequence[Any]]) -> None:
    # truncating in place would leave an empty curves.csv to a kill (or a reader) between truncate and write
    buf = io.StringIO(newline="")
    csv.writer(buf).writerows(rows)
    replace_file(path, buf.getvalue())


def _prompt_text(x: Any) -> str:
    # a conversational prompt is a list of messages; the last one holds the question
    if isinstance(x, list) and x and isinstance(x[-1], dict):
        return str(x[-1].get("content", ""))
    return str(x)


def _num(v: Any) -> float | None:
    v = float(v)
    return None if math.isnan(v) else round(v, 6)


def completion_rows(step: int, prompts: Sequence[Any], completions: Sequence[Any],
                    rewards: dict[str, Sequence[float]], advantages: Sequence[float]) -> list[dict[str, Any]]:
    """One JSON-able row per completion; ``rewards`` maps each reward function's name to its values
    (NaN, TRL's "not scored", becomes null). Raises when the columns' lengths differ, rather than misalign."""
    n = len(completions)
    lengths = {"prompts": len(prompts), "advantages": len(advantages), **{k: len(v) for k, v in rewards.items()}}
    bad = {k: m for k, m in lengths.items() if m != n}
    if bad:
        raise ValueError(f"step {step}: {n} completions but {bad}")
    return [{"step": step, "prompt": _prompt_text(prompts[i]), "completion": completion_text(completions[i]),
             "rewards": {k: _num(v[i]) for k, v in rewards.items()}, "advantage": _num(advantages[i])}
            for i in range(n)]


class CompletionLog:
    """Append-only ``completions.jsonl``; the first append of a resumed run drops rows from its step on
    (steps after the checkpoint it resumed from, logged by the interrupted run and about to be redone)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._first = True

    def append(self, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        if self._first and self.path.exists():
            step = rows[0]["step"]
            kept = [line for line in self.path.read_text().splitlines()
                    if line.strip() and json.loads(line)["step"] < step]
            self.path.write_text("".join(line + "\n" for line in kept))
        self._first = False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def _peak_rss_mb() -> float:
    """The process's peak resident memory so far, in MiB (Linux reports KiB, macOS bytes)."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.6g}"
    return str(v)


def read_curves(path: str | Path) -> dict[str, list[float]]:
    """Columns of a curves CSV as float lists (blank cells become NaN)."""
    with Path(path).open() as f:
        rows = list(csv.DictReader(f))
    cols: dict[str, list[float]] = {}
    for r in rows:
        for k, v in r.items():
            cols.setdefault(k, []).append(float(v) if v not in ("", None) else float("nan"))
    return cols


def _smooth(xs: list[float], w: int) -> list[float]:
    out, acc = [], []
    for x in xs:
        acc.append(x)
        acc = acc[-w:]
        good = [a for a in acc if not math.isnan(a)]
        out.append(sum(good) / len(good) if good else float("nan"))
    return out


def plot_curves(runs: dict[str, str | Path], out_png: str | Path, smooth: int = 5,
                panels: tuple[str, ...] = ("reward", "kl", "completion_length", "entropy")) -> Path:
    """One panel per metric, one line per run (raw faint, moving average ``smooth`` bold)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4))
    for (label, path), color in zip(runs.items(), plt.rcParams["axes.prop_cycle"].by_key()["color"], strict=False):
        cols = read_curves(path)
        steps = cols.get("step", [])
        for ax, key in zip(axes, panels, strict=True):
            ys = cols.get(key)
            if not ys or all(math.isnan(y) for y in ys):
                continue
            ax.plot(steps, ys, color=color, alpha=0.25, lw=1)
            ax.plot(steps, _smooth(ys, smooth), color=color, lw=2, label=label)
    for ax, key in zip(axes, panels, strict=True):
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
