"""The ``endorm`` command line: one sub-command per pipeline stage.

Each sub-command is a module with a ``Config`` dataclass (fields carry their help text in
``metadata``) and a ``run(config)`` function. ``transformers.HfArgumentParser`` turns the dataclass
into flags (``--batch-size`` and ``--batch_size`` both work), and ``--config FILE.yaml`` supplies
defaults from YAML that flags on the command line override, as in TRL's scripts. A YAML file may start
from another with ``base: OTHER.yaml`` (a path relative to the file): its values first, the file's own over them.
"""

from __future__ import annotations

import importlib
import logging
import sys
from pathlib import Path
from typing import Any

# name -> module holding Config and run(). Modules are imported only when their command runs.
COMMANDS: dict[str, str] = {
    "train": "endorm.rl.cli",
    "math-eval": "endorm.mathx.cli",
    "lab": "endorm.lab.cli",
    "score": "endorm.commands.score",
    "download": "endorm.commands.download",
    "models": "endorm.commands.models",
    "eval": "endorm.eval.cli",
    "serve": "endorm.serve.cli",
    "report": "endorm.report.cli",
}


def build_parser(config_cls: type, prog: str, description: str):
    from transformers import HfArgumentParser

    parser = HfArgumentParser(config_cls, prog=prog, description=description)
    parser.add_argument("--config", type=str, default=None, help="YAML file with default values for these flags")
    return parser


def read_yaml_config(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The field: value mapping of a YAML config, with its ``base:`` chain applied (the file's values win).

    Raises ValueError naming the file (and line, for invalid YAML) on anything that is not such a mapping.
    """
    import yaml

    path = Path(path)
    if path.resolve() in _seen:
        raise ValueError(f"--config {path}: 'base:' chain loops back to itself ({' -> '.join(map(str, _seen))})")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8-sig")) or {}
    except OSError as e:
        raise ValueError(f"--config {path}: {e.strerror or e}") from e
    except UnicodeDecodeError as e:
        raise ValueError(f"--config {path}: not valid UTF-8 ({e.reason} at byte {e.start})") from e
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ValueError(f"--config {path}: invalid YAML{where}: {getattr(e, 'problem', None) or e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of field: value")
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ValueError(f"{path}: 'base' takes one YAML file path, got {type(base).__name__}")
    return {**read_yaml_config(path.parent / base, (*_seen, path.resolve())), **data}


def parse_config(config_cls: type, argv: list[str], prog: str = "endorm", description: str = "") -> Any:
    """Parse ``argv`` into ``config_cls``, with ``--config FILE.yaml`` giving the defaults."""
    parser = build_parser(config_cls, prog, description)
    pre, _ = parser.parse_known_args(argv)
    if pre.config:
        try:
            data = read_yaml_config(pre.config)
        except ValueError as e:
            parser.error(str(e))
        actions = {a.dest: a for a in parser._actions}
        unknown = sorted(str(k) for k in data if str(k).replace("-", "_") not in actions)
        if unknown:
            parser.error(f"{pre.config}: unknown field(s) {', '.join(unknown)}")
        for k, v in data.items():  # argparse checks the types of flags, not of defaults
            a = actions[k.replace("-", "_")]
            if isinstance(v, (list, dict)) and a.nargs not in ("*", "+"):
                parser.error(f"{pre.config}: field {k!r} takes one value, got a YAML {type(v).__name__}")
        parser.set_defaults(**{k.replace("-", "_"): v for k, v in data.items()})
        # a YAML value satisfies a required flag
        for action in parser._actions:
            if action.dest in {k.replace("-", "_") for k in data}:
                action.required = False
    # returns (config, [the leftover --config namespace], remaining strings)
    parsed = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    cfg, rest = parsed[0], [r for r in parsed[-1] if r]
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return cfg


def _usage() -> str:
    lines = ["usage: endorm <command> [--help] [flags]", "", "commands:"]
    for name, mod in COMMANDS.items():
        lines.append(f"  {name:<12} {_summary(mod)}")
    return "\n".join(lines)


def _summary(module_name: str) -> str:
    try:
        doc = importlib.import_module(module_name).__doc__ or ""
    except ImportError as e:  # an optional extra is missing; still list the command
        return f"(unavailable: {e})"
    return doc.strip().splitlines()[0] if doc.strip() else ""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from endorm import __version__

        print(__version__)
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"endorm: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    module = importlib.import_module(COMMANDS[name])
    if hasattr(module, "normalize_argv"):  # e.g. `endorm download NAME`: a bare name becomes --name NAME
        rest = module.normalize_argv(rest)
    try:
        cfg = parse_config(module.Config, rest, prog=f"endorm {name}", description=module.__doc__ or "")
    except (ValueError, TypeError) as e:  # a Config's own checks (e.g. gamma in (0, 1]) are usage errors
        print(f"endorm {name}: error: {e}", file=sys.stderr)
        return 2
    try:
        code = module.run(cfg)
    except KeyboardInterrupt:
        print("interrupted; finished rows are saved, rerun with --resume to continue", file=sys.stderr)
        return 130
    except (ValueError, OSError) as e:  # bad input, a missing or unwritable file, a full disk
        print(f"endorm {name}: error: {e}", file=sys.stderr)
        return 1
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
