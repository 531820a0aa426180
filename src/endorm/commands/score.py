"""Score JSONL rows with the endogenous reward: adds "reward" (and with --tokens, "token_rewards").

Rows are ``{"prompt", "response"}`` or ``{"messages": [...]}`` (the last message the assistant's), with an
optional ``"system"``; every input field is kept. All rows are validated before any scoring starts, so
a bad row fails fast with its line number. Output is appended and flushed as it goes; ``--resume``
continues an interrupted run with no duplicates and no gaps. With ``--tokens``, a resume first checks every
finished row's arrays against the sidecar (``endorm.stats_file``): from the first row whose arrays are
missing (sidecar deleted, cut short or from another run) the rows are scored again, never pointed at
other rows' arrays.
"""

from __future__ import annotations

import itertools
import logging
import sys
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from endorm.chat import Encoded
from endorm.io import JsonlWriter, read_jsonl, row_to_example
from endorm.reward_model import EndogenousRewardModel, RewardConfig
from endorm.rows import scored_row
from endorm.stats_file import ID_FIELD, StatsWriter, check_for_resume

log = logging.getLogger(__name__)

# rows scored between two writes to the output file; bounds the work lost to a crash
WRITE_EVERY = 64


@dataclass
class Config(RewardConfig):
    input: str | None = field(default=None, metadata={"help": "input JSONL file (required)"})
    output: str | None = field(default=None, metadata={"help": "output JSONL file (required)"})
    model: str | None = field(
        default=None,
        metadata={"help": "registry name (endorm models), .gguf file, local HF dir or hub id; default SmolLM2-135M-Instruct"},
    )
    system: str | None = field(default=None, metadata={"help": "system prompt / principle for rows without their own"})
    dtype: str = field(default="float32", metadata={"help": "float32 | bfloat16 | float16 | auto"})
    device: str = field(default="cpu", metadata={"help": "torch device, e.g. cpu, cuda, cuda:1"})
    tokens: bool = field(default=False, metadata={
        "help": "also write token-level rewards (log pi, V(s_t), r_t) and keep the float32 arrays in "
                "OUTPUT.stats.f32 (row fields token_stats = {context: [offset, n, crc32]} and token_stats_id; "
                "see endorm.stats_file)"})
    resume: bool = field(default=False, metadata={"help": "continue an interrupted run of the same input/output"})
    overwrite: bool = field(default=False, metadata={"help": "replace an existing output file"})
    show: int = field(default=10, metadata={"help": "print a table of the first N scored rows (0: none)"})
    engine: str = field(default="local", metadata={"help": "local | ray (distributed scoring with Ray Data)"})
    num_actors: int = field(default=1, metadata={"help": "with --engine ray: model replicas (actors)"})


def stats_path(output: str | Path) -> Path:
    """The float32 sidecar of ``--tokens`` beside the output file."""
    return Path(str(output) + ".stats.f32")


def reward_config(cfg: Config) -> RewardConfig:
    base = {f: getattr(cfg, f) for f in RewardConfig.__dataclass_fields__}
    base["system_prompt"] = cfg.system if cfg.system is not None else cfg.system_prompt
    return RewardConfig(**base)


def _check_resume(rows: list[dict[str, Any]], done: int, out_path: str, tokens: bool) -> None:
    """The output's last row must be the scored copy of the input's row ``done - 1``, scored with the same
    ``--tokens`` (else the file would mix rows with and without token rewards)."""
    if done == 0:
        return
    if done > len(rows):
        raise ValueError(f"{out_path} has {done} rows but the input only {len(rows)}: not the same run")
    *_, last = itertools.islice(_iter_jsonl_rows(out_path), done)
    expected = rows[done - 1]
    if any(last.get(k) != v for k, v in expected.items() if k not in ("reward", "token_rewards", "token_stats")):
        raise ValueError(f"{out_path} row {done} does not match input row {done}: not the same input; "
                         "use --overwrite to start again")
    if ("token_rewards" in last) != tokens:
        raise ValueError(f"{out_path} row {done} was scored {'with' if not tokens else 'without'} --tokens; resume "
                         f"{'with' if not tokens else 'without'} it, or use --overwrite to start again")


