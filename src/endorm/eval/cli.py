"""Evaluate reward methods on RM-Bench, DSP, preference pairs or best-of-N (accuracy tables, plot).

``endorm eval --benchmark rm-bench --method endorm,genrm-pointwise --limit 20`` scores a seeded subset
of 20 prompts per RM-Bench domain with two methods on the default model and writes, under
``--output-dir``: ``examples.jsonl`` (every score of every item; the run resumes from it),
``results.json`` (accuracies by domain / difficulty / subset, n, settings, time), ``table.md`` (laid
out like the paper's Table 1 or Table 2) and ``plot.png``. ``--merge dirA,dirB`` combines finished
runs of one benchmark into one table and plot without loading a model; ``--scaling dirA,dirB,...`` draws
finished RM-Bench runs of several models into one scaling table and figure (``endorm.eval.scaling``).
"""

from __future__ import annotations

import json
import logging
import shlex
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from endorm.eval import metrics as M
from endorm.eval.data import BENCHMARKS, load_benchmark
from endorm.eval.harness import read_records, record_key, systems_for  # noqa: F401 (read_records: re-export)
from endorm.eval.methods import METHODS, NEEDS_EXTRA_MODEL, StatsMemo, build_method
from endorm.eval.prompts import DSP_DOMAINS
from endorm.eval.variants import STATS_FILE, expand, primary, reaggregate
from endorm.reward_model import NEUTRAL_PROMPT, RewardConfig

log = logging.getLogger(__name__)

# settings that change scores: a resumed run must use the same ones
SCORE_SETTINGS = ("benchmark", "data", "model", "dtype", "alpha", "gamma", "aggregation", "contrast",
                  "neutral_prompt", "token_stats", "system_prompt",
                  "judge_greedy", "ref_model", "beta", "classifier_model", "max_length", "seed")


@dataclass
class Config:
    benchmark: str = field(default="rm-bench", metadata={"help": f"one of {', '.join(BENCHMARKS)}"})
    method: str = field(default="endorm", metadata={
        "help": f"comma-separated methods: {', '.join(METHODS)}; 'all' = every method that needs no extra model"})
    data: str | None = field(default=None, metadata={
        "help": "local file/dir or Hugging Face hub id (default for rm-bench and dsp: the shared data)"})
    domains: str | None = field(default=None, metadata={
        "help": "RM-Bench domains, comma-separated (chat,math,code,safety; default: all in the data)"})
    dsp_systems: str = field(default=",".join(DSP_DOMAINS), metadata={
        "help": "DSP system prompts to score under (add 'none' for the model's default)"})
    limit: int | None = field(default=None, metadata={
        "help": "seeded random subset: items per domain (RM-Bench) or in all (other benchmarks)"})
    seed: int = field(default=0, metadata={"help": "seed of the --limit subset"})
    model: str | None = field(default=None, metadata={
        "help": "base model: registry name, GGUF file, local dir or hub id (default: SmolLM2-135M-Instruct)"})
    dtype: str = field(default="float32", metadata={"help": "float32 | bfloat16 | float16 | auto"})
    device: str = field(default="cpu", metadata={"help": "cpu, cuda, cuda:1, mps ..."})
    alpha: float = field(default=RewardConfig.alpha, metadata={"help": "endorm: temperature alpha"})
    gamma: str = field(default=str(RewardConfig.gamma), metadata={
        "help": "endorm: discount(s) for the discounted/logprob aggregations, comma-separated "
                "(e.g. 1,0.99,0.97,0.95,0.93,0.9,0.85,0.8); the first one gives the main table's score"})
    aggregation: str = field(default=RewardConfig.aggregation, metadata={
        "help": "endorm: sum | mean | discounted | logprob, comma-separated, or 'all'; the first gives the main "
                "table's score, and every combination with --gamma / --contrast goes to variants.md"})
    contrast: str = field(default=RewardConfig.contrast, metadata={
        "help": "endorm: none | prompt | system, comma-separated, or 'all'; each contrast costs one extra pass "
                "and its arrays are kept too; the first gives the main table's score"})
    neutral_prompt: str = field(default=NEUTRAL_PROMPT, metadata={"help": "endorm: x0 of the prompt contrast"})
    token_stats: bool = field(default=True, metadata={
        "help": "keep endorm's per-token log pi and V(s_t) in token_stats.f32 (for --reaggregate)"})
    reaggregate: str | None = field(default=None, metadata={
        "help": "a finished run dir: re-score its kept token stats under --aggregation/--gamma/--contrast "
                "(no model), write variants.json/.md (into --output-dir if given, else the run dir)"})
    system_prompt: str | None = field(default=None, metadata={
        "help": "system prompt for rows without their own (not DSP, which uses its domain prompts)"})
    judge_greedy: bool = field(default=False, metadata={
        "help": "genrm-pointwise: use the greedily generated rating instead of the expected rating"})
    ref_model: str | None = field(default=None, metadata={"help": "dpo-implicit: the reference model"})
    beta: float = field(default=0.1, metadata={"help": "dpo-implicit: beta"})
    classifier_model: str | None = field(default=None, metadata={
        "help": "classifier: an AutoModelForSequenceClassification reward model (local dir or hub id)"})
    batch_size: int = field(default=8, metadata={"help": "sequences per forward pass"})
    chunk_size: int = field(default=1024, metadata={"help": "positions per output-layer chunk"})
    max_length: int | None = field(default=None, metadata={"help": "context window (default: the model's)"})
    items_per_batch: int = field(default=4, metadata={"help": "items scored (and saved) together"})
    output_dir: str = field(default="runs/eval", metadata={"help": "where the outputs go"})
    resume: bool = field(default=False, metadata={"help": "continue the run in --output-dir"})
    overwrite: bool = field(default=False, metadata={"help": "replace the run in --output-dir"})
    threads: int | None = field(default=None, metadata={"help": "torch CPU threads (default: torch's)"})
    plot: bool = field(default=True, metadata={"help": "write plot.png"})
    merge: str | None = field(default=None, metadata={
        "help": "comma-separated finished run dirs (or results.json files) to combine; no model is loaded"})
    scaling: str | None = field(default=None, metadata={
        "help": "comma-separated finished RM-Bench run dirs of one or more models: write scaling.json/.md/.png "
                "(accuracy and shorter-wins share against model size for sum, the default and the best judge, "
                "beside the paper's 7B) into --output-dir; --domains picks the domains (default chat,safety), "
                "--limit/--seed/--data count only that seeded subset's prompts; no model is loaded"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})


