"""Vocabulary and casing checks: a cased model lowercased (and the reverse) stops, a --vocab_file other than the
checkpoint's stops, a smaller one warns; data records the vocabulary it was made with."""

from __future__ import annotations

import json

import pytest

from bertkit.data.vocab import (
    casing_from_name,
    casing_of,
    check_casing,
    check_vocab,
    data_vocab,
    default_vocab_path,
    read_vocab,
    record_data_vocab,
)
from bertkit.tasks.squad.task import Npy2JsonConfig

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def vocab(path, words):
    path.write_text("".join(w + "\n" for w in SPECIAL + words))
    return path


def test_casing_from_the_vocabulary_and_the_name(tmp_path):
    assert casing_of(read_vocab(default_vocab_path()))[0] is False  # bert-base-uncased: no capitals in 30,522
    assert casing_of(SPECIAL + ["Paris", "##s", "the"])[0] is True
    assert casing_of(SPECIAL + ["paris", "the"])[0] is None  # too few pieces to call it uncased
    assert casing_from_name("models/uncased_L-12_H-768_A-12") is False  # "uncased" contains "cased"
    assert casing_from_name("models/cased_L-12_H-768_A-12/bert_model.ckpt") is True
    assert casing_from_name("bert-base-multilingual-cased") is True
    assert casing_from_name("models/my_bert") is None


def test_a_casing_that_contradicts_the_model_stops_with_the_way_out(tmp_path):
    cased = vocab(tmp_path / "v.txt", ["Paris", "paris", "France"])
    with pytest.raises(ValueError, match=r"--do_lower_case True with a cased model .*'Paris'.*Pass --do_lower_case "
                                         r"False, or --check_casing False"):  # fmt: skip
        check_casing(True, cased)
    check_casing(False, cased)
    with pytest.raises(ValueError, match="--do_lower_case False with an uncased model .* none of its"):
        check_casing(False, default_vocab_path())
    with pytest.raises(ValueError, match="its name .*uncased_L-12_H-768_A-12 says uncased"):
        check_casing(False, vocab(tmp_path / "small.txt", ["a"]), names=(str(tmp_path / "uncased_L-12_H-768_A-12"),))
    with pytest.raises(ValueError, match="it was trained with --do_lower_case False"):
        check_casing(True, None, recorded=False)


def test_squad_flags_take_the_checkpoints_casing_and_refuse_a_contradiction(tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    vocab(ckpt / "vocab.txt", ["paris", "france"])
    (ckpt / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": False}))
    flags = Npy2JsonConfig(predict_file="dev.json")
    assert flags.tokenizer_setup(str(ckpt)) == (str(ckpt / "vocab.txt"), False, "")
    flags.do_lower_case = True
    with pytest.raises(ValueError, match="--do_lower_case True with a cased model"):
        flags.tokenizer_setup(str(ckpt))
    flags.check_casing = False
    assert flags.tokenizer_setup(str(ckpt))[1] is True


def test_vocab_file_against_the_checkpoint(tmp_path):
    own = vocab(tmp_path / "own.txt", ["a", "b", "c"])
    other = vocab(tmp_path / "other.txt", ["a", "x", "c"])
    with pytest.raises(ValueError, match=r"differs from the checkpoint's own .*line 7: 'x' against 'b'"):
        check_vocab(other, own, 8)
    with pytest.raises(ValueError, match="has 8 tokens, more than the model's vocab_size 5"):
        check_vocab(own, own, 5)
    assert check_vocab(own, own, 8) == ""
    assert "has 8 tokens, the model's vocab_size is 10: 2 embedding rows are never used" in check_vocab(own, None, 10)


def test_data_records_its_vocabulary(tmp_path):
    src = vocab(tmp_path / "v.txt", ["Paris"])
    out = tmp_path / "data"
    out.mkdir()
    assert data_vocab(out) == (None, None)
    record_data_vocab(out, src, do_lower_case=False)
    assert data_vocab(out) == (str(out / "vocab.txt"), False)
    assert data_vocab(f"{out / 'part-0'},{out / 'part-1'}") == (str(out / "vocab.txt"), False)
    other = vocab(tmp_path / "w.txt", ["Lyon"])
    with pytest.raises(ValueError, match="exists and differs from the vocabulary used"):
        record_data_vocab(out, other, do_lower_case=False)


def test_pretrain_takes_the_datas_vocabulary_or_warns(tmp_path):
    from bertkit.data.vocab import pretrain_vocab

    data = tmp_path / "data"
    data.mkdir()
    assert "no vocabulary is known for --data_dir" in pretrain_vocab(None, str(data), 100)[2]
    src = vocab(tmp_path / "v.txt", ["Paris"])
    record_data_vocab(data, src, do_lower_case=False)
    assert pretrain_vocab(None, str(data), 100) == (str(data / "vocab.txt"), False, "")
    assert pretrain_vocab(str(src), str(data), 100)[:2] == (str(src), False)
    with pytest.raises(ValueError, match="is not the vocabulary --data_dir .* was made with"):
        pretrain_vocab(str(vocab(tmp_path / "w.txt", ["Lyon"])), str(data), 100)
    with pytest.raises(ValueError, match="6 tokens, more than --vocab_size 5: pass --vocab_size 6"):
        pretrain_vocab(None, str(data), 5)
