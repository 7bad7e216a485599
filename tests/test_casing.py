"""One casing and vocabulary policy on every command that tokenizes (data/vocab.choose_tokenizer): given a model with
a cased vocabulary (and nothing in its name), each command keeps the case without being told, prints the decision,
and refuses --do_lower_case True in one line (exit status 2). The same policy refuses data made with another
vocabulary than the model's. Until 2026-12, `classify --init_checkpoint <cased model>` lowercased silently."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bertkit.checkpoint.formats import save_pretrained
from bertkit.cli import main
from bertkit.model.bert import BertForQuestionAnswering
from bertkit.model.config import BertConfig

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = "The Cat sat on a Mat . the cat ran to Paris and Lyon Who What where did ? yes no entailment".split()
TEXT = "The Cat sat on a Mat . the cat ran to Paris and Lyon . Who sat on a Mat ? The Cat did ."
REFUSED = "--do_lower_case True with a cased model"
DECIDED = "do_lower_case False (vocabulary "


def tiny_model(d: Path, words: list[str]) -> Path:
    vocab = d.parent / f"{d.name}-vocab.txt"
    vocab.write_text("\n".join(SPECIAL + words) + "\n", encoding="utf-8")
    cfg = BertConfig(vocab_size=len(SPECIAL + words), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=64)  # fmt: skip
    torch.manual_seed(0)
    return save_pretrained(BertForQuestionAnswering(cfg), cfg, d, vocab)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A cased model ("my_bert": its name says nothing), an uncased one, a SQuAD json, GLUE RTE tsv files, text."""
    d = tmp_path_factory.mktemp("casing")
    out = {
        "model": tiny_model(d / "my_bert", WORDS),
        "uncased": tiny_model(d / "other", [w.lower() for w in WORDS[:7]]),
    }
    qas = [{"id": f"q{i}", "question": "Who sat on a Mat ?", "answers": [{"text": "The Cat", "answer_start": 0}]}
           for i in range(4)]  # fmt: skip
    squad = {"version": "1.1", "data": [{"title": "t", "paragraphs": [{"context": TEXT, "qas": qas}]}]}
    (out := out | {"squad": d / "squad.json", "glue": d / "rte", "text": d / "text.txt", "context": d / "ctx.txt"})
    out["squad"].write_text(json.dumps(squad), encoding="utf-8")
    out["glue"].mkdir()
    for split in ("train", "dev"):
        rows = [f"{i}\tThe Cat sat on a Mat .\tThe Cat did .\tentailment" for i in range(8)]
        (out["glue"] / f"{split}.tsv").write_text("index\tsentence1\tsentence2\tlabel\n" + "\n".join(rows) + "\n")
    out["text"].write_text("\n\n".join(f"{TEXT}\n{TEXT}" for _ in range(6)) + "\n", encoding="utf-8")
    out["context"].write_text(TEXT, encoding="utf-8")
    return out


def run(capsys, *argv) -> tuple[int, str, str]:
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:
        rc = e.code
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def decided_and_refused(capsys, argv: list, where: str = "out", again: tuple = ("--overwrite_output_dir",)) -> str:
    """The command keeps the case without being told (its decision line says why); with --do_lower_case True it
    stops with one line and status 2."""
    rc, out, err = run(capsys, *argv)
    assert rc == 0, err
    text = {"out": out, "err": err}[where]
    assert DECIDED in text, text
    rc, _, err = run(capsys, *argv, "--do_lower_case", "True", *again)
    assert rc == 2 and REFUSED in err and len(err.strip().splitlines()) == 1, err
    return text


def keeps_case(snapshot: Path) -> None:
    assert json.loads((snapshot / "tokenizer_config.json").read_text()) == {"do_lower_case": False}


TRAIN = ["--iter_num", "1", "--device", "cpu", "--learning_rate", "1e-3"]


def test_classify(files, tmp_path, capsys):
    out = decided_and_refused(capsys, ["classify", "--task_name", "rte", "--do_train", "--data_dir", files["glue"],
                                       "--init_checkpoint", files["model"], "--max_seq_length", "16",
                                       "--train_batch_size", "4", "--output_dir", tmp_path / "c", *TRAIN])  # fmt: skip
    assert "word pieces have capitals" in out
    keeps_case(tmp_path / "c" / "last_snapshot")


def test_squad_squad_predict_and_npy2json(files, tmp_path, capsys):
    windows = ["--max_seq_length", "32", "--doc_stride", "16", "--max_query_length", "8"]
    decided_and_refused(capsys, ["squad", "--do_train", "--train_file", files["squad"], "--init_checkpoint",
                                 files["model"], "--batch_size_per_device", "2", "--output_dir", tmp_path / "s",
                                 *windows, *TRAIN])  # fmt: skip
    keeps_case(tmp_path / "s" / "last_snapshot")
    decided_and_refused(capsys, ["squad-predict", "--predict_file", files["squad"], "--init_checkpoint",
                                 tmp_path / "s" / "last_snapshot", "--output_dir", tmp_path / "p", "--device", "cpu",
                                 *windows])  # fmt: skip
    decided_and_refused(capsys, ["npy2json", "--predict_file", files["squad"], "--all_results_file",
                                 tmp_path / "p" / "all_results.npy", "--vocab_file", files["model"] / "vocab.txt",
                                 "--output_dir", tmp_path / "n", *windows])  # fmt: skip


