"""Every state-dict form transformers reads for BERT, loaded by bertkit into the numbers transformers computes.

The sweep: BertModel, BertForPreTraining, BertForMaskedLM, BertForSequenceClassification, BertForQuestionAnswering,
each saved by transformers (model.safetensors, or sharded with model.safetensors.index.json) and as
pytorch_model.bin, single or sharded with pytorch_model.bin.index.json (transformers 5 writes safetensors only, so
the .bin files are written as transformers 4 wrote them: torch.save of the state dict, shared tensors and persistent
buffers included; transformers 5 still reads them). Outputs agree within 1e-5. Then each rule on its own: legacy
LayerNorm gamma/beta, buffers, the tied and the untied decoder, a lone decoder bias, a tensor no rule covers.
"""

from __future__ import annotations

import json

import pytest
import torch

from bertkit.checkpoint import convert
from bertkit.checkpoint.formats import load_into, load_state
from bertkit.model.bert import BertForPreTraining, BertForQuestionAnswering, BertForSequenceClassification

transformers = pytest.importorskip("transformers", reason="transformers is the test oracle ([test] extra)")
transformers.logging.set_verbosity_error()

FORMS = ["safetensors", "safetensors-sharded", "bin", "bin-sharded"]
CLASSES = ["BertModel", "BertForPreTraining", "BertForMaskedLM", "BertForSequenceClassification",
           "BertForQuestionAnswering"]  # fmt: skip


def hf_config(tiny_cfg, **extra):
    return transformers.BertConfig(**tiny_cfg.to_dict(), **extra)


