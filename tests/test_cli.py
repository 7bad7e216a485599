"""The `bertkit` command: help, version, flag parsing from dataclasses, the smoke demo."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bertkit import __version__
from bertkit.cli import build_parser, main, parse_bool


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"bertkit {__version__}"


def test_help_lists_subcommands_and_every_flag_has_help(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "demo" in capsys.readouterr().out
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, p in sub.choices.items():
        for action in p._actions:
            if action.dest != "help":
                assert action.help and len(action.help) > 15, (name, action.dest)


def test_console_script_runs():
    out = subprocess.run([sys.executable, "-m", "bertkit", "--help"], capture_output=True, text=True, check=True)
    assert "COMMAND" in out.stdout


@pytest.mark.parametrize("text, value", [("True", True), ("true", True), ("1", True), ("False", False), ("0", False)])
def test_seed_boolean_forms(text, value):
    assert parse_bool(text) is value


def test_bad_flag_value_is_a_clear_error(capsys):
    with pytest.raises(SystemExit) as e:
        main(["demo", "--pretrain_iters", "0"])
    assert e.value.code == 2
    assert "--pretrain_iters must be positive" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["demo", "--precision", "fp64"])
    assert "invalid choice" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["demo", "--squad_learning_rate", "0"])
    assert "--squad_learning_rate must be positive, got 0.0" in capsys.readouterr().err


def test_positional_fields_are_required_arguments_by_place(capsys):
    import argparse
    import dataclasses

    from bertkit.cli import add_dataclass_args, config_from_args

    @dataclasses.dataclass
    class Cfg:
        data_file: str = dataclasses.field(metadata={"help": "the input file, given by place", "positional": True})
        extra: str = dataclasses.field(
            default="x", metadata={"help": "optional by place, as it has a default", "positional": True}
        )
        out_file: str | None = dataclasses.field(default=None, metadata={"help": "an ordinary --flag beside it"})

    parser = argparse.ArgumentParser()
    add_dataclass_args(parser, Cfg)
    assert config_from_args(Cfg, parser.parse_args(["in.json", "y", "--out_file", "o"])) == Cfg("in.json", "y", "o")
    assert config_from_args(Cfg, parser.parse_args(["in.json"])) == Cfg("in.json", "x")
    with pytest.raises(SystemExit):
        parser.parse_args(["--out_file", "o"])
    assert "the following arguments are required: data_file" in capsys.readouterr().err
