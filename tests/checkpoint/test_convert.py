"""The Hugging Face name table: every row used, both directions, fused QKV split and joined exactly."""

from __future__ import annotations

import pytest
import torch

from bertkit.checkpoint.convert import (
    HF_TABLE,
    HF_TIED,
    OF_TABLE,
    TF_TABLE,
    expand_table,
    foreign_shapes,
    from_hf,
    from_table,
    from_tf,
    hf_name,
    to_hf,
    to_table,
    training_state,
)
from bertkit.model.bert import BertForPreTraining, BertForQuestionAnswering, BertForSequenceClassification

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
    _, unused = from_hf({"something.else": torch.zeros(1), "bert.embeddings.position_ids": torch.arange(3)}, 1)
    assert unused == ["something.else"]  # the buffer has its rule


def test_table_names_are_unique_and_cover_the_models(tiny_cfg):
    rows = expand_table(HF_TABLE, tiny_cfg.num_hidden_layers)
    ours = [r[0] for r in rows]
    theirs = [t for r in rows for t in r[1]]
    assert len(set(ours)) == len(ours) and len(set(theirs)) == len(theirs)
    assert not set(HF_TIED) & set(theirs)
    for cls in (BertForPreTraining, BertForQuestionAnswering, BertForSequenceClassification):
        assert set(cls(tiny_cfg).state_dict()) <= set(ours), cls.__name__


# --- Google TF and OneFlow tables -------------------------------------------------------------------------


def _all_heads_state(cfg):
    torch.manual_seed(0)
    state = {}
    for cls in (BertForPreTraining, BertForQuestionAnswering, BertForSequenceClassification):
        state |= cls(cfg).state_dict()
    return state


@pytest.mark.parametrize("table", [TF_TABLE, OF_TABLE], ids=["tf", "oneflow"])
def test_foreign_tables_are_unique_cover_the_models_and_round_trip(tiny_cfg, table):
    rows = expand_table(table, tiny_cfg.num_hidden_layers)
    ours = [r[0] for r in rows]
    theirs = [t for r in rows for t in r[1]]
    assert len(set(ours)) == len(ours) and len(set(theirs)) == len(theirs)
    state = _all_heads_state(tiny_cfg)
    assert set(state) == set(ours)
    foreign = {k: v.contiguous() for k, v in to_table(table, state, tiny_cfg.num_hidden_layers).items()}
    back, unused = from_table(table, foreign, tiny_cfg.num_hidden_layers)
    assert unused == [] and set(back) == set(state)
    for k in state:
        assert torch.equal(back[k], state[k]), k


def test_tf_kernels_are_stored_in_by_out(tiny_cfg):
    """Google's dense layers compute x @ kernel: kernel is (in, out), so query.kernel.T is the first third of QKV."""
    H, inter = tiny_cfg.hidden_size, tiny_cfg.intermediate_size
    shapes = foreign_shapes(TF_TABLE, {k: tuple(v.shape) for k, v in _all_heads_state(tiny_cfg).items()}, 2)
    assert shapes["bert/encoder/layer_0/attention/self/query/kernel"] == (H, H)
    assert shapes["bert/encoder/layer_1/intermediate/dense/kernel"] == (H, inter)
    assert shapes["bert/encoder/layer_1/output/dense/kernel"] == (inter, H)
    assert shapes["cls/seq_relationship/output_weights"] == (2, H)  # already (out, in) in Google's code
    assert shapes["cls/squad/output_weights"] == (2, H)
    q, k, v = (torch.randn(H, H) for _ in range(3))
    names = [f"bert/encoder/layer_0/attention/self/{n}/kernel" for n in ("query", "key", "value")]
    state, _ = from_tf(dict(zip(names, (q, k, v), strict=True)), 1)
    assert torch.equal(state["bert.layers.0.attn.qkv.weight"], torch.cat([q.t(), k.t(), v.t()]))


def oneflow_benchmark_name(tf_name: str) -> str:
    """convert_tf_ckpt_to_of.py's rule: the scope's '/' become '-', then '-' and the last part, kernel -> weight."""
    scope, _, blob = tf_name.rpartition("/")
    return scope.replace("/", "-") + "-" + ("weight" if blob == "kernel" else blob)


def test_oneflow_names_follow_oneflow_benchmark(tiny_cfg):
    """convert_tf_ckpt_to_of.py writes each Google variable as its scopes joined by '-', 'kernel' -> 'weight';
    OneFlow's squad.py alone names its head differently (a dense layer `cls-squad-output`, kernel (H, 2))."""
    tf_rows = {r[0]: r[1] for r in expand_table(TF_TABLE, 2)}
    for ours, theirs, _ in expand_table(OF_TABLE, 2):
        if not ours.startswith(("qa.", "classifier.")):
            assert list(theirs) == [oneflow_benchmark_name(t) for t in tf_rows[ours]], ours
    H = tiny_cfg.hidden_size
    shapes = foreign_shapes(OF_TABLE, {k: tuple(v.shape) for k, v in _all_heads_state(tiny_cfg).items()}, 2)
    assert shapes["cls-squad-output-weight"] == (H, 2) and shapes["cls-squad-output-bias"] == (2,)
    assert shapes["bert-embeddings-position_embeddings"] == (1, tiny_cfg.max_position_embeddings, H)
    assert shapes["classification-output_weights"] == (2, H)


def test_training_state_and_hf_base_names():
    assert training_state("tf", ["a/kernel/adam_m", "a/kernel/adam_v", "global_step", "a/kernel"]) == (
        ["a/kernel/adam_m", "a/kernel/adam_v"],
        ["global_step"],
    )
    assert training_state("oneflow", ["x-weight-m", "x-weight-v", "System-Train-TrainStep-TrainNet", "x"]) == (
        ["x-weight-m", "x-weight-v"],
        ["System-Train-TrainStep-TrainNet"],
    )
    assert hf_name("embeddings.word_embeddings.weight") == "bert.embeddings.word_embeddings.weight"
    assert hf_name("cls.predictions.bias") == "cls.predictions.bias"
