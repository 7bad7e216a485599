"""The model against Hugging Face transformers (an independent implementation), weights copied through
bertkit.checkpoint.convert's explicit name table: outputs and gradients agree to < 1e-5 on padded batches."""

from __future__ import annotations

import pytest
import torch

from bertkit.checkpoint.convert import from_hf
from bertkit.model.bert import (
    Bert,
    BertForPreTraining,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    gather_positions,
    num_parameters,
)
from bertkit.model.config import BertConfig

transformers = pytest.importorskip("transformers", reason="transformers is the test oracle ([test] extra)")

TOL = 1e-5


def hf_config(cfg: BertConfig, attn: str = "sdpa", **kw):
    c = transformers.BertConfig(**{k: v for k, v in cfg.to_dict().items()}, **kw)
    c._attn_implementation = attn
    return c


def load_from_hf(ours: torch.nn.Module, hf: torch.nn.Module) -> None:
    state, unused = from_hf(hf.state_dict(), ours.cfg.num_hidden_layers)
    assert unused == [], f"table left Hugging Face keys unmapped: {unused}"
    ours.load_state_dict(state, strict=True)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


def check_grads(ours: torch.nn.Module, hf: torch.nn.Module) -> None:
    """Map HF's gradients through the same table and compare with ours, parameter by parameter."""
    hf_grads = {k: p.grad for k, p in hf.named_parameters() if p.grad is not None}
    for tied, src in (("cls.predictions.decoder.weight", "bert.embeddings.word_embeddings.weight"),):
        hf_grads.setdefault(tied, hf_grads.get(src))
    mapped, _ = from_hf({k: v for k, v in hf_grads.items() if v is not None}, ours.cfg.num_hidden_layers)
    ours_grads = {k: p.grad for k, p in ours.named_parameters()}
    assert set(mapped) == set(ours_grads)
    for k, g in ours_grads.items():
        assert g is not None, k
        assert max_diff(g, mapped[k]) < TOL, k
    # The comparison must have something to compare: gradients well above the tolerance.
    assert max(g.abs().max().item() for g in ours_grads.values()) > 1e4 * TOL


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_pretraining_matches_hf(tiny_cfg, padded_batch, attn):
    torch.manual_seed(1)
    hf = transformers.BertForPreTraining(hf_config(tiny_cfg, attn)).eval()
    ours = BertForPreTraining(tiny_cfg).eval()
    load_from_hf(ours, hf)
    b = padded_batch
    out = hf(input_ids=b["input_ids"], attention_mask=b["input_mask"], token_type_ids=b["segment_ids"])
    mlm_dense, nsp = ours(b["input_ids"], b["segment_ids"], b["input_mask"])
    assert max_diff(mlm_dense, out.prediction_logits) < TOL
    assert max_diff(nsp, out.seq_relationship_logits) < TOL
    # The sparse head (only at the masked positions) equals the dense head gathered there.
    mlm_sparse, nsp2 = ours(b["input_ids"], b["segment_ids"], b["input_mask"], b["masked_lm_positions"])
    assert mlm_sparse.shape == (5, 3, tiny_cfg.vocab_size)
    assert max_diff(mlm_sparse, gather_positions(mlm_dense, b["masked_lm_positions"])) < TOL
    assert max_diff(mlm_sparse, gather_positions(out.prediction_logits, b["masked_lm_positions"])) < TOL
    assert torch.equal(nsp, nsp2)


