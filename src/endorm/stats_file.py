"""Per-token log pi(a_t|s_t) and V(s_t) of scored responses, kept in a compact sidecar file.

One forward pass gives both arrays; every aggregation (sum, mean, discounted at any gamma, logprob)
and every contrast is a cheap function of them (``endorm.rewards.aggregate``). Keeping them means a
finished run can be re-aggregated without the model.

Format: a 16-byte header (the magic ``ENDORMS1`` and 8 random bytes, the file's id) followed by flat
little-endian float32 values. A response of n tokens is stored as n values of log pi(a_t|s_t) (at the
run's alpha) followed by n values of V(s_t). Its record points to it with ``[offset, n, crc32]``
(offset counted in float32 values from the start of the file, crc32 of the block's 8n bytes) and
names the file with ``token_stats_id`` (the id as 16 hex digits), so a record read against a missing,
shorter, rewritten or foreign file is an error, never another response's arrays. The file is only
appended to, flushed and fsynced before the JSONL record that points into it is written, so a crash
leaves at most unreferenced bytes at its end.

Files written before the header existed (no magic, records ``[offset, n]`` without an id) are still
read, unchecked beyond the range; a resumed run refuses to append to one (``check_for_resume``).
"""

from __future__ import annotations

import os
import secrets
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from endorm.scoring import TokenStats

_F32 = np.dtype("<f4")
MAGIC = b"ENDORMS1"
HEADER_BYTES = len(MAGIC) + 8  # magic + id
HEADER_VALUES = HEADER_BYTES // _F32.itemsize
ID_FIELD = "token_stats_id"  # the record field naming the sidecar its token_stats point into
REFS_FIELD = "token_stats"


class StatsError(ValueError):
    """A record's token-stats reference does not resolve in the sidecar (missing, shorter, foreign file)."""


def read_id(path: str | Path) -> str | None:
    """The sidecar's id (16 hex digits), or None for a file without the header (older format, or torn
    before the header was complete)."""
    with open(path, "rb") as f:
        head = f.read(HEADER_BYTES)
    if len(head) < HEADER_BYTES or not head.startswith(MAGIC):
        return None
    return head[len(MAGIC):].hex()


class StatsWriter:
    """Append TokenStats to a float32 sidecar; ``write`` returns each response's ``[offset, n, crc32]``
    and ``id`` is what records put in ``token_stats_id``."""

    def __init__(self, path: str | Path, resume: bool = False):
        self.path = Path(path)
        self.resume = resume
        self.id: str | None = None
        self._f = None  # opened at the first write, like endorm.io.JsonlWriter: a run that fails before
        # scoring anything (bad input, no model) leaves an existing file as it was

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        size = self.path.stat().st_size if self.resume and self.path.exists() else 0
        if size >= HEADER_BYTES:
            self.id = read_id(self.path)
            if self.id is None:  # ResumeCheck stops a resume before this; never append to an unchecked file
                raise StatsError(f"{self.path} has no endorm token-stats header (written by an older endorm?); "
                                 "cannot append to it")
            if size % _F32.itemsize:  # a torn last value from a crash: nothing points at it
                os.truncate(self.path, size - size % _F32.itemsize)
            self._f = open(self.path, "ab")
        else:  # new, or too short to hold a complete header (so no record can point into it)
            self.id = secrets.token_bytes(8).hex()
            self._f = open(self.path, "wb")
            self._f.write(MAGIC + bytes.fromhex(self.id))
        self._offset = self._f.seek(0, os.SEEK_END) // _F32.itemsize

    def write(self, stats: list[TokenStats]) -> list[list[int]]:
        if self._f is None:
            self._open()
        refs = []
        for s in stats:
            n = len(s.token_ids)
            block = np.concatenate([s.logprobs.numpy().astype(_F32), s.values.numpy().astype(_F32)]).tobytes()  # [2n]
            self._f.write(block)
            refs.append([self._offset, n, zlib.crc32(block)])
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


def iter_refs(token_stats: dict[str, Any]) -> Iterator[list[int]]:
    """Every reference of a record's ``token_stats``: ``{ctx: ref}`` (score) or ``{ctx: [ref, ...]}`` (eval)."""
    for v in token_stats.values():
        if v and isinstance(v[0], list):
            yield from v
        else:
            yield v


