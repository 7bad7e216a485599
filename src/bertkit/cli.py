"""The `bertkit` command line, generated from typed dataclass configs.

Each subcommand is a (config dataclass, run function) pair; every dataclass field becomes one flag with the
field's name, type, default and `help` metadata, so an option is declared exactly once. Booleans accept the
seed's forms (`--save_last_snapshot True`, `--use_boxing_v2=True`) as well as a bare `--flag`.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import types
import typing
from collections.abc import Callable, Sequence

from bertkit import __version__

TRUE = {"true", "1", "yes", "y", "on"}
FALSE = {"false", "0", "no", "n", "off", "none"}


def parse_bool(text: str) -> bool:
    if text.lower() in TRUE:
        return True
    if text.lower() in FALSE:
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got {text!r}")


def add_dataclass_args(parser: argparse.ArgumentParser, cls: type) -> None:
    """One flag per field of `cls`, typed from its annotation, helped from its metadata."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        choices = f.metadata.get("choices")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help_text = f.metadata["help"] + " (default: %(default)s)"
        if kind is bool:
            parser.add_argument(
                f"--{f.name}",
                type=parse_bool,
                nargs="?",
                const=True,
                default=default,
                help=help_text,
                metavar="BOOL",
            )
            continue
        if typing.get_origin(kind) in (typing.Union, types.UnionType):  # `int | None` -> int
            kind = next(a for a in typing.get_args(kind) if a is not type(None))
        parser.add_argument(f"--{f.name}", type=kind, default=default, choices=choices, help=help_text)


def config_from_args(cls: type, ns: argparse.Namespace):
    return cls(**{f.name: getattr(ns, f.name) for f in dataclasses.fields(cls)})


def commands() -> dict[str, tuple[type, Callable, str]]:
    """name -> (config dataclass, run(config), one-line help). Imported lazily to keep `--help` fast."""
    from bertkit import demo

    return {
        "demo": (demo.DemoConfig, demo.run, "train a tiny BERT on synthetic batches and print throughput"),
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bertkit",
        description="BERT pretraining and SQuAD fine-tuning in PyTorch (the OneFlow BERT tutorial, in PyTorch).",
    )
    parser.add_argument("--version", action="version", version=f"bertkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (cls, _, help_text) in commands().items():
        p = sub.add_parser(name, help=help_text, description=cls.__doc__)
        add_dataclass_args(p, cls)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    if ns.command is None:
        parser.print_help()
        return 0
    cls, run, _ = commands()[ns.command]
    try:
        cfg = config_from_args(cls, ns)
    except ValueError as e:
        parser.error(str(e))
    run(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