def test_pretraining_gradients_match_hf(tiny_cfg, padded_batch):
    torch.manual_seed(2)
    hf = transformers.BertForPreTraining(hf_config(tiny_cfg)).train()
    ours = BertForPreTraining(tiny_cfg).train()  # dropout is 0 in tiny_cfg, so train mode is deterministic
    load_from_hf(ours, hf)
    b = padded_batch
    w = torch.randn(5, 13, tiny_cfg.vocab_size, generator=torch.Generator().manual_seed(3))
    out = hf(input_ids=b["input_ids"], attention_mask=b["input_mask"], token_type_ids=b["segment_ids"])
    n = b["input_mask"].sum()  # a per-token loss, so gradients are O(1)
    (out.prediction_logits * w * b["input_mask"][..., None]).sum().div(n).add(
        out.seq_relationship_logits.pow(2).mean()
    ).backward()
    mlm, nsp = ours(b["input_ids"], b["segment_ids"], b["input_mask"])
    (mlm * w * b["input_mask"][..., None]).sum().div(n).add(nsp.pow(2).mean()).backward()
    check_grads(ours, hf)


def test_question_answering_matches_hf(tiny_cfg, padded_batch):
    torch.manual_seed(4)
    hf = transformers.BertForQuestionAnswering(hf_config(tiny_cfg)).train()
    ours = BertForQuestionAnswering(tiny_cfg).train()
    load_from_hf(ours, hf)
    b = padded_batch
    out = hf(input_ids=b["input_ids"], attention_mask=b["input_mask"], token_type_ids=b["segment_ids"])
    start, end = ours(b["input_ids"], b["segment_ids"], b["input_mask"])
    assert max_diff(start, out.start_logits) < TOL and max_diff(end, out.end_logits) < TOL
    # Losses read real tokens only, as every task's loss does: Hugging Face builds its word embedding with
    # padding_idx=0, which zeroes the [PAD] row's gradient, where Google's BERT (and bertkit) do not.
    m = b["input_mask"]
    ((out.start_logits.sin() + out.end_logits.cos()) * m).sum().backward()
    ((start.sin() + end.cos()) * m).sum().backward()
    check_grads(ours, hf)


def test_sequence_classification_matches_hf(tiny_cfg, padded_batch):
    torch.manual_seed(5)
    hf = transformers.BertForSequenceClassification(hf_config(tiny_cfg, num_labels=3)).train()
    ours = BertForSequenceClassification(tiny_cfg, num_labels=3).train()
    load_from_hf(ours, hf)
    b = padded_batch
    out = hf(input_ids=b["input_ids"], attention_mask=b["input_mask"], token_type_ids=b["segment_ids"])
    logits = ours(b["input_ids"], b["segment_ids"], b["input_mask"])
    assert max_diff(logits, out.logits) < TOL
    out.logits.pow(2).sum().backward()
    logits.pow(2).sum().backward()
    check_grads(ours, hf)


@pytest.mark.parametrize("act", ["gelu", "relu", "tanh", "gelu_new"])
def test_activations_match_hf(tiny_cfg, padded_batch, act):
    cfg = BertConfig(**dict(tiny_cfg.to_dict(), hidden_act=act))
    torch.manual_seed(6)
    hf = transformers.BertForPreTraining(hf_config(cfg)).eval()
    ours = BertForPreTraining(cfg).eval()
    load_from_hf(ours, hf)
    b = padded_batch
    out = hf(input_ids=b["input_ids"], attention_mask=b["input_mask"], token_type_ids=b["segment_ids"])
    mlm, nsp = ours(b["input_ids"], b["segment_ids"], b["input_mask"])
    assert max_diff(mlm, out.prediction_logits) < TOL and max_diff(nsp, out.seq_relationship_logits) < TOL


def test_bert_base_parameter_count_equals_hf():
    cfg = BertConfig()  # BERT-base
    with torch.device("meta"):
        ours = BertForPreTraining(cfg)
        hf = transformers.BertForPreTraining(hf_config(cfg))
    n_hf = sum(p.numel() for p in hf.parameters())  # parameters() yields the tied decoder once
    assert num_parameters(ours) == n_hf
    assert 109_000_000 < n_hf < 111_000_000  # "~110M"


