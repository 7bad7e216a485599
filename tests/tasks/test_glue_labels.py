"""Labels travel with a classifier: a checkpoint's label order (id2label/label2id, labels.txt) is mapped onto the
task's, unknown labels are one line, exports name the labels for transformers' pipeline; GLUE prediction from test
records; every flag a GLUE command prints exists."""

from __future__ import annotations

import json
import re
import shlex

import pytest
import torch
from test_classify import TRAIN, common, read_results, write_task

from bertkit.checkpoint.formats import load_state, save_hf
from bertkit.checkpoint.hf import labels_from_config
from bertkit.cli import build_parser, main
from bertkit.tasks.glue import data as glue
from bertkit.tasks.glue.labels import describe, label_order

MNLI, SST2, RTE = glue.get_task("mnli"), glue.get_task("sst-2"), glue.get_task("rte")


def test_label_order_maps_names_and_refuses_unknown_ones():
    hub = ["CONTRADICTION", "NEUTRAL", "ENTAILMENT"]  # an MNLI order on the Hub, not Google's
    perm = label_order(MNLI, hub, "m")
    assert perm == [0, 2, 1]  # Google's contradiction, entailment, neutral <- outputs 0, 2, 1
    assert describe(MNLI, hub, perm) == ("labels: the checkpoint's (CONTRADICTION, NEUTRAL, ENTAILMENT) mapped onto "
                                         "MNLI-m's: contradiction <- output 0 (CONTRADICTION), entailment <- output 2 "
                                         "(ENTAILMENT), neutral <- output 1 (NEUTRAL)")  # fmt: skip
    assert label_order(MNLI, ["contradiction", "entailment", "neutral"], "m") is None
    assert label_order(SST2, ["NEGATIVE", "POSITIVE"], "s") is None  # GLUE's meanings of 0 and 1
    assert label_order(SST2, ["positive", "negative"], "s") == [1, 0]
    assert label_order(glue.get_task("sts-b"), None, "s") is None
    for labels, message in ((["yes", "no"], "label 'yes' of its classifier \\(yes, no\\) is not one of RTE's"),
                            (["entailment"], "its classifier has 1 labels \\(entailment\\); RTE has 2"),
                            (["entailment", "Entailment"], "name one of RTE's labels twice")):  # fmt: skip
        with pytest.raises(ValueError, match=message):
            label_order(RTE, labels, "--init_checkpoint x")


def test_hugging_face_configs_name_labels_or_not():
    assert labels_from_config({"id2label": {"1": "b", "0": "a"}, "label2id": {"a": 0, "b": 1}}, "c") == ["a", "b"]
    assert labels_from_config({"id2label": {"0": "LABEL_0", "1": "LABEL_1"}}, "c") is None  # placeholders
    assert labels_from_config({}, "c") is None
    with pytest.raises(ValueError, match="disagree; which order the outputs follow is ambiguous"):
        labels_from_config({"id2label": {"0": "a", "1": "b"}, "label2id": {"a": 1, "b": 0}}, "c")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = write_task(tmp_path_factory.mktemp("labels") / "RTE")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main([*TRAIN, "--do_predict", *common(d, d / "run")]) == 0
    finally:
        torch.set_num_threads(before)
    return d


def flip(state: dict) -> dict:
    """The classifier with its two outputs swapped: the same model in another label order."""
    return {**state, "classifier.weight": state["classifier.weight"].flip(0),
            "classifier.bias": state["classifier.bias"].flip(0)}  # fmt: skip


def eval_flags(d, out, ckpt) -> list[str]:
    argv = ["classify", "--task_name", "RTE", "--do_eval", "--init_checkpoint", str(ckpt), *common(d, out)]
    del argv[argv.index("--bert_config_file") : argv.index("--bert_config_file") + 2]
    return argv