class StatsReader:
    """Read arrays back by their reference, each checked against the file (memory-mapped; nothing is
    loaded up front)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"no token-stats file at {self.path} (was the run made with token stats?)")
        size = self.path.stat().st_size
        self.id = read_id(self.path)
        self._data = np.memmap(self.path, dtype=_F32, mode="r", shape=(size // _F32.itemsize,)) \
            if size >= _F32.itemsize else np.zeros(0, dtype=_F32)

    def problem(self, ref: Any, file_id: str | None) -> str | None:
        """Why ``ref`` (of a record naming ``file_id``) does not resolve in this file, or None if it does."""
        if not (isinstance(ref, list) and len(ref) in (2, 3) and all(isinstance(x, int) for x in ref)):
            return f"reference {ref!r} is not [offset, n, crc32]"
        if file_id != self.id:
            if self.id is None:
                return (f"{self.path.name} has no header (an older endorm's format, or not a token-stats file) "
                        f"but the record points into the file {file_id}")
            if file_id is None:
                return (f"the record names no token-stats file ({ID_FIELD}): it predates checked token stats and "
                        f"cannot be read against {self.path.name} (id {self.id})")
            return f"the record points into the file {file_id}, but {self.path.name} is the file {self.id}"
        offset, n = ref[0], ref[1]
        if (len(ref) == 3) != (self.id is not None):
            return f"reference {ref} does not match the file's format"
        first = HEADER_VALUES if self.id is not None else 0
        if offset < first or n < 0 or offset + 2 * n > self._data.shape[0]:
            return (f"reference {ref[:2]} lies outside {self.path.name} ({self._data.shape[0]} values): the file is "
                    "shorter than its records say")
        if len(ref) == 3 and zlib.crc32(self._data[offset : offset + 2 * n].tobytes()) != ref[2]:
            return f"the arrays at {ref[:2]} in {self.path.name} fail their checksum (the file was changed)"
        return None

    def get(self, ref: list[int], file_id: str | None, where: str = "a record") -> tuple[torch.Tensor, torch.Tensor]:
        """(log pi [n], V [n]) as float32 tensors; a reference that does not resolve raises StatsError naming
        ``where`` (the record or row)."""
        why = self.problem(ref, file_id)
        if why is not None:
            raise StatsError(f"{where}: {why}")
        offset, n = ref[0], ref[1]
        t = torch.from_numpy(np.array(self._data[offset : offset + 2 * n]))  # [2n], copied out of the map
        return t[:n], t[n:]

    def record_problem(self, record: dict[str, Any]) -> str | None:
        """Why one of a record's references does not resolve, or None when all do (or it has none)."""
        file_id = record.get(ID_FIELD)
        for ref in iter_refs(record.get(REFS_FIELD) or {}):
            why = self.problem(ref, file_id)
            if why is not None:
                return why
        return None

    def arrays(self, record: dict[str, Any], where: str) -> dict[str, Any]:
        """A record's arrays in the shape of its ``token_stats``: ``{ctx: (lp, v)}`` or ``{ctx: [(lp, v), ...]}``."""
        refs, file_id = record.get(REFS_FIELD), record.get(ID_FIELD)
        if not refs:
            raise StatsError(f"{where}: has no {REFS_FIELD} (scored without token stats)")
        return {ctx: [self.get(r, file_id, where) for r in v] if v and isinstance(v[0], list)
                else self.get(v, file_id, where) for ctx, v in refs.items()}


@dataclass
class ResumeCheck:
    """Which finished records ``--resume`` may keep, given the sidecar they point into.

    ``bad``: indices of the records whose arrays do not resolve (all of them when the file is missing or
    foreign, or a record has no token stats); ``reason``: the first bad record's problem.
    """

    n: int
    bad: list[int]
    reason: str | None

    @property
    def prefix(self) -> int:
        """How many leading records resolve."""
        return self.bad[0] if self.bad else self.n

    @property
    def none_kept(self) -> bool:
        return len(self.bad) == self.n


def check_for_resume(path: str | Path, records: list[dict[str, Any]], what: str) -> ResumeCheck:
    """Check every finished record (each should have token stats) against the sidecar at ``path``.

    ``what`` names the output in messages. A sidecar without the header (written by an older endorm) stops
    the resume with StatsError: its records cannot be checked, and appending would mix two formats.
    """
    path = Path(path)
    if not records:
        return ResumeCheck(0, [], None)
    if not path.exists() or path.stat().st_size < HEADER_BYTES:
        reason = f"{path.name} is missing" if not path.exists() else f"{path.name} is cut off inside its header"
        return ResumeCheck(len(records), list(range(len(records))), reason)
    if read_id(path) is None:
        raise StatsError(f"--resume: {path} predates checked token stats (no header; its records carry no file id or "
                         f"checksum), so the arrays of {what}'s finished records cannot be verified. Rerun with "
                         f"--overwrite, or delete {path.name} to have --resume rescore them")
    reader = StatsReader(path)
    bad, reason = [], None
    for i, rec in enumerate(records):
        why = reader.record_problem(rec) if rec.get(REFS_FIELD) else f"has no {REFS_FIELD}"
        if why is not None:
            bad.append(i)
            reason = reason or why
    return ResumeCheck(len(records), bad, reason)