def test_no_padding_fast_path_equals_masked_path(tiny_cfg):
    """No input_mask (a batch without pad: SDPA's unmasked kernel) equals an all-ones mask."""
    torch.manual_seed(7)
    bert = Bert(tiny_cfg).eval()
    ids = torch.randint(0, 99, (3, 10))
    types = torch.randint(0, 2, (3, 10))
    fast, pooled = bert(ids, types, torch.ones(3, 10, dtype=torch.long))
    x = bert.emb(ids, types)
    full_mask = torch.ones(3, 1, 1, 10, dtype=torch.bool)
    for layer in bert.layers:
        x = layer(x, full_mask)
    assert max_diff(fast, x) < 1e-6
    none, _ = bert(ids, types, None)
    assert max_diff(fast, none) < 1e-6


def test_padding_does_not_change_real_tokens(tiny_cfg):
    torch.manual_seed(8)
    bert = Bert(tiny_cfg).eval()
    ids = torch.randint(1, 99, (1, 6))
    short, _ = bert(ids, torch.zeros_like(ids), torch.ones_like(ids))
    padded_ids = torch.cat([ids, torch.zeros(1, 4, dtype=torch.long)], 1)
    mask = torch.cat([torch.ones(1, 6), torch.zeros(1, 4)], 1).long()
    long, _ = bert(padded_ids, torch.zeros_like(padded_ids), mask)
    assert max_diff(long[:, :6], short) < TOL


def test_google_initialisation():
    torch.manual_seed(9)
    cfg = BertConfig(vocab_size=500, hidden_size=256, num_hidden_layers=1, num_attention_heads=4, intermediate_size=512)
    m = BertForPreTraining(cfg)
    w = m.bert.layers[0].mlp.fc1.weight
    assert abs(w.std().item() - 0.02 * 0.88) < 0.002  # truncated at 2 std: std shrinks by ~0.88
    assert w.abs().max().item() <= 0.04 + 1e-7
    assert m.bert.emb.word.weight.abs().max().item() <= 0.04 + 1e-7
    for name, p in m.named_parameters():
        if name.endswith("bias"):
            assert torch.all(p == 0), name
        if "norm.weight" in name:
            assert torch.all(p == 1), name


def test_decoder_is_tied_to_word_embeddings(tiny_cfg):
    m = BertForPreTraining(tiny_cfg)
    names = [n for n, _ in m.named_parameters()]
    assert not any("decoder" in n for n in names)  # one copy, used twice
    with torch.no_grad():
        m.bert.emb.word.weight[7].fill_(0.5)
    ids = torch.tensor([[1, 2, 3]])
    mlm, _ = m.eval()(ids)
    h = m.mlm.norm(m.mlm.act(m.mlm.transform(m.bert(ids)[0])))
    assert max_diff(mlm[..., 7], h @ torch.full((tiny_cfg.hidden_size,), 0.5)) < 1e-5


def test_too_long_and_bad_shapes(tiny_cfg):
    m = Bert(tiny_cfg)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        m(torch.zeros(1, 65, dtype=torch.long))
    with pytest.raises(ValueError, match="input_mask has shape"):
        m(torch.zeros(2, 5, dtype=torch.long), None, torch.ones(2, 4))


