"""Shared fixtures: a tiny config (hidden 32, 2 layers), a padded batch with both token types, and the real data
(../shared/data, or the oracles vendored in tests/fixtures/shared)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch

from bertkit.model.config import BertConfig

torch.set_num_threads(2)


@pytest.fixture
def tiny_cfg() -> BertConfig:
    return BertConfig(
        vocab_size=99,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )


@pytest.fixture
def padded_batch() -> dict[str, torch.Tensor]:
    """Five sequences of lengths 13, 9, 5, 1, 11 padded to 13; segment B starts mid-sequence."""
    g = torch.Generator().manual_seed(0)
    lengths = torch.tensor([13, 9, 5, 1, 11])
    T = 13
    mask = (torch.arange(T)[None, :] < lengths[:, None]).long()
    ids = torch.randint(1, 99, (5, T), generator=g) * mask
    types = ((torch.arange(T)[None, :] >= (lengths[:, None] // 2)) & mask.bool()).long()
    positions = torch.tensor([[1, 4, 7], [0, 2, 8], [1, 3, 4], [0, 0, 0], [5, 9, 10]])
    return {"input_ids": ids, "input_mask": mask, "segment_ids": types, "masked_lm_positions": positions}


# ../shared/data beside the repository (BERTKIT_SHARED_DATA overrides it: set it to a missing folder to run the
# suite as a bare clone does). Without it, the small oracles vendored in tests/fixtures/shared (Google's own
# scripts' outputs and their inputs, same layout, sources in its SOURCES.md) stand in, and a test that needs a file
# not vendored there is skipped, naming the file.
SHARED = Path(os.environ.get("BERTKIT_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
VENDORED = Path(__file__).resolve().parent / "fixtures" / "shared"


@pytest.fixture
def shared_data():
    """../shared/data when present, else the vendored oracles (tests/fixtures/shared)."""
    return SHARED if SHARED.is_dir() else VENDORED


def _missing_vendored(exc: BaseException | None) -> str | None:
    """The first path under VENDORED that an exception (or one it chains) names and that does not exist."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        for path in re.findall(re.escape(str(VENDORED)) + r"[^\s'\":,)]*", str(exc) + repr(exc)):
            if not Path(path).exists():
                return str(Path(path).relative_to(VENDORED))
        if isinstance(exc, OSError) and exc.filename and str(exc.filename).startswith(str(VENDORED)):
            if not Path(exc.filename).exists():
                return str(Path(exc.filename).relative_to(VENDORED))
        exc = exc.__cause__ or exc.__context__
    return None


def _skip_when_not_vendored(item, outcome) -> None:
    if SHARED.is_dir() or outcome.excinfo is None:
        return
    missing = _missing_vendored(outcome.excinfo[1])
    if missing:
        outcome.force_exception(
            pytest.skip.Exception(f"needs ../shared/data/{missing} (not vendored in tests/fixtures/shared)")
        )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item):
    outcome = yield
    _skip_when_not_vendored(item, outcome)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    outcome = yield
    _skip_when_not_vendored(item, outcome)