def parse_methods(spec: str) -> list[str]:
    names = [m.strip() for m in spec.split(",") if m.strip()]
    if names == ["all"]:
        return [m for m in METHODS if m not in NEEDS_EXTRA_MODEL]
    for m in names:
        if m not in METHODS:
            raise ValueError(f"unknown method {m!r}; choose from {', '.join(METHODS)} or 'all'")
    if not names:
        raise ValueError("--method is empty")
    return list(dict.fromkeys(names))


def _split(s: str | None) -> list[str] | None:
    return [x.strip() for x in s.split(",") if x.strip()] if s else None


def command_line(cfg: Config) -> str:
    """``endorm eval`` with every flag that differs from its default: the command that wrote a run's JSON
    (records/README.md). Parsing it back gives ``cfg`` again."""
    parts = ["endorm eval"]
    for f in fields(Config):
        v = getattr(cfg, f.name)
        if f.name != "progress" and v != f.default:
            parts.append(f"--{f.name.replace('_', '-')} " + shlex.quote(str(v).lower() if isinstance(v, bool) else str(v)))
    return " ".join(parts)


def variants_of(cfg: Config) -> list:
    return expand(cfg.aggregation, cfg.gamma, cfg.contrast)


def primary_variant(cfg: Config):
    """The variant of the main table's ``endorm`` row: the first aggregation, gamma and contrast."""
    return primary(cfg.aggregation, cfg.gamma, cfg.contrast)


def stored_contrasts(cfg: Config) -> list[str]:
    return sorted({v.contrast for v in variants_of(cfg)} - {"none"})


