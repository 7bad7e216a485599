"""The `bertkit` command line, generated from typed dataclass configs.

Each subcommand is a (config dataclass, run function) pair; every dataclass field becomes one flag with the
field's name, type, default and `help` metadata, so an option is declared exactly once. Booleans accept the
seed's forms (`--save_last_snapshot True`, `--use_boxing_v2=True`) as well as a bare `--flag`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import json
import os
import sys
import types
import typing
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from bertkit import __version__

TRUE = {"true", "1", "yes", "y", "on"}
FALSE = {"false", "0", "no", "n", "off", "none"}


def parse_bool(text: str) -> bool:
    if text.lower() in TRUE:
        return True
    if text.lower() in FALSE:
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got {text!r}")


def config_flags(cls: type) -> list[tuple[str, object, object, dict, object]]:
    """(name, type hint, default, metadata, help) of every flag of a config: a composed one's sections flattened
    (runtime/config.py), a plain dataclass's fields."""
    if hasattr(cls, "flags"):  # composed of sections: every section's fields, with this command's defaults
        return [(f.name, f.hint, f.default, f.metadata, f.help) for f in cls.flags()]
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        default = f.default
        if default is dataclasses.MISSING and f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        out.append((f.name, hints[f.name], default, f.metadata, f.metadata["help"]))
    return out


def flag_groups(cls: type) -> dict[str, tuple[str, str]]:
    """{flag: (its section's name, its docstring's first paragraph)}: --help lists a composed config by section."""
    if not hasattr(cls, "sections"):
        return {}
    about = {name: (name, " ".join(sec.__doc__.split("\n\n")[0].split())) for name, sec in cls.sections().items()}
    return {f.name: about[f.section] for f in cls.flags()}


def add_dataclass_args(parser: argparse.ArgumentParser, cls: type) -> None:
    """One flag per field of `cls` (of each of its sections), typed from its annotation, helped from its metadata."""
    hidden = getattr(cls, "cli_hidden", ())
    groups, where = {}, flag_groups(cls)
    for name, kind, default, metadata, help_text in config_flags(cls):
        if name in where and where[name] not in groups:
            groups[where[name]] = parser.add_argument_group(*where[name])
        target = groups[where[name]] if name in where else parser
        if typing.get_origin(kind) in (typing.Union, types.UnionType):  # `int | None` -> int
            kind = next(a for a in typing.get_args(kind) if a is not type(None))
        choices = metadata.get("choices")
        has_default = default is not dataclasses.MISSING
        default = default if has_default else None
        if metadata.get("positional"):  # given by place (`DATA.json`); required unless the field has a default
            nargs = "?" if has_default else None
            target.add_argument(name, type=kind, nargs=nargs, default=default, choices=choices, help=help_text)
            continue
        if default is not None and "default" not in help_text:  # a help that states its default says it once
            help_text += " (default: %(default)s)"
        flags = [f"--{name}", *metadata.get("aliases", ())]  # e.g. convert's --from for --from_format
        if metadata.get("hidden") or name in hidden:  # accepted, not shown
            help_text = argparse.SUPPRESS
        if kind is bool:
            target.add_argument(*flags, type=parse_bool, nargs="?", const=True, default=default,
                                help=help_text, metavar="BOOL")  # fmt: skip
            continue
        target.add_argument(*flags, type=kind, default=default, choices=choices, help=help_text)


def config_from_args(cls: type, ns: argparse.Namespace):
    """The config of the flags parsed into `ns`: built once, here (a composed config through its `from_flags`)."""
    values = {name: getattr(ns, name) for name, *_ in config_flags(cls)}
    return cls.from_flags(**values) if hasattr(cls, "from_flags") else cls(**values)


