"""Every `bertkit ...` command in the README and in the documents it links (docs/*.md, benchmarks/README.md)
parses: the subcommand exists and takes every flag shown."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from bertkit.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = [README, *sorted((ROOT / "docs").glob("*.md")), ROOT / "benchmarks" / "README.md"]


def readme_commands(paths: list[Path] = DOCS) -> list[str]:
    text = "\n".join(p.read_text(encoding="utf-8") for p in paths if p.is_file())
    spans = re.findall(r"```bash\n(.*?)```", text, flags=re.S) + re.findall(r"`([^`\n]+)`", text)
    commands = []
    for span in spans:
        for part in re.split(r"&&|\n", span.replace("\\\n", " ")):
            part = part.strip()
            if part.startswith("bertkit ") and "<" not in part:
                commands.append(part)
    return commands


def test_readme_has_the_commands():
    """The front page shows the main commands; the guide shows every seed script's."""
    front = {c.split()[1] for c in readme_commands([README])}
    assert {"demo", "pretrain", "create-pretraining-data", "squad", "classify", "ask", "serve", "convert"} <= front
    cmds = readme_commands()
    for sub in ("pretrain", "squad", "squad-predict", "npy2json", "convert", "squad-evaluate",
                "create-pretraining-data", "demo"):  # fmt: skip
        assert any(c.split()[1] == sub for c in cmds), sub


@pytest.mark.parametrize("command", readme_commands())
def test_readme_command_parses(command):
    """Each command (README and docs) parses with the real parser, and --help with its flags succeeds."""
    argv = shlex.split(command)[1:]
    if argv[0].startswith("-"):
        return  # `bertkit --help` and the like
    parser = build_parser()
    if len(argv) == 1:  # a subcommand named in prose: it must exist
        assert argv[0] in next(a for a in parser._actions if a.dest == "command").choices
        return
    ns, unknown = parser.parse_known_args(argv)
    assert unknown == [], f"{command}: unknown flags {unknown}"
    assert ns.command == argv[0]
    with pytest.raises(SystemExit) as e:  # --help with those flags succeeds
        parser.parse_args([*argv, "--help"])
    assert e.value.code == 0
