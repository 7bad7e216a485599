"""Shared fixtures: a tiny config (hidden 32, 2 layers) and a padded batch with both token types."""

from __future__ import annotations

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


@pytest.fixture
def shared_data():
    """../shared/data beside the repository; tests that need it skip when it is absent."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "shared" / "data"
    if not root.is_dir():
        pytest.skip(f"shared data not found at {root} (see README: tests on real data need ../shared/data)")
    return root