# name -> (module, config dataclass, run function, one-line help). Held as names and imported only for the command
# that runs, so that commands which do not train (create-pretraining-data, squad-evaluate, --help) start without torch.
COMMANDS: dict[str, tuple[str, str, str, str]] = {
    "demo": (
        "demo",
        "DemoConfig",
        "run",
        "the whole pipeline on embedded data: create data, pretrain, fine-tune on SQuAD, predict, score",
    ),
    "pretrain": (
        "tasks.pretrain.task",
        "PretrainConfig",
        "run",
        "pretrain BERT (masked LM + next sentence) from records: the seed's run_pretraining.py",
    ),
    "plot": ("plot", "PlotConfig", "run", "draw loss, learning-rate and throughput curves of a run as PNG"),
    "convert": (
        "checkpoint.formats",
        "ConvertConfig",
        "run",
        "convert a BERT checkpoint between Google TF, Hugging Face, OneFlow and bertkit formats",
    ),
    "convert-data": (
        "data.loader",
        "ConvertDataConfig",
        "run_convert_data",
        "convert OFRecord or TFRecord pretraining data into memory-mapped training shards",
    ),
    "create-pretraining-data": (
        "tasks.pretrain.data",
        "CreatePretrainingDataConfig",
        "run",
        "raw text -> masked-LM / next-sentence records: Google's create_pretraining_data.py",
    ),
    "create-squad-data": (
        "tasks.squad.records",
        "CreateSquadDataConfig",
        "run",
        "SQuAD json -> the seed's SQuAD OFRecord windows (its tutorial's train-v1.1/, dev-v1.1/ folders)",
    ),
    "squad-evaluate": (
        "tasks.squad.evaluate",
        "EvaluateConfig",
        "run",
        "score SQuAD predictions: the official v1.1 / v2.0 exact match and F1",
    ),
    "squad": (
        "tasks.squad.task",
        "SquadConfig",
        "run",
        "fine-tune BERT on SQuAD, then answer and score: the seed's and Google's run_squad.py",
    ),
    "squad-predict": (
        "tasks.squad.task",
        "SquadPredictConfig",
        "run_predict",
        "answer SQuAD questions with a fine-tuned model, write all_results.npy: the seed's run_squad_predict.py",
    ),
    "npy2json": (
        "tasks.squad.task",
        "Npy2JsonConfig",
        "run_npy2json",
        "turn all_results.npy into predictions.json and nbest_predictions.json: the seed's npy2json.py",
    ),
    "ask": (
        "serve.ask",
        "AskConfig",
        "run_ask",
        "answer a question about a text (or a jsonl file of them) with a SQuAD model",
    ),
    "serve": (
        "serve.http",
        "ServeConfig",
        "run",
        "serve a SQuAD model (POST /answer) or a classifier (POST /predict) over HTTP, with an API key",
    ),
    "classify": (
        "tasks.glue.task",
        "ClassifyConfig",
        "run",
        "fine-tune BERT on a GLUE task, evaluate, predict: Google's and OneFlow's run_classifier.py",
    ),
    "create-glue-data": (
        "tasks.glue.records",
        "CreateGlueDataConfig",
        "run_create_glue_data",
        "GLUE tsv files -> classifier records: OneFlow's OFRecord part files or Google's TFRecords",
    ),
}