def load_models(cfg: Config, methods: list[str], model: Any = None, tokenizer: Any = None) -> dict[str, Any]:
    from endorm.reward_model import EndogenousRewardModel

    v = primary_variant(cfg)
    rc = dict(alpha=cfg.alpha, gamma=v.gamma, aggregation=v.aggregation, contrast=v.contrast,
              neutral_prompt=cfg.neutral_prompt, batch_size=cfg.batch_size, chunk_size=cfg.chunk_size,
              max_length=cfg.max_length)
    if model is None:
        rm = EndogenousRewardModel.from_pretrained(cfg.model, dtype=cfg.dtype, device=cfg.device, **rc)
    else:
        rm = EndogenousRewardModel.from_model(model, tokenizer, **rc)
    out: dict[str, Any] = {"rm": rm}
    if "dpo-implicit" in methods:
        if not cfg.ref_model:
            raise ValueError("--method dpo-implicit needs --ref-model")
        out["ref_rm"] = EndogenousRewardModel.from_pretrained(cfg.ref_model, dtype=cfg.dtype, device=cfg.device, **rc)
    if "classifier" in methods:
        if not cfg.classifier_model:
            raise ValueError("--method classifier needs --classifier-model")
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        clf = AutoModelForSequenceClassification.from_pretrained(cfg.classifier_model).to(cfg.device)
        out["classifier"] = (clf, AutoTokenizer.from_pretrained(cfg.classifier_model))
    return out


def run(cfg: Config, model: Any = None, tokenizer: Any = None, extra: dict[str, Any] | None = None) -> int:
    """Run ``endorm eval``. Tests pass an in-memory ``model``/``tokenizer`` (and ``extra``: ref_rm,
    classifier) instead of loading by name."""
    from endorm.eval import report

    if cfg.reaggregate:
        out = cfg.output_dir if cfg.output_dir != Config.output_dir else None
        res = reaggregate(cfg.reaggregate, variants_of(cfg), out, command=command_line(cfg))
        target = Path(out or cfg.reaggregate)
        print((target / "variants.md").read_text())
        if res["chosen"]:
            print(f"chosen by the pre-registered rule (best {res['selection_split']} average): {res['chosen']}")
        print(f"wrote {target / 'variants.json'}, {target / 'variants.md'}")
        return 0
    out_dir = Path(cfg.output_dir)
    if cfg.scaling:
        from endorm.eval import scaling

        domains = _split(cfg.domains) or list(scaling.DOMAINS)
        ids = ({it.id for it in load_benchmark("rm-bench", cfg.data, domains, cfg.limit, cfg.seed)}
               if cfg.limit else None)  # the same seeded prompts for every model
        paths = scaling.write(_split(cfg.scaling) or [], out_dir, domains, command_line(cfg), cfg.plot, ids)
        print(paths["table"].read_text())
        print("wrote " + ", ".join(str(p) for p in paths.values()))
        return 0
    if cfg.merge:
        summary = report.merge(_split(cfg.merge) or [])
        summary["command"] = command_line(cfg)
        paths = report.write_outputs(summary, out_dir, cfg.plot)
        print(report.markdown(summary))
        print("wrote " + ", ".join(str(p) for p in paths.values()))
        return 0
    if cfg.threads:
        import torch

        torch.set_num_threads(cfg.threads)
    methods = parse_methods(cfg.method)
    if cfg.benchmark not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {cfg.benchmark!r}; choose one of {', '.join(BENCHMARKS)}")
    items = load_benchmark(cfg.benchmark, cfg.data, _split(cfg.domains), cfg.limit, cfg.seed)
    if cfg.system_prompt and cfg.benchmark != "dsp":
        for it in items:
            it.system = it.system if it.system is not None else cfg.system_prompt
    if not items:
        raise ValueError("no items to evaluate")

    model_name = cfg.model or "SmolLM2-135M-Instruct (default)"
    if model is not None:
        model_name = cfg.model or type(model).__name__
    settings = {k: v for k, v in asdict(cfg).items() if k not in ("merge", "progress")}
    settings_path = out_dir / "settings.json"
    records_path = out_dir / "examples.jsonl"
    if cfg.resume and settings_path.exists():
        old = json.loads(settings_path.read_text())
        diff = [k for k in SCORE_SETTINGS if old.get(k) != settings.get(k)]
        if diff:
            raise ValueError(f"--resume: {out_dir} was run with other settings ({', '.join(diff)}); "
                             "use another --output-dir or --overwrite")
        if "model_params" in old:  # a resume that loads no model keeps the count the run measured
            settings["model_params"] = old["model_params"]
    t_start = time.perf_counter()
    systems = [name for name, _ in systems_for(items, _split(cfg.dsp_systems) or DSP_DOMAINS)]
    wanted = {record_key(m, it.id, s) for m in methods for it in items for s in systems}
    keep = cfg.token_stats and "endorm" in methods
    fresh_stats = _drop_unverified(records_path) if cfg.resume and keep else True
    done = {r["key"] for r in read_records(records_path)} if cfg.resume else set()
    n_new = 0
    if wanted <= done:  # everything is scored already: only summarise (no model, examples.jsonl untouched)
        log.info("all %d items are scored already in %s; summarising", len(items), records_path)
    else:
        n_new = _score(cfg, methods, items, records_path, settings, model, tokenizer, extra, keep, fresh_stats)
    elapsed = time.perf_counter() - t_start
    recs = [r for r in read_records(records_path) if r["key"] in wanted]
    summary = {
        "command": command_line(cfg), "benchmark": cfg.benchmark, "model": model_name,
        "model_params": settings.get("model_params"), "methods": report.summarize(recs),
        "n_items": len(items), "subset": f"seeded random subset, --limit {cfg.limit} --seed {cfg.seed}"
        if cfg.limit else "all items", "tie_rule": M.TIE_RULE, "settings": settings,
        "elapsed_s_this_invocation": round(elapsed, 1), "new_records": n_new,
    }
    summary["methods"] = {m: summary["methods"][m] for m in methods if m in summary["methods"]}
    paths = report.write_outputs(summary, out_dir, cfg.plot)
    print(report.markdown(summary))
    written = [records_path, *paths.values()]
    if "endorm" in methods and cfg.token_stats and len(variants_of(cfg)) > 1:
        reaggregate(out_dir, variants_of(cfg), command=command_line(cfg))
        print((out_dir / "variants.md").read_text())
        written += [out_dir / "variants.json", out_dir / "variants.md"]
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def _drop_unverified(records_path: Path) -> bool:
    """Before a resume: drop the ``endorm`` records whose arrays do not resolve in the sidecar (it was
    deleted, cut short or is another run's), so they are scored again; True when no kept record points
    into the sidecar (it is then started again)."""
    from endorm.io import replace_file
    from endorm.stats_file import check_for_resume

    if not records_path.exists():
        return True
    lines = [x for x in records_path.read_text(encoding="utf-8").split("\n")[:-1] if x.strip()]
    recs = [json.loads(x) for x in lines]
    endo = [i for i, r in enumerate(recs) if r["method"] == "endorm"]
    check = check_for_resume(records_path.parent / STATS_FILE, [recs[i] for i in endo], str(records_path))
    if check.bad:
        drop = {endo[i] for i in check.bad}
        log.warning("--resume: %d endorm records' token stats do not resolve (first: %s, %s); scoring them again",
                    len(drop), recs[endo[check.bad[0]]]["key"], check.reason)
        replace_file(records_path, "".join(x + "\n" for i, x in enumerate(lines) if i not in drop))
    return check.none_kept


