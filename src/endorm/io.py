"""JSONL rows in and out: validation that names the line and field, and an append-only writer that
lets an interrupted run resume with no duplicates and no gaps."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from endorm.chat import Example, RowError


def read_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, row) for each non-blank line; a malformed line raises RowError naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"input file not found: {path}")
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise RowError(f"{path.name} line {n}", f"malformed JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(row, dict):
                raise RowError(f"{path.name} line {n}", f"expected a JSON object, got {type(row).__name__}")
            yield n, row


def row_to_example(row: dict[str, Any], where: int | str | None = None) -> Example:
    """``{"prompt", "response"}`` or ``{"messages": [...]}`` (last message the assistant's), optional ``system``."""
    system = row.get("system")
    if system is not None and not isinstance(system, str):
        raise RowError(where, f"must be a string, got {type(system).__name__}", "system")
    if "messages" in row:
        msgs = row["messages"]
        if not isinstance(msgs, list):
            raise RowError(where, f"must be a list of messages, got {type(msgs).__name__}", "messages")
        return Example(msgs, system, row=where)
    for name in ("prompt", "response"):
        if name not in row:
            raise RowError(where, "missing (rows need 'prompt' and 'response', or 'messages')", name)
        if not isinstance(row[name], str):
            raise RowError(where, f"must be a string, got {type(row[name]).__name__}", name)
    return Example.from_pair(row["prompt"], row["response"], system, row=where)


def count_complete_lines(path: Path) -> int:
    """Number of complete JSON lines; a torn last line (from a crash) is cut off the file."""
    if not path.exists():
        return 0
    with open(path, "rb+") as f:
        data = f.read()
        keep = data.rfind(b"\n") + 1 if not data.endswith(b"\n") else len(data)
        if keep != len(data):
            f.truncate(keep)
    n = 0
    for line in data[:keep].splitlines():
        if line.strip():
            json.loads(line)
            n += 1
    return n


class JsonlWriter:
    """Append rows to a JSONL file, flushed and fsynced per batch, so finished rows survive a crash."""

    def __init__(self, path: str | Path, resume: bool = False, overwrite: bool = False):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        exists = self.path.exists() and self.path.stat().st_size > 0
        if exists and not (resume or overwrite):
            raise FileExistsError(f"{self.path} exists; pass --resume to continue it or --overwrite to replace it")
        self.done = count_complete_lines(self.path) if resume else 0
        self._f = open(self.path, "a" if resume else "w", encoding="utf-8")

    def write(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            self._f.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())
        self.done += len(rows)

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