def command(name: str) -> tuple[type, Callable]:
    """The config dataclass and run function of one subcommand, importing its module only now."""
    module, cls, run, _ = COMMANDS[name]
    mod = importlib.import_module(f"bertkit.{module}")
    return getattr(mod, cls), getattr(mod, run)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole command line; with `only`, flags are added for that subcommand alone (the others keep their
    one-line help; "" for none), so that parsing one command imports one task module."""
    parser = Parser(
        prog="bertkit",
        description="BERT pretraining and SQuAD fine-tuning in PyTorch (the OneFlow BERT tutorial, in PyTorch).",
    )
    parser.add_argument("--version", action="version", version=f"bertkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, _, _, help_text) in COMMANDS.items():
        if only is not None and name != only:
            sub.add_parser(name, help=help_text)
            continue
        cls, _ = command(name)
        p = sub.add_parser(name, help=help_text, description=cls.__doc__)
        add_dataclass_args(p, cls)
    return parser


# `bertkit <command> --help` is answered from this table of every command's flags, so that it imports no task module
# (a training command's imports torch: seconds on a busy machine). The configs stay the one declaration: the table is
# derived from them (`write_help_table`) and tests/test_cli.py fails when it differs from what they generate.
HELP_TABLE = Path(__file__).with_name("help.json")


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[name]


def help_table() -> dict:
    """{command: {"description", "arguments": [{"flags", "dest", "help", "default", "metavar", "choices",
    "nargs"}]}}: what argparse needs to print each command's --help, as the configs declare it."""
    table = {}
    for name in COMMANDS:
        p = _subparser(build_parser(name), name)
        group = {id(a): [g.title, g.description] for g in p._action_groups[2:] for a in g._group_actions}
        args = [
            {"flags": a.option_strings, "dest": a.dest, "help": a.help, "metavar": a.metavar, "nargs": a.nargs,
             "default": a.default if isinstance(a.default, str | int | float | bool | None) else str(a.default),
             "choices": list(a.choices) if a.choices else None, "group": group.get(id(a))}
            for a in p._actions if not isinstance(a, argparse._HelpAction)
        ]  # fmt: skip
        table[name] = {"description": p.description, "arguments": args}
    return table


def write_help_table() -> None:
    """Regenerate src/bertkit/help.json after changing a config: python -c 'import bertkit.cli as c; c.write_help_table()'"""
    HELP_TABLE.write_text(json.dumps(help_table(), indent=1) + "\n", encoding="utf-8")


def help_parser(name: str) -> argparse.ArgumentParser:
    """The parser of one command as HELP_TABLE records it: prints the same --help, imports nothing."""
    spec = json.loads(HELP_TABLE.read_text(encoding="utf-8"))[name]
    p = Parser(prog=f"bertkit {name}", description=spec["description"])
    groups: dict[tuple, argparse._ArgumentGroup] = {}
    for a in spec["arguments"]:
        kw = {k: a[k] for k in ("help", "metavar", "nargs", "choices", "default") if a[k] is not None}
        if kw.get("help") == argparse.SUPPRESS:
            kw["help"] = argparse.SUPPRESS  # argparse tests it by identity, not equality
        target = p
        if a.get("group"):
            key = tuple(a["group"])
            if key not in groups:
                groups[key] = p.add_argument_group(*key)
            target = groups[key]
        if a["flags"]:
            target.add_argument(*a["flags"], dest=a["dest"], **kw)
        else:
            target.add_argument(a["dest"], **kw)
    return p


def _chosen(argv: Sequence[str]) -> str | None:
    """The subcommand named on a command line (the first word that is one), or None."""
    return next((a for a in argv if a in COMMANDS), None)


def reject_unknown(parser: argparse.ArgumentParser, unknown: list[str]) -> None:
    """One line for unknown flags, naming for each the flag it probably means (the usage is on --help)."""
    from bertkit import aliases  # only for an unknown flag: --help and every command start without it

    known = [o for a in parser._actions for o in a.option_strings]
    hints = []
    for flag in (u.split("=", 1)[0] for u in unknown if u.startswith("-")):
        close = aliases.suggest(flag, known)
        hints.append(f"{flag} (did you mean {' or '.join(close)}?)" if close else flag)
    parser.error("unrecognized arguments: " + (", ".join(hints) or " ".join(unknown)))


