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
    choose_tokenizer,
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
    flags = Npy2JsonConfig.from_flags(predict_file="dev.json")
    choice = flags.tokenizer.choose(str(ckpt))
    assert choice[:3] == (str(ckpt / "vocab.txt"), False, "")
    assert "do_lower_case False (vocabulary the checkpoint's; casing: it was trained with" in choice.line()
    flags = flags.replace(do_lower_case=True)
    with pytest.raises(ValueError, match="--do_lower_case True with a cased model"):
        flags.tokenizer.choose(str(ckpt))
    assert flags.replace(check_casing=False).tokenizer.choose(str(ckpt))[1] is True


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
    data = tmp_path / "data"
    data.mkdir()

    def pretrain(vocab_file, size, checkpoint=None):
        return choose_tokenizer(vocab_file, None, checkpoint, size, data=(("--data_dir", str(data)),), fallback=False)

    assert "no vocabulary is known" in pretrain(None, 100).note
    src = vocab(tmp_path / "v.txt", ["Paris"])
    record_data_vocab(data, src, do_lower_case=False)
    assert pretrain(None, 6)[:3] == (str(data / "vocab.txt"), False, "")
    assert "6 tokens, the model's vocab_size is 100: 94 embedding rows are never used" in pretrain(None, 100).note
    assert pretrain(str(src), 6)[:2] == (str(src), False)
    with pytest.raises(ValueError, match="--vocab_file .*w.txt is not the vocabulary --data_dir .* was made with"):
        pretrain(str(vocab(tmp_path / "w.txt", ["Lyon"])), 100)
    with pytest.raises(ValueError, match="has 6 tokens, more than the model's vocab_size 5"):
        pretrain(None, 5)
    ckpt = tmp_path / "ckpt"  # continued from a checkpoint whose vocabulary is not the data's
    ckpt.mkdir()
    vocab(ckpt / "vocab.txt", ["Lyon"])
    with pytest.raises(ValueError, match="the model's vocabulary .*ckpt/vocab.txt .*is not the vocabulary --data_dir"):
        pretrain(None, 6, ckpt)


def test_the_data_vocabulary_is_checked_against_its_recorded_sha256(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    record_data_vocab(data, vocab(tmp_path / "v.txt", ["Paris", "Lyon"]), do_lower_case=False)
    text = (data / "vocab.txt").read_text()
    (data / "vocab.txt").write_text(text.replace("Paris\n", "Paris\x0b"))  # a damaged newline merges two lines
    with pytest.raises(ValueError, match="its sha256 is not the vocab_sha256 .*bertkit_data.json recorded"):
        data_vocab(data)


def test_duplicate_and_merged_lines_are_refused(tmp_path):
    with pytest.raises(ValueError, match="line 7: token 'a' already on line 6"):
        read_vocab(vocab(tmp_path / "dup.txt", ["a", "a"]))
    for merged in ["the\x0bof", "the*of", "the of", "##a.b"]:
        with pytest.raises(ValueError, match="cannot be a WordPiece token .* two lines merged"):
            read_vocab(vocab(tmp_path / "merged.txt", ["a", merged]))
    assert read_vocab(vocab(tmp_path / "ok.txt", ["...", "##s", "[unused0]", "é", "."]))[-1] == "."
    assert len(read_vocab(default_vocab_path())) == 30522


def test_a_short_vocabulary_warns_another_one_is_refused(tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    half = vocab(ckpt / "vocab.txt", ["paris"])
    assert "has 6 tokens, the model's vocab_size is 12" in choose_tokenizer(None, None, ckpt, 12).note
    other = vocab(tmp_path / "half.txt", ["lyon"])  # a --vocab_file other than the model's own: refused
    with pytest.raises(ValueError, match="differs from the checkpoint's own"):
        choose_tokenizer(str(other), None, ckpt, 12)
    assert choose_tokenizer(str(half), None, ckpt, 6).note == ""
