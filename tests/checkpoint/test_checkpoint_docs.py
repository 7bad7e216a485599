"""docs/checkpoints.md: every `bertkit ...` line of its bash blocks parses (each flag it names exists)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from bertkit.cli import build_parser

DOC = Path(__file__).resolve().parents[2] / "docs" / "checkpoints.md"


def test_every_command_in_the_checkpoint_docs_parses():
    lines = [line for block in re.findall(r"```bash\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)
             for line in block.splitlines() if line.startswith("bertkit ")]  # fmt: skip
    assert len(lines) >= 5
    for line in lines:
        argv = shlex.split(line)[1:]
        build_parser(argv[0]).parse_args(argv)  # an unknown flag exits
