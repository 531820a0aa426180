"""JSONL rows in and out: validation that names the line and field, and an append-only writer that
lets an interrupted run resume with no duplicates and no gaps."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from endorm.chat import Example, RowError


def json_type(v: Any) -> str:
    """The JSON name of a parsed value's type, for messages about rows (null, not NoneType)."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, (int, float)):
        return "a number"
    return {dict: "an object", list: "an array", str: "a string"}.get(type(v), type(v).__name__)


def read_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, row) for each non-blank line; a malformed line raises RowError naming it.

    Lines may end in LF or CRLF and the file may start with a UTF-8 byte-order mark; both are accepted.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"input file not found: {path}")
    with open(path, "rb") as f:
        for n, raw in enumerate(f, start=1):
            if n == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]  # a byte-order mark (Windows editors write one)
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise RowError(f"{path.name} line {n}",
                               f"not valid UTF-8 (byte 0x{raw[e.start]:02x} at byte {e.start + 1} of the line)") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise RowError(f"{path.name} line {n}", f"malformed JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(row, dict):
                raise RowError(f"{path.name} line {n}", f"expected a JSON object, got {json_type(row)}")
            yield n, row


def row_to_example(row: dict[str, Any], where: int | str | None = None) -> Example:
    """``{"prompt", "response"}`` or ``{"messages": [...]}`` (last message the assistant's), optional ``system``."""
    system = row.get("system")
    if system is not None and not isinstance(system, str):
        raise RowError(where, f"must be a string, got {json_type(system)}", "system")
    if "messages" in row:
        msgs = row["messages"]
        if not isinstance(msgs, list):
            raise RowError(where, f"must be a list of messages, got {json_type(msgs)}", "messages")
        return Example(msgs, system, row=where)
    for name in ("prompt", "response"):
        if name not in row:
            raise RowError(where, "missing (rows need 'prompt' and 'response', or 'messages')", name)
        if not isinstance(row[name], str):
            raise RowError(where, f"must be a string, got {json_type(row[name])}", name)
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
    for i, line in enumerate(data[:keep].splitlines(), start=1):
        if line.strip():
            try:
                json.loads(line)
            except ValueError:  # JSONDecodeError and UnicodeDecodeError
                raise RowError(f"{path.name} line {i}", "cannot resume: this finished line is not valid JSON "
                               "(was the file edited?); use --overwrite to start again") from None
            n += 1
    return n


def replace_file(path: Path, text: str) -> None:
    """Replace ``path``'s content with ``text`` atomically (a temporary file, fsynced, renamed over it), so a
    crash leaves either the old file or the new one."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself survives a crash
    finally:
        os.close(dir_fd)


class JsonlWriter:
    """Append rows to a JSONL file, flushed and fsynced per batch, so finished rows survive a crash.

    The output is checked for writability at once (an unwritable output fails before any work) but
    opened only at the first write: a run that fails before it has scored anything (a bad row, a model
    that does not load) leaves no file behind, and with ``overwrite`` the old file stays intact until
    new rows replace it. A batch is written whole or not at all: if writing fails (disk full, I/O
    error), the file is cut back to the rows before the batch and an OSError says so.
    """

    def __init__(self, path: str | Path, resume: bool = False, overwrite: bool = False):
        self.path = Path(path)
        if self.path.is_dir():
            raise IsADirectoryError(f"the output {self.path} is a directory; give a file path")
        exists = self.path.exists() and self.path.stat().st_size > 0
        if exists and not (resume or overwrite):
            raise FileExistsError(f"{self.path} exists; pass --resume to continue it or --overwrite to replace it")
        self.done = count_complete_lines(self.path) if resume else 0
        self._replace = not resume  # drop the old rows at the first write
        self._created = False
        self._f: Any = None
        self._probe()  # fail now, not after the model has loaded and scored a batch

    def keep_first(self, n: int) -> None:
        """Cut a resumed file back to its first ``n`` rows (the rest is redone), before anything is appended."""
        if n >= self.done:
            return
        with open(self.path, "rb+") as f:
            data = f.read()
            pos = seen = 0
            while seen < n:
                end = data.index(b"\n", pos) + 1
                seen += bool(data[pos:end].strip())
                pos = end
            f.truncate(pos)
            f.flush()
            os.fsync(f.fileno())
        self.done = n

    def _probe(self) -> None:
        created = not self.path.exists()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            open(self.path, "a", encoding="utf-8").close()  # "a": changes nothing in an existing file
        except OSError as e:
            raise type(e)(e.errno, f"cannot write the output {self.path}: {e.strerror}") from None
        if created:
            self.path.unlink(missing_ok=True)

    def write(self, rows: list[dict[str, Any]]) -> None:
        text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        before = 0
        try:
            if self._f is None:
                self._created = not self.path.exists()
                self._f = open(self.path, "a", encoding="utf-8")
            f = self._f
            if self._replace:
                if os.fstat(f.fileno()).st_size:
                    f.truncate(0)
                self._replace = False
            before = os.fstat(f.fileno()).st_size  # flushed after every batch: the rows so far
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        except OSError as e:
            self._cut_back(before)
            raise OSError(e.errno, f"writing {self.path} failed ({e.strerror or e}); it holds the {self.done} rows "
                          "finished before this batch and nothing of it: fix the cause and rerun with --resume") from None
        self.done += len(rows)

    def _cut_back(self, size: int) -> None:
        f, self._f = self._f, None
        if f is not None:
            try:
                f.close()
            except OSError:
                pass  # the unflushed rest of the failed batch is what could not be written
        try:
            if size == 0 and self._created:
                self.path.unlink(missing_ok=True)
            elif self.path.exists():
                with open(self.path, "rb+") as g:
                    g.truncate(size)
        except OSError:
            pass  # e.g. /dev/full; a torn last line is also cut off by --resume

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
