"""Fixtures of the server's tests: a tiny random QA model on disk, loaded once, and in-process clients."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bertkit.checkpoint.formats import save_pretrained
from bertkit.model.bert import BertForQuestionAnswering
from bertkit.model.config import BertConfig
from bertkit.serve.qa import QuestionAnswerer

VOCAB = Path(__file__).resolve().parents[2] / "src" / "bertkit" / "data" / "vocab-bert-base-uncased.txt"


@pytest.fixture(scope="session")
def tiny_qa_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=37, max_position_embeddings=512)  # fmt: skip
    return save_pretrained(BertForQuestionAnswering(cfg), cfg, tmp_path_factory.mktemp("tinyqa") / "m", VOCAB)


@pytest.fixture(scope="session")
def tiny_qa(tiny_qa_dir) -> QuestionAnswerer:
    return QuestionAnswerer.from_pretrained(tiny_qa_dir, device="cpu")


@pytest.fixture(scope="session")
def make_client(tiny_qa_dir):
    """make_client(engine=None, kind="qa", **flags) -> a context manager yielding an in-process TestClient."""
    pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install bertkit[serve]")
    from fastapi.testclient import TestClient

    from bertkit.serve.http import ServeConfig, create_app

    def make(engine, kind: str = "qa", **flags):
        cfg = ServeConfig.from_flags(model=str(tiny_qa_dir), **{"batch_wait_ms": 1, **flags})
        return TestClient(create_app(engine, cfg, kind))

    return make