def _score(cfg: Config, methods: list[str], items: list, records_path: Path, settings: dict[str, Any],
           model: Any, tokenizer: Any, extra: dict[str, Any] | None, keep: bool, fresh_stats: bool) -> int:
    """Score what is not done; ``keep``: write the endorm arrays, to a new sidecar if ``fresh_stats``."""
    from contextlib import nullcontext

    from endorm.eval.harness import evaluate
    from endorm.io import JsonlWriter
    from endorm.stats_file import StatsWriter

    stats_resume = cfg.resume and not fresh_stats
    with JsonlWriter(records_path, resume=cfg.resume, overwrite=cfg.overwrite) as writer, \
            (StatsWriter(records_path.parent / STATS_FILE, resume=stats_resume) if keep else nullcontext()) as sw:
        done = {r["key"] for r in read_records(records_path)} if cfg.resume else set()
        base = [m for m in methods if not (extra and m in NEEDS_EXTRA_MODEL)]
        loaded = {**load_models(cfg, base, model, tokenizer), **(extra or {})}
        # the scaling table's x axis (endorm.eval.scaling); tied weights count once
        settings["model_params"] = sum(p.numel() for p in loaded["rm"].model.parameters())
        # only once the models load: a run that fails before scoring leaves the old run's settings
        (records_path.parent / "settings.json").write_text(json.dumps(settings, indent=2) + "\n")
        memo = StatsMemo()
        objs = [build_method(m, loaded["rm"], memo, cfg.judge_greedy, loaded.get("ref_rm"), cfg.beta,
                             loaded.get("classifier"), contrasts=stored_contrasts(cfg)) for m in methods]
        return evaluate(objs, items, done, writer.write, cfg.items_per_batch,
                        _split(cfg.dsp_systems) or DSP_DOMAINS, memo, cfg.progress, sw)
