"""Every `bertkit ...` command in docs/serving.md parses: the subcommand exists and takes every flag shown."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from bertkit.cli import build_parser

DOC = Path(__file__).resolve().parents[2] / "docs" / "serving.md"


def doc_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)
    lines = (line.strip() for block in blocks for line in block.replace("\\\n", " ").splitlines())
    return [line for line in lines if line.startswith("bertkit ")]


def test_the_guide_shows_both_model_kinds_behind_a_key():
    commands = doc_commands()
    assert sum(c.startswith("bertkit serve") for c in commands) >= 2
    assert any("--api_key" in c for c in commands) and "BERTKIT_API_KEY" in DOC.read_text(encoding="utf-8")


@pytest.mark.parametrize("command", doc_commands())
def test_doc_command_parses(command):
    argv = shlex.split(command.replace('"$BERTKIT_API_KEY"', "k" * 16))[1:]
    ns, unknown = build_parser().parse_known_args(argv)
    assert unknown == [] and ns.command == argv[0], command