def test_ask_and_serve(files, capsys):
    decided_and_refused(capsys, ["ask", "--model", files["model"], "--question", "Who sat ?", "--context",
                                 files["context"], "--device", "cpu", "--max_query_length", "8"], "err", ())  # fmt: skip
    from bertkit.serve.ask import load_qa
    from bertkit.serve.http import ServeConfig

    flags = {"model": str(files["model"]), "device": "cpu", "max_query_length": 8}
    assert load_qa(ServeConfig.from_flags(**flags)).tokenizer.do_lower_case is False
    with pytest.raises(ValueError, match=REFUSED):
        load_qa(ServeConfig.from_flags(**flags, do_lower_case=True))


def test_create_data_and_pretrain(files, tmp_path, capsys):
    data = tmp_path / "data" / "records.tfrecord"
    cpd = ["create-pretraining-data", "--input_file", files["text"], "--output_file", data, "--vocab_file",
           files["model"] / "vocab.txt", "--max_seq_length", "32", "--max_predictions_per_seq", "5",
           "--dupe_factor", "2"]  # fmt: skip
    rc, out, err = run(capsys, *cpd)
    assert rc == 0 and DECIDED in out, err
    assert json.loads((data.parent / "bertkit_data.json").read_text())["do_lower_case"] is False
    rc, _, err = run(capsys, *cpd[:4], tmp_path / "again.tfrecord", *cpd[5:], "--do_lower_case", "True")
    assert rc == 2 and REFUSED in err, err

    pretrain = ["pretrain", "--data_dir", data, "--seq_length", "32", "--max_predictions_per_seq", "5",
                "--batch_size_per_device", "2", "--bert_config_file", files["model"] / "bert_config.json",
                "--model_load_dir", files["model"], "--data_part_num", "1", *TRAIN]  # fmt: skip
    rc, out, err = run(capsys, *pretrain, "--model_save_dir", tmp_path / "m", "--log_dir", tmp_path / "m",
                       "--save_last_snapshot", "True")  # fmt: skip
    assert rc == 0 and "do_lower_case False" in out, err
    keeps_case(tmp_path / "m" / "last_snapshot")
    # continued from a checkpoint whose vocabulary is not the data's: refused, even with --vocab_file given
    other = files["uncased"]
    for extra in ([], ["--vocab_file", data.parent / "vocab.txt"]):
        rc, _, err = run(capsys, *pretrain[:-10], "--bert_config_file", other / "bert_config.json",
                         "--model_load_dir", other, *TRAIN, "--model_save_dir", tmp_path / "x", *extra)  # fmt: skip
        assert rc == 2 and ("is not the vocabulary --data_dir" in err or "differs from the checkpoint's" in err), err


def test_create_glue_data_and_classify_from_records(files, tmp_path, capsys):
    recs = tmp_path / "records"
    argv = ["create-glue-data", "--task_name", "rte", "--data_dir", files["glue"], "--output_dir", recs,
            "--vocab_file", files["model"] / "vocab.txt", "--max_seq_length", "16"]  # fmt: skip
    rc, out, err = run(capsys, *argv)
    assert rc == 0 and DECIDED in out, err
    assert json.loads((recs / "bertkit_data.json").read_text())["do_lower_case"] is False
    rc, _, err = run(capsys, *argv[:6], tmp_path / "again", *argv[7:], "--do_lower_case", "True")
    assert rc == 2 and REFUSED in err, err
    classify = ["classify", "--task_name", "rte", "--train_data_dir", recs, "--max_seq_length", "16",
                "--train_batch_size", "4", *TRAIN]  # fmt: skip
    rc, out, err = run(capsys, *classify, "--init_checkpoint", files["model"], "--output_dir", tmp_path / "ok")
    assert rc == 0 and DECIDED in out, err
    for extra in ([], ["--vocab_file", recs / "vocab.txt"]):  # another model's vocabulary: refused either way
        rc, _, err = run(capsys, *classify, "--init_checkpoint", files["uncased"], "--output_dir", tmp_path / "no",
                         *extra)  # fmt: skip
        assert rc == 2 and ("is not the vocabulary --train_data_dir" in err or "differs from the checkpoint" in err)


def test_create_squad_data(files, tmp_path, capsys):
    argv = ["create-squad-data", "--input_file", files["squad"], "--output_dir", tmp_path / "w", "--vocab_file",
            files["model"] / "vocab.txt", "--max_seq_length", "32", "--doc_stride", "16", "--max_query_length", "8"]  # fmt: skip
    rc, out, err = run(capsys, *argv)
    assert rc == 0 and DECIDED in out, err
    assert json.loads((tmp_path / "w" / "bertkit_data.json").read_text())["do_lower_case"] is False
    rc, _, err = run(capsys, *argv[:4], tmp_path / "again", *argv[5:], "--do_lower_case", "True")
    assert rc == 2 and REFUSED in err, err
