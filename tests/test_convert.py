"""The Hugging Face name table: every row used, both directions, fused QKV split and joined exactly."""

from __future__ import annotations

import pytest
import torch

from bertkit.convert import HF_TABLE, HF_TIED, expand_table, from_hf, to_hf
from bertkit.model import BertForPreTraining, BertForQuestionAnswering, BertForSequenceClassification

transformers = pytest.importorskip("transformers", reason="transformers is the test oracle ([test] extra)")


@pytest.mark.parametrize(
    "ours_cls, hf_name",
    [
        (BertForPreTraining, "BertForPreTraining"),
        (BertForQuestionAnswering, "BertForQuestionAnswering"),
        (BertForSequenceClassification, "BertForSequenceClassification"),
    ],
)
def test_round_trip_through_hf_names(tiny_cfg, ours_cls, hf_name):
    torch.manual_seed(0)
    ours = ours_cls(tiny_cfg)
    state = ours.state_dict()
    hf_state = to_hf(state, tiny_cfg.num_hidden_layers)
    # The export loads strictly into transformers' own class: no missing, no unexpected keys.
    hf = getattr(transformers, hf_name)(transformers.BertConfig(**tiny_cfg.to_dict()))
    hf.load_state_dict(hf_state, strict=True)
    back, unused = from_hf(hf.state_dict(), tiny_cfg.num_hidden_layers)
    assert unused == []
    assert set(back) == set(state)
    for k in state:
        assert torch.equal(back[k], state[k]), k


def test_qkv_is_query_key_value_stacked(tiny_cfg):
    q, k, v = (torch.full((32, 32), float(i)) for i in range(3))
    hf_state = {
        f"bert.encoder.layer.0.attention.self.{n}.weight": t
        for n, t in zip(("query", "key", "value"), (q, k, v), strict=True)
    }
    state, _ = from_hf(hf_state, 1)
    qkv = state["bert.layers.0.attn.qkv.weight"]
    assert qkv.shape == (96, 32)
    assert torch.equal(qkv[:32], q) and torch.equal(qkv[32:64], k) and torch.equal(qkv[64:], v)


def test_partial_fusion_is_an_error():
    with pytest.raises(ValueError, match="lacks"):
        from_hf({"bert.encoder.layer.0.attention.self.query.weight": torch.zeros(2, 2)}, 1)


def test_unknown_keys_are_reported():
    _, unused = from_hf({"something.else": torch.zeros(1)}, 1)
    assert unused == ["something.else"]


def test_table_names_are_unique_and_cover_the_models(tiny_cfg):
    rows = expand_table(HF_TABLE, tiny_cfg.num_hidden_layers)
    ours = [r[0] for r in rows]
    theirs = [t for r in rows for t in r[1]]
    assert len(set(ours)) == len(ours) and len(set(theirs)) == len(theirs)
    assert not set(HF_TIED) & set(theirs)
    for cls in (BertForPreTraining, BertForQuestionAnswering, BertForSequenceClassification):
        assert set(cls(tiny_cfg).state_dict()) <= set(ours), cls.__name__
