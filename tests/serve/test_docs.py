"""docs/serving.md shows a newcomer both model kinds behind an API key (tests/test_readme.py parses its commands)."""

from __future__ import annotations

import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "serving.md"


def doc_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)
    lines = (line.strip() for block in blocks for line in block.replace("\\\n", " ").splitlines())
    return [line for line in lines if line.startswith("bertkit ")]


def test_the_guide_shows_both_model_kinds_behind_a_key():
    commands = doc_commands()
    assert sum(c.startswith("bertkit serve") for c in commands) >= 2
    assert any("--api_key" in c for c in commands) and "BERTKIT_API_KEY" in DOC.read_text(encoding="utf-8")