def save(hf, d, form: str):
    """`hf` written in `form` into d: transformers' own save for safetensors, transformers 4's for .bin."""
    if form.startswith("safetensors"):
        hf.save_pretrained(d, max_shard_size="20KB" if form.endswith("sharded") else "5GB")
        return d
    hf.config.save_pretrained(d)
    state = hf.state_dict()
    if not form.endswith("sharded"):
        torch.save(state, d / "pytorch_model.bin")
        return d
    names, weight_map = list(state), {}
    for i, part in enumerate((names[: len(names) // 2], names[len(names) // 2 :])):
        shard = f"pytorch_model-0000{i + 1}-of-00002.bin"
        torch.save({k: state[k] for k in part}, d / shard)
        weight_map |= dict.fromkeys(part, shard)
    (d / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return d


def batch(vocab_size: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab_size, (3, 11), generator=g)
    mask = (torch.arange(11)[None] < torch.tensor([[11], [7], [4]])).long()
    types = (torch.arange(11)[None] >= 5).long() * mask
    return ids * mask, types, mask


def transformers_outputs(hf, ids, types, mask) -> list[torch.Tensor]:
    with torch.no_grad():
        out = hf.eval()(input_ids=ids, token_type_ids=types, attention_mask=mask)
    names = ("last_hidden_state", "pooler_output", "prediction_logits", "seq_relationship_logits", "logits",
             "start_logits", "end_logits")  # fmt: skip
    return [getattr(out, n) for n in names if getattr(out, n, None) is not None]


def bertkit_outputs(name: str, tiny_cfg, d, ids, types, mask):
    """bertkit's model for `name`, loaded from d, and its outputs in transformers' order; and the load report."""
    ours = {"BertForSequenceClassification": lambda: BertForSequenceClassification(tiny_cfg, num_labels=3),
            "BertForQuestionAnswering": lambda: BertForQuestionAnswering(tiny_cfg)}.get(
                name, lambda: BertForPreTraining(tiny_cfg))()  # fmt: skip
    report = load_into(ours.eval(), d)
    with torch.no_grad():
        if name == "BertModel":
            return list(ours.bert(ids, types, mask)), report
        if name == "BertForMaskedLM":
            return [ours(ids, types, mask)[0]], report
        out = ours(ids, types, mask)
        return (list(out) if isinstance(out, tuple) else [out]), report


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("name", CLASSES)
def test_every_form_transformers_saves_loads_into_its_numbers(tiny_cfg, tmp_path, name, form):
    torch.manual_seed(0)
    labels = {"num_labels": 3} if name == "BertForSequenceClassification" else {}
    hf = getattr(transformers, name)(hf_config(tiny_cfg, **labels)).eval()
    d = save(hf, tmp_path, form)
    ids, types, mask = batch(tiny_cfg.vocab_size)
    theirs = transformers_outputs(hf, ids, types, mask)
    ours, report = bertkit_outputs(name, tiny_cfg, d, ids, types, mask)
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs, strict=True):
        keep = mask.bool() if a.dim() >= 2 and a.shape[:2] == mask.shape else slice(None)  # real tokens only
        assert (a - b)[keep].abs().max() < 1e-5, name
    if form.startswith("bin"):  # transformers 5 still reads what transformers 4 wrote: same numbers
        again = transformers_outputs(getattr(transformers, name).from_pretrained(d), ids, types, mask)
        assert all(torch.equal(a, b) for a, b in zip(again, theirs, strict=True))
    # every tensor of the file once, each loaded or ignored by a named rule
    saved = set(hf.state_dict())
    if form.startswith("safetensors"):
        from safetensors import safe_open

        saved = {k for f in d.glob("*.safetensors") for k in safe_open(f, "pt").keys()}
    assert set(report.fate) == saved and report.skipped == []
    assert all(w in report.loaded or w.startswith("ignored: ") for w in report.fate.values())


def legacy(state: dict) -> dict:
    """pytorch-pretrained-bert's names, as google-bert/bert-base-uncased's own pytorch_model.bin has them."""
    out = {}
    for k, v in state.items():
        k = k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta")
        out[k] = v
    return out


def write_bin(d, config, state):
    d.mkdir(exist_ok=True)
    config.save_pretrained(d)
    torch.save(state, d / "pytorch_model.bin")
    return d


def test_legacy_gamma_beta_names_load_as_transformers_loads_them(tiny_cfg, tmp_path):
    torch.manual_seed(0)
    hf = transformers.BertForPreTraining(hf_config(tiny_cfg)).eval()
    d = write_bin(tmp_path / "legacy", hf.config, legacy(hf.state_dict()))
    assert any(k.endswith("LayerNorm.gamma") for k in torch.load(d / "pytorch_model.bin"))
    ids, types, mask = batch(tiny_cfg.vocab_size, seed=1)
    theirs = transformers_outputs(transformers.BertForPreTraining.from_pretrained(d), ids, types, mask)
    ours, report = bertkit_outputs("BertForPreTraining", tiny_cfg, d, ids, types, mask)
    assert report.new == [] and report.fate["bert.embeddings.LayerNorm.gamma"] == "bert.emb.norm.weight"
    assert (ours[0] - theirs[0])[mask.bool()].abs().max() < 1e-5 and (ours[1] - theirs[1]).abs().max() < 1e-5
    both = {**hf.state_dict(), "bert.embeddings.LayerNorm.gamma": hf.state_dict()["bert.embeddings.LayerNorm.weight"]}
    with pytest.raises(ValueError, match="are both bert.embeddings.LayerNorm.weight"):
        load_state(write_bin(tmp_path / "both", hf.config, both))


def test_buffers_are_ignored_by_their_rule(tiny_cfg, tmp_path):
    hf = transformers.BertModel(hf_config(tiny_cfg))
    state = {**hf.state_dict(), "embeddings.position_ids": torch.arange(64)[None],
             "embeddings.token_type_ids": torch.zeros(1, 64, dtype=torch.long)}  # fmt: skip
    report = load_state(write_bin(tmp_path / "b", hf.config, state))[3]
    assert report.ignored == ["bert.embeddings.position_ids", "bert.embeddings.token_type_ids"]
    assert report.fate["embeddings.position_ids"].startswith("ignored: a buffer")  # listed as the file names it


def untied(tiny_cfg, tmp_path):
    torch.manual_seed(0)
    hf = transformers.BertForMaskedLM(hf_config(tiny_cfg, tie_word_embeddings=False)).eval()
    assert hf.cls.predictions.decoder.weight.data_ptr() != hf.bert.embeddings.word_embeddings.weight.data_ptr()
    hf.save_pretrained(tmp_path / "untied")
    return hf, tmp_path / "untied"


def test_an_untied_decoder_is_refused_for_the_mlm_head_and_dropped_by_fine_tuning(tiny_cfg, tmp_path):
    hf, d = untied(tiny_cfg, tmp_path)
    with pytest.raises(ValueError, match=r"decoder.weight differs from the word embeddings \(up to .*refused"):
        load_into(BertForPreTraining(tiny_cfg), d)
    with pytest.raises(ValueError, match="untied decoder"):
        load_state(d)
    clf = BertForSequenceClassification(tiny_cfg, num_labels=2)
    report = load_into(clf, d)  # the MLM head is not used: dropped by the rule for heads the model lacks
    assert convert.UNTIED_DECODER in report.ignored
    assert report.fate["cls.predictions.decoder.weight"].startswith("ignored: BertForSequenceClassification has no")
    assert torch.equal(clf.bert.emb.word.weight, hf.bert.embeddings.word_embeddings.weight)


def test_tied_decoder_and_a_lone_decoder_bias(tiny_cfg, tmp_path):
    torch.manual_seed(0)
    hf = transformers.BertForMaskedLM(hf_config(tiny_cfg)).eval()
    with torch.no_grad():
        hf.cls.predictions.bias.normal_()
    state = hf.state_dict()  # the tied decoder weight and bias are in it, equal to what they are tied to
    assert "cls.predictions.decoder.weight" in state and "cls.predictions.decoder.bias" in state
    report = load_state(write_bin(tmp_path / "tied", hf.config, state))[3]
    assert report.fate["cls.predictions.decoder.weight"] == "ignored: tied to the word embeddings (equal)"
    lone = {k: v for k, v in state.items() if k != "cls.predictions.bias"}
    got, _, _, report = load_state(write_bin(tmp_path / "lone", hf.config, lone))
    assert torch.equal(got["mlm.bias"], state["cls.predictions.bias"]) and "mlm.bias" not in report.new
    assert report.fate["cls.predictions.decoder.bias"] == "mlm.bias"
    clash = {**state, "cls.predictions.decoder.bias": state["cls.predictions.bias"] + 1}
    with pytest.raises(ValueError, match="differs from cls.predictions.bias"):
        load_state(write_bin(tmp_path / "clash", hf.config, clash))


def test_a_tensor_no_rule_covers_is_an_error_and_other_heads_are_refused(tiny_cfg, tmp_path):
    hf = transformers.BertForPreTraining(hf_config(tiny_cfg))
    extra = {**hf.state_dict(), "lm_head.adapter.weight": torch.zeros(2)}
    with pytest.raises(ValueError, match="1 tensor.* no rule .*lm_head.adapter.weight"):
        load_state(write_bin(tmp_path / "x", hf.config, extra))
    ner = transformers.BertForTokenClassification(hf_config(tiny_cfg, num_labels=3))
    ner.save_pretrained(tmp_path / "ner")
    with pytest.raises(ValueError, match="BertForTokenClassification.*misread"):
        load_state(tmp_path / "ner")
