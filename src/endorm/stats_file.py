"""Per-token log pi(a_t|s_t) and V(s_t) of scored responses, kept in a compact sidecar file.

One forward pass gives both arrays; every aggregation (sum, mean, discounted at any gamma, logprob)
and every contrast is a cheap function of them (``endorm.rewards.aggregate``). Keeping them means a
finished run can be re-aggregated without the model.

Format: a flat little-endian float32 file. A response of n tokens is stored as n values of
log pi(a_t|s_t) (at the run's alpha) followed by n values of V(s_t); its record points to it with ``[offset, n]`` (offset counted in float32 values). The file is only
appended to, flushed and fsynced before the JSONL record that points into it is written, so a crash
leaves at most unreferenced bytes at its end, never a record pointing at missing data.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from endorm.scoring import TokenStats

_F32 = np.dtype("<f4")


class StatsWriter:
    """Append TokenStats to a float32 sidecar; ``write`` returns each response's ``[offset, n]``."""

    def __init__(self, path: str | Path, resume: bool = False):
        self.path = Path(path)
        self.resume = resume
        self._f = None  # opened at the first write, like endorm.io.JsonlWriter: a run that fails before
        # scoring anything (bad input, no model) leaves an existing file as it was

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.resume and self.path.exists():
            size = self.path.stat().st_size
            if size % _F32.itemsize:  # a torn last value from a crash: nothing points at it
                os.truncate(self.path, size - size % _F32.itemsize)
            self._f = open(self.path, "ab")
        else:
            self._f = open(self.path, "wb")
        self._offset = self._f.seek(0, os.SEEK_END) // _F32.itemsize

    def write(self, stats: list[TokenStats]) -> list[list[int]]:
        if self._f is None:
            self._open()
        refs = []
        for s in stats:
            n = len(s.token_ids)
            block = np.concatenate([s.logprobs.numpy().astype(_F32), s.values.numpy().astype(_F32)])  # [2n]
            self._f.write(block.tobytes())
            refs.append([self._offset, n])
            self._offset += 2 * n
        self._f.flush()
        os.fsync(self._f.fileno())
        return refs

    def close(self) -> None:
        if self._f is not None:
            self._f.close()

    def __enter__(self) -> StatsWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class StatsReader:
    """Read arrays back by their ``[offset, n]`` reference (memory-mapped; nothing is loaded up front)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"no token-stats file at {self.path} (was the run made with token stats?)")
        size = self.path.stat().st_size
        self._data = np.memmap(self.path, dtype=_F32, mode="r") if size else np.zeros(0, dtype=_F32)

    def get(self, ref: list[int] | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(log pi [n], V [n]) as float32 tensors."""
        offset, n = int(ref[0]), int(ref[1])
        if offset < 0 or n < 0 or offset + 2 * n > self._data.shape[0]:
            raise ValueError(f"{self.path}: reference {[offset, n]} lies outside the file "
                             f"({self._data.shape[0]} values); the file does not belong to this run")
        block = np.array(self._data[offset : offset + 2 * n])  # [2n], copied out of the map
        t = torch.from_numpy(block)
        return t[:n], t[n:]