class Parser(argparse.ArgumentParser):
    """argparse with errors in one line (`bertkit squad: error: ...`, exit 2): a command's usage runs to 60 lines
    and buries the line that matters; --help prints it. No abbreviations: `--batch_size` is not silently
    `--batch_size_per_device` (an unknown flag is answered with the flags it probably means)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, allow_abbrev=False, **kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def invoke(argv: Sequence[str]):
    """Run one subcommand in this process and return what it returns (the demo chains them this way)."""
    argv = list(argv)
    ns = build_parser(_chosen(argv)).parse_args(argv)
    cls, run = command(ns.command)
    return run(config_from_args(cls, ns))


@contextlib.contextmanager
def plain_warnings() -> Iterator[None]:
    """While a command runs, bertkit's own warnings print as one plain line ("warning: ..."), not Python's
    file:line: Category + source line, so that a log file holds readable lines; other libraries' warnings keep
    Python's form. Only the text is changed (formatwarning), so warnings are still filtered and recorded as usual;
    the previous formatter is back when the command returns (an in-process caller, a test, keeps its own)."""
    default = warnings.formatwarning

    def fmt(message, category, filename, lineno, line=None) -> str:
        if f"{os.sep}bertkit{os.sep}" in str(filename):
            return f"warning: {message}\n"
        return default(message, category, filename, lineno, line)

    warnings.formatwarning = fmt
    try:
        yield
    finally:
        warnings.formatwarning = default


def main(argv: Sequence[str] | None = None) -> int:
    with plain_warnings():
        return _main(argv)


def _main(argv: Sequence[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    chosen = _chosen(argv)
    if chosen and {"-h", "--help"} & set(argv[argv.index(chosen) :]) and HELP_TABLE.is_file():
        help_parser(chosen).parse_args(["--help"])  # prints the help and exits, no task module imported
    parser = build_parser(_chosen(argv) or "")  # "": no command named, so no command's flags (nor its import)
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    ns, unknown = parser.parse_known_args(argv)
    if unknown:
        reject_unknown(subparsers.get(ns.command, parser), unknown)
    if ns.command is None:
        parser.print_help()
        return 0
    cls, run = command(ns.command)
    try:
        cfg = config_from_args(cls, ns)
    except ValueError as e:  # flags that disagree: one line (a command's usage block runs to 60 lines)
        print(f"bertkit {ns.command}: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    try:
        run(cfg)
    except ValueError as e:  # a user's mistake (a file, a record, a field): the message, not a traceback
        print(f"bertkit {ns.command}: error: {e}", file=sys.stderr)
        return 2
    # a signal stopped training after a snapshot: 143 / 130, as a scheduler expects
    except _loaded("runtime.dist", "Stopped") as e:
        if str(e):
            print(f"bertkit {ns.command}: {e}", file=sys.stderr)
        return e.exit_code
    except _loaded("train.runner", "Failed") as e:  # a rank failed: one line naming it
        print(f"bertkit {ns.command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:  # Ctrl-C outside training (data creation, prediction, the demo between stages)
        print(f"bertkit {ns.command}: interrupted", file=sys.stderr)
        return 130
    except OSError as e:  # a file the user named is missing, unreadable, a directory: say which flag and file
        print(f"bertkit {ns.command}: error: {describe_os_error(e, cfg)}", file=sys.stderr)
        return 2
    return 0


class _NotRaised(Exception):
    """Stands in an `except` clause for the exception class of a module this command never imported."""


def _loaded(module: str, name: str) -> type[BaseException]:
    """bertkit.`module`.`name` if that module is loaded, else a class nothing raises: an exception of a module that
    was never imported cannot have been raised, and importing it here would import torch for every command."""
    mod = sys.modules.get(f"bertkit.{module}")
    return getattr(mod, name) if mod is not None else _NotRaised


def describe_os_error(e: OSError, cfg) -> str:
    """`--predict_file dev.json: No such file or directory`: the flag whose value names the file, when one does."""
    what = e.strerror or str(e)
    if e.filename is None:
        return what
    name = str(e.filename)
    values = cfg.flat() if hasattr(cfg, "flat") else {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
    positional = {n for n, _, _, metadata, _ in config_flags(type(cfg)) if metadata.get("positional")}
    for flag_name, value in values.items():
        if isinstance(value, str) and name in (value, *value.split(",")):
            flag = flag_name if flag_name in positional else f"--{flag_name}"
            return f"{flag} {name}: {what}"
    return f"{name}: {what}"


if __name__ == "__main__":
    sys.exit(main())