@pytest.mark.parametrize("masked", [False, True])
def test_explicit_attention_equals_sdpa(tiny_cfg, padded_batch, masked):
    """The CPU training fast path (explicit matmuls) equals SDPA: outputs and gradients, with padding."""
    from bertkit.model.bert import SelfAttention

    torch.manual_seed(10)
    a = BertForPreTraining(tiny_cfg).train()
    b = BertForPreTraining(tiny_cfg).train()
    b.load_state_dict(a.state_dict())
    bt = padded_batch
    mask = bt["input_mask"] if masked else torch.ones_like(bt["input_mask"])
    outs = []
    for model, explicit in ((a, True), (b, False)):
        for m in model.modules():  # this model's attention only: nothing another test could see
            if isinstance(m, SelfAttention):
                m.explicit = explicit
        mlm, nsp = model(bt["input_ids"], bt["segment_ids"], mask)
        ((mlm * mask[..., None]).sum() / mask.sum() + nsp.pow(2).mean()).backward()
        outs.append(mlm)
    assert max_diff(outs[0] * mask[..., None], outs[1] * mask[..., None]) < TOL
    for (name, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        assert max_diff(pa.grad, pb.grad) < TOL, name


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_explicit_attention_mask_in_place_equals_masked_fill(dtype):
    """The mask filled in place gives the bits of masked_fill(~mask, finfo.min), outputs and gradients, dropout
    on, with padding, a one-token sequence and an all-padding one."""
    import torch.nn.functional as F

    from bertkit.model.bert import explicit_attention

    def reference(q, k, v, mask, p):  # the formula before: masked_fill
        scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-1, -2)
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        return F.dropout(scores.softmax(-1), p) @ v

    g = torch.Generator().manual_seed(3)
    mask = torch.ones(3, 1, 1, 7, dtype=torch.bool)
    mask[0, ..., 4:], mask[1], mask[2, ..., 1:] = False, False, False  # padding, all padding, one token
    grads = []
    for f in (reference, explicit_attention):
        q, k, v = (torch.randn(3, 2, 7, 4, generator=g.manual_seed(i)).to(dtype).requires_grad_() for i in range(3))
        torch.manual_seed(5)
        y = f(q, k, v, mask, 0.1)
        y.backward(torch.randn(y.shape, generator=g.manual_seed(9)).to(dtype))
        grads.append((y, q.grad, k.grad, v.grad))
    for a, b in zip(*grads, strict=True):
        assert torch.equal(a, b)


def test_default_attention_choice():
    """SDPA for inference and on accelerators; the explicit path only for CPU training."""
    from bertkit.model.bert import explicit_attention

    q = k = v = torch.randn(1, 2, 5, 4)
    with torch.no_grad():
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    assert max_diff(explicit_attention(q, k, v, None, 0.0), y) < 1e-6


def test_sparse_pretraining_path_gradients_equal_dense(tiny_cfg, padded_batch):
    """The fast path (last layer computed only at [CLS] and the masked positions, sparse vocabulary projection)
    gives the same gradients as the plain path (everything dense, then gathered)."""
    torch.manual_seed(11)
    a, b = BertForPreTraining(tiny_cfg), BertForPreTraining(tiny_cfg)
    b.load_state_dict(a.state_dict())
    bt = padded_batch
    pos = bt["masked_lm_positions"]
    w = torch.randn(5, 3, tiny_cfg.vocab_size, generator=torch.Generator().manual_seed(12))
    mlm, nsp = a(bt["input_ids"], bt["segment_ids"], bt["input_mask"], pos)
    ((mlm * w).mean() + nsp.pow(2).mean()).backward()
    dense, nsp_b = b(bt["input_ids"], bt["segment_ids"], bt["input_mask"])
    ((gather_positions(dense, pos) * w).mean() + nsp_b.pow(2).mean()).backward()
    assert max_diff(mlm, gather_positions(dense, pos)) < TOL and max_diff(nsp, nsp_b) < TOL
    for (name, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        assert max_diff(pa.grad, pb.grad) < TOL, name
    assert max(p.grad.abs().max().item() for p in a.parameters()) > 1e-3


def test_compiled_encoder_has_no_graph_break(tiny_cfg, padded_batch):
    """torch.compile(fullgraph=True) takes the whole pretraining forward in one graph (eager backend: no codegen)."""
    m = BertForPreTraining(tiny_cfg).eval()
    b = padded_batch
    compiled = torch.compile(m, fullgraph=True, backend="eager")
    want = m(b["input_ids"], b["segment_ids"], b["input_mask"], b["masked_lm_positions"])
    got = compiled(b["input_ids"], b["segment_ids"], b["input_mask"], b["masked_lm_positions"])
    assert all(max_diff(w, g) < 1e-6 for w, g in zip(want, got, strict=True))
