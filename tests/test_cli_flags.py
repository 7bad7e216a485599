"""Every command keeps every flag it had (tests/fixtures/cli_flags.json, recorded from `--help` when bertkit moved
into layer folders): the seed's and Google's flag names are what users' command lines are written in, so a flag may
be added, never renamed or dropped. Every flag has help text."""

import json
from pathlib import Path

import pytest

from bertkit.cli import COMMANDS, build_parser

RECORDED = json.loads((Path(__file__).resolve().parent / "fixtures" / "cli_flags.json").read_text(encoding="utf-8"))


def subparser(name: str):
    parser = build_parser(name)
    return next(a for a in parser._actions if a.dest == "command").choices[name]


@pytest.mark.parametrize("name", sorted(RECORDED))
def test_no_flag_of_a_command_is_renamed_or_dropped(name):
    assert name in COMMANDS, f"the command {name} is gone"
    now = {o for a in subparser(name)._actions for o in a.option_strings}
    assert set(RECORDED[name]) <= now, f"{name} lost {sorted(set(RECORDED[name]) - now)}"


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_flag_has_help(name):
    bare = [a.option_strings for a in subparser(name)._actions if a.option_strings and not (a.help or "").strip()]
    assert not bare, f"{name}: flags without help {bare}"