def test_a_checkpoint_in_another_label_order_is_mapped(trained, tmp_path, capsys):
    d = trained
    snapshot = d / "run" / "snaps" / "last_snapshot"
    assert (snapshot / "labels.txt").read_text() == "entailment\nnot_entailment\n"  # recorded by training
    state, cfg, _, report = load_state(snapshot)
    assert report.labels == ["entailment", "not_entailment"]
    named = save_hf(flip(state), cfg, tmp_path / "named", d / "vocab.txt", labels=["not_entailment", "entailment"])
    assert main(eval_flags(d, tmp_path / "a", named)) == 0
    assert "labels: the checkpoint's (not_entailment, entailment) mapped onto RTE's" in capsys.readouterr().out
    assert float(read_results(tmp_path / "a" / "out" / "eval_results.txt")["eval_accuracy"]) == 1.0
    # Without names (transformers' LABEL_0, LABEL_1) the order is Google's: the flipped model is then all wrong.
    unnamed = save_hf(flip(state), cfg, tmp_path / "unnamed", d / "vocab.txt")
    assert main(eval_flags(d, tmp_path / "b", unnamed)) == 0
    assert float(read_results(tmp_path / "b" / "out" / "eval_results.txt")["eval_accuracy"]) == 0.0
    wrong = save_hf(state, cfg, tmp_path / "wrong", d / "vocab.txt", labels=["yes", "no"])
    assert main(eval_flags(d, tmp_path / "c", wrong)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "label 'yes' of its classifier (yes, no) is not one of RTE's" in err[0]


def test_exported_classifier_names_its_labels_in_transformers_pipeline(trained, tmp_path, capsys):
    transformers = pytest.importorskip("transformers", reason="transformers is the test oracle ([test] extra)")
    d = trained
    out = tmp_path / "hf"
    assert (
        main(["convert", "--input", str(d / "run" / "snaps" / "last_snapshot"), "--to", "hf", "--output", str(out)])
        == 0
    )
    assert "labels (output order): entailment, not_entailment" in capsys.readouterr().out
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"] == {"0": "entailment", "1": "not_entailment"}
    assert config["label2id"] == {"entailment": 0, "not_entailment": 1}
    pipe = transformers.pipeline("text-classification", model=str(out), device="cpu")
    rows = [line.split("\t") for line in (d / "test.tsv").read_text().splitlines()[1:]]
    theirs = [pipe({"text": a, "text_pair": b})["label"] for _, a, b in rows]  # pipeline's best label
    ours = [line.split("\t")[1] for line in (d / "run" / "out" / "RTE.tsv").read_text().splitlines()[1:]]
    assert theirs == ours and set(ours) == {"entailment", "not_entailment"}


def test_predicting_from_test_records_equals_predicting_from_tsv(trained, tmp_path, capsys):
    d = trained
    records = tmp_path / "records"
    assert main(["create-glue-data", "--task_name", "RTE", "--data_dir", str(d), "--output_dir", str(records),
                 "--vocab_file", str(d / "vocab.txt"), "--max_seq_length", "24", "--splits", "train,dev,test"]) == 0  # fmt: skip
    printed = [
        line.split("read with: ", 1)[1] for line in capsys.readouterr().out.splitlines() if "read with: " in line
    ]
    assert len(printed) == 3
    for command in printed:  # each printed command parses: every flag it names exists
        build_parser("classify").parse_args(shlex.split(command)[1:])
    predict = shlex.split(printed[2])[1:]
    assert "--predict_data_dir" in predict and "--predict_example_num" in predict
    snapshot = d / "run" / "snaps" / "last_snapshot"
    out = tmp_path / "out"
    assert main([*predict, "--init_checkpoint", str(snapshot), "--output_dir", str(out), "--device", "cpu"]) == 0
    for name in ("RTE.tsv", "test_results.tsv"):
        assert (out / name).read_text() == (d / "run" / "out" / name).read_text(), name


def test_every_flag_a_glue_command_prints_exists(trained, tmp_path, capsys):
    """Run the GLUE commands, errors included, and look up every --flag they print in their parsers."""
    d = trained
    known = {o for name in ("classify", "create-glue-data") for a in build_parser(name)._subparsers._group_actions[0]
             .choices[name]._actions for o in a.option_strings}  # fmt: skip
    runs = [["create-glue-data", "--task_name", "RTE", "--data_dir", str(d), "--output_dir", str(tmp_path / "r"),
             "--vocab_file", str(d / "vocab.txt"), "--splits", "train,dev,test", "--output_format", "tfrecord"],
            ["classify", "--task_name", "ax", "--do_train", "--data_dir", str(d)],
            ["classify", "--task_name", "RTE", "--do_predict"],
            ["classify", "--task_name", "RTE", "--do_eval", "--eval_data_dir", str(tmp_path / "none")],
            ["classify", "--task_name", "RTE"]]  # fmt: skip
    text = ""
    for argv in runs:
        try:
            main(argv)
        except SystemExit:  # a flag error exits before main returns
            pass
        captured = capsys.readouterr()
        text += captured.out + captured.err
    flags = set(re.findall(r"(?<![\w-])--[a-z][a-z_]+", text))
    assert flags and flags <= known, flags - known
    assert "--predict_data_dir" in flags and "--predict_example_num" in flags