def _keep_verified_rows(writer: JsonlWriter, out_path: str) -> None:
    """Cut the finished rows back to those whose arrays resolve in the sidecar; the rest is scored again."""
    done = list(itertools.islice(_iter_jsonl_rows(out_path), writer.done))
    check = check_for_resume(stats_path(out_path), done, out_path)
    if check.bad:
        log.warning("--resume: row %d's token stats do not resolve (%s); scoring rows %d-%d again (%d of them "
                    "lack their arrays)", check.prefix + 1, check.reason, check.prefix + 1, len(done), len(check.bad))
        writer.keep_first(check.prefix)


def _iter_jsonl_rows(path: str):
    for _, row in read_jsonl(path):
        yield row


def run(cfg: Config) -> int:
    if not cfg.input or not cfg.output:
        raise ValueError("--input and --output are required")
    from tqdm import tqdm

    if Path(cfg.output).resolve() == Path(cfg.input).resolve():
        raise ValueError(f"--output is the --input file {cfg.input}; write the scores to another file")
    numbered = list(read_jsonl(cfg.input))
    if not numbered:
        raise ValueError(f"{cfg.input} has no rows (the file is empty or only blank lines)")
    rows = [r for _, r in numbered]
    examples = [row_to_example(r, where=f"line {n}") for n, r in numbered]
    writer = JsonlWriter(cfg.output, resume=cfg.resume, overwrite=cfg.overwrite)
    _check_resume(rows, writer.done, cfg.output, cfg.tokens)
    if cfg.tokens and cfg.engine == "local" and writer.done:
        _keep_verified_rows(writer, cfg.output)
    start = writer.done
    if start:
        log.info("resuming: %d of %d rows already in %s", start, len(rows), cfg.output)

    if cfg.engine == "ray":
        from endorm.distributed.ray_engine import score_rows_ray

        with writer:
            score_rows_ray(rows[start:], cfg, num_actors=cfg.num_actors, writer=writer)
        _print_table(cfg.output, cfg.show)
        return 0
    if cfg.engine != "local":
        raise ValueError(f"--engine must be local or ray, got {cfg.engine!r}")

    rm = EndogenousRewardModel.from_pretrained(cfg.model, dtype=cfg.dtype, device=cfg.device,
                                               **{k: v for k, v in vars(reward_config(cfg)).items()})
    # every row checked before scoring; with a contrast each row brings its contrast context along
    encoded: list[list[Encoded]] = [rm.encode_with_contrast(e) for e in examples[start:]]
    sidecar = StatsWriter(stats_path(cfg.output), resume=bool(start)) if cfg.tokens else nullcontext()
    with writer, sidecar as sw, tqdm(total=len(rows), initial=start, unit="row", desc="scoring",
                                      file=sys.stderr) as bar:
        for i in range(0, len(encoded), WRITE_EVERY):
            block = encoded[i : i + WRITE_EVERY]
            stats, base = rm.split_contrast(rm.stats_encoded([e for pair in block for e in pair]), len(block))
            out = [scored_row(rows[start + i + j], rm, s, cfg.tokens, None if base is None else base[j])
                   for j, s in enumerate(stats)]
            if sw is not None:  # the arrays first: a row never points at data that is not on disk
                refs = {"plain": sw.write(stats), **({rm.config.contrast: sw.write(base)} if base else {})}
                for j, row in enumerate(out):
                    row["token_stats"] = {ctx: r[j] for ctx, r in refs.items()}
                    row[ID_FIELD] = sw.id
            writer.write(out)
            bar.update(len(block))
    _print_table(cfg.output, cfg.show)
    return 0


def _clip(text: str, n: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1] + "…"


def _print_table(path: str, n: int) -> None:
    if n <= 0:
        return
    rows = list(itertools.islice(_iter_jsonl_rows(path), n))
    print(f"{'prompt':<42} {'response':<42} {'reward':>9}")
    for r in rows:
        prompt = r.get("prompt") or (r["messages"][-2]["content"] if len(r.get("messages", [])) > 1 else "")
        response = r.get("response") or r["messages"][-1]["content"]
        print(f"{_clip(prompt, 42):<42} {_clip(response, 42):<42} {r['reward']:>9.3f}")
