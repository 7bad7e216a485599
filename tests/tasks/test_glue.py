"""GLUE data: every task's reader on small files in GLUE's own formats (train, dev and test), the real files'
quirks and counts, Google's featurization, the metrics against scikit-learn / scipy, the submission files, and
the OFRecord / TFRecord form written by `bertkit create-glue-data`."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from bertkit.data.records import read_ofrecord, read_tfrecord
from bertkit.data.tokenizer import WordPieceTokenizer
from bertkit.tasks.glue import data as glue
from bertkit.tasks.glue import records, results

# --- small files in each task's GLUE format ----------------------------------------------------------------------

PAIRS = [("The cat sat on the mat.", "A cat is sitting."), ('He said " no " twice.', "He refused."),
         ("Paris is in France.", "Paris is in Germany.")]  # fmt: skip


def write_glue_files(task_key: str, d: Path, labels: list[str]) -> Path:
    """train.tsv, dev.tsv and test.tsv (MNLI: its dev/test names) laid out as GLUE ships the task."""
    d.mkdir(parents=True, exist_ok=True)
    task = glue.TASKS[task_key]
    rows = {"train": [], "dev": [], "test": []}
    for split in rows:
        for i, ((a, b), label) in enumerate(zip(PAIRS, labels, strict=True)):
            test = split == "test"
            if task_key == "cola":
                rows[split].append([str(i), a] if test else ["gj04", label, "" if label == "1" else "*", a])
            elif task_key == "sst2":
                rows[split].append([str(i), a] if test else [a, label])
            elif task_key == "mrpc":
                rows[split].append([str(i) if test else label, "11", "22", a, b])
            elif task_key == "stsb":
                rows[split].append(
                    [str(i), "main-news", "2012", "0001", "none", "x", "y", a, b] + ([] if test else [label])
                )
            elif task_key == "qqp":
                rows[split].append([str(i), a, b] if test else [str(i), "1", "2", a, b, label])
            elif task_key.startswith("mnli"):
                parse = ["(x)", "(y)", "(x)", "(y)"]
                rows[split].append([str(i), "1", f"{i}e", "fiction", *parse, a, b] + ([] if test else ["n", label]))
            else:  # qnli, rte, wnli
                rows[split].append([str(i), a, b] + ([] if test else [label]))
    headers = {
        "sst2": (["sentence", "label"], ["index", "sentence"]),
        "mrpc": (["\ufeffQuality", "#1 ID", "#2 ID", "#1 String", "#2 String"],
                 ["index", "#1 ID", "#2 ID", "#1 String", "#2 String"]),
        "stsb": ("index genre filename year old_index source1 source2 sentence1 sentence2 score".split(),
                 "index genre filename year old_index source1 source2 sentence1 sentence2".split()),
        "qqp": ("id qid1 qid2 question1 question2 is_duplicate".split(), "id question1 question2".split()),
        "mnli": ("index promptID pairID genre s1bp s2bp s1p s2p sentence1 sentence2 label1 gold_label".split(),
                 "index promptID pairID genre s1bp s2bp s1p s2p sentence1 sentence2".split()),
        "cola": (None, ["index", "sentence"]),
    }  # fmt: skip
    default = (["index", "sentence1", "sentence2", "label"], ["index", "sentence1", "sentence2"])
    head_train, head_test = headers.get(task_key.removesuffix("mm"), default)
    for split, name in zip(("train", "dev", "test"), task.files, strict=True):
        head = head_test if split == "test" else head_train
        lines = ([head] if head else []) + rows[split]
        (d / name).write_text("\n".join("\t".join(r) for r in lines) + "\n", encoding="utf-8")
    return d


LABELS = {"cola": ["1", "0", "1"], "sst2": ["1", "0", "0"], "mrpc": ["1", "0", "1"], "stsb": ["4.2", "1.0", "0.5"],
          "qqp": ["0", "1", "0"], "mnli": ["entailment", "neutral", "contradiction"],
          "mnlimm": ["entailment", "neutral", "contradiction"], "qnli": ["entailment", "not_entailment", "entailment"],
          "rte": ["not_entailment", "entailment", "entailment"], "wnli": ["1", "0", "1"]}  # fmt: skip


@pytest.mark.parametrize("key", list(LABELS))
def test_every_task_reads_its_train_dev_and_test_files(tmp_path, key):
    d = write_glue_files(key, tmp_path, LABELS[key])
    task = glue.TASKS[key]
    pair = key not in ("cola", "sst2")
    for split in ("train", "dev", "test"):
        ex = glue.read_examples(task, d, split)
        assert [e.text_a for e in ex] == [a for a, _ in PAIRS]
        assert [e.text_b for e in ex] == ([b for _, b in PAIRS] if pair else [None] * 3)
        if split == "test":
            assert [e.label for e in ex] == [None] * 3 and [e.guid for e in ex] == ["0", "1", "2"]
        else:
            assert [e.label for e in ex] == LABELS[key] and ex[0].guid == f"{split}-0"
            glue.check_labels(task, ex)


def test_task_names_in_any_spelling_and_unknown_ones_listed():
    assert glue.get_task("SST-2") is glue.get_task("sst2") is glue.get_task("Sst_2")
    assert glue.get_task("MNLI-MM").name == "MNLI-mm" and glue.get_task("sts-b").is_regression
    with pytest.raises(ValueError, match="'glue' is not a task.*CoLA, SST-2, MRPC, STS-B, QQP, MNLI, MNLI-mm"):
        glue.get_task("glue")


def test_wrong_column_count_names_file_line_and_columns(tmp_path):
    d = write_glue_files("rte", tmp_path, LABELS["rte"])
    with open(d / "train.tsv", "a", encoding="utf-8") as f:
        f.write("3\tA premise with a\ttab inside\tand a hypothesis\tentailment\n")
    with pytest.raises(ValueError, match=r"train.tsv line 5: 5 tab-separated columns, expected 4 \(index, sentence1"):
        glue.read_examples(glue.TASKS["rte"], d, "train")
    (d / "test.tsv").write_text("index\tsentence\n0\tan SST-2 test file\n")  # another task's file
    with pytest.raises(
        ValueError, match=r"test.tsv: 2 columns \(index, sentence\), but RTE's test file has at least 3"
    ):
        glue.read_examples(glue.TASKS["rte"], d, "test")
    (d / "dev.tsv").write_text("gj04\t1\t\tfine\ngj04\t0\n")  # CoLA's files have no header: 4 columns
    with pytest.raises(ValueError, match=r"dev.tsv line 2: 2 tab-separated columns, expected 4$"):
        glue.read_examples(glue.TASKS["cola"], d, "dev")


def test_unknown_label_names_it_and_the_tasks_labels(tmp_path):
    d = write_glue_files("rte", tmp_path, ["entailment", "neutral", "entailment"])
    ex = glue.read_examples(glue.TASKS["rte"], d, "dev")
    with pytest.raises(ValueError, match=r"dev.tsv line 3: unknown label 'neutral'; RTE's labels are entailment, "):
        glue.check_labels(glue.TASKS["rte"], ex)
    d = write_glue_files("stsb", tmp_path / "s", ["4.2", "high", "1"])
    with pytest.raises(ValueError, match="label 'high' is not a number"):
        glue.check_labels(glue.TASKS["stsb"], glue.read_examples(glue.TASKS["stsb"], d, "train"))


def test_xnli_reads_googles_files(tmp_path):
    (tmp_path / "multinli").mkdir()
    (tmp_path / "multinli" / "multinli.train.zh.tsv").write_text("premise\thypo\tlabel\n前提\t假设\tcontradictory\n")
    cols = ["language", "gold_label", "s1bp", "s2bp", "s1p", "s2p", "sentence1", "sentence2", "promptID"]
    rows = [["en", "neutral", "", "", "", "", "a", "b", "1"], ["zh", "entailment", "", "", "", "", "甲", "乙", "1"]]
    (tmp_path / "xnli.dev.tsv").write_text("\n".join("\t".join(r) for r in [cols, *rows]) + "\n")
    task = glue.get_task("xnli")
    train = glue.read_examples(task, tmp_path, "train")
    assert (train[0].text_a, train[0].label) == ("前提", "contradiction")
    dev = glue.read_examples(task, tmp_path, "dev")
    assert [(e.text_a, e.text_b, e.label) for e in dev] == [("甲", "乙", "entailment")]


# --- the real files (../shared/data/glue) -----------------------------------------------------------------------

COUNTS = {  # SOURCES.md: data rows and label counts
    ("SST-2", "train"): {"1": 37569, "0": 29780}, ("SST-2", "dev"): {"1": 444, "0": 428},
    ("MRPC", "train"): {"1": 2474, "0": 1194}, ("MRPC", "dev"): {"1": 279, "0": 129},
    ("CoLA", "train"): {"1": 6023, "0": 2528}, ("CoLA", "dev"): {"1": 721, "0": 322},
    ("RTE", "train"): {"entailment": 1249, "not_entailment": 1241},
    ("RTE", "dev"): {"entailment": 146, "not_entailment": 131},
}  # fmt: skip


@pytest.mark.parametrize("name, split", list(COUNTS))
def test_real_glue_files_read_whole(shared_data, name, split):
    """The BOM of MRPC's header, CoLA's missing header and final newline, SST-2's and MRPC's lone quotes."""
    task = glue.get_task(name)
    ex = glue.read_examples(task, shared_data / "glue" / name, split)
    glue.check_labels(task, ex)
    assert Counter(e.label for e in ex) == COUNTS[name, split]
    if (name, split) == ("RTE", "dev"):
        assert ex[0].text_a.startswith("Dana Reeve, the widow of the actor")
    if (name, split) == ("MRPC", "dev"):
        assert ex[0].text_b.startswith('" The foodservice pie business')
    if (name, split) == ("CoLA", "dev"):
        assert ex[-1].where.endswith("dev.tsv line 1043")


# --- features: Google's convert_single_example -----------------------------------------------------------------


def google_features(example: glue.InputExample, labels: list[str], T: int, tokenizer: WordPieceTokenizer):
    """run_classifier.py's convert_single_example, token by token, as Google writes it."""
    tokens_a = tokenizer.tokenize(example.text_a)
    tokens_b = tokenizer.tokenize(example.text_b) if example.text_b else None
    if tokens_b:
        while len(tokens_a) + len(tokens_b) > T - 3:
            (tokens_a if len(tokens_a) > len(tokens_b) else tokens_b).pop()
    elif len(tokens_a) > T - 2:
        tokens_a = tokens_a[: T - 2]
    tokens = ["[CLS]", *tokens_a, "[SEP]"]
    segment_ids = [0] * len(tokens)
    if tokens_b:
        tokens += [*tokens_b, "[SEP]"]
        segment_ids += [1] * (len(tokens_b) + 1)
    input_ids = tokenizer.convert_tokens_to_ids(tokens)
    input_mask = [1] * len(input_ids)
    pad = T - len(input_ids)
    return input_ids + [0] * pad, input_mask + [0] * pad, segment_ids + [0] * pad, labels.index(example.label)


@pytest.mark.parametrize("name, T", [("RTE", 48), ("CoLA", 16), ("MRPC", 64)])
def test_features_equal_googles_convert_single_example(shared_data, name, T):
    task = glue.get_task(name)
    ex = glue.read_examples(task, shared_data / "glue" / name, "dev")[:120]
    tok = WordPieceTokenizer()
    f = glue.convert_examples_to_features(ex, task, T, tok)
    for i, e in enumerate(ex):
        ids, mask, seg, label = google_features(e, list(task.labels), T, tok)
        assert (f.input_ids[i].tolist(), f.input_mask[i].tolist(), f.segment_ids[i].tolist()) == (ids, mask, seg)
        assert f.label_ids[i] == label
    assert f.input_mask.sum(1).max() == T  # long examples were cut


def test_a_text_b_without_tokens_is_no_text_b_as_in_googles():
    """Google tests the tokens (`if tokens_b`), not the string: a text_b of spaces or control characters gives
    [CLS] a [SEP] cut to T - 2, not an empty second segment."""
    task, tok = glue.get_task("rte"), WordPieceTokenizer()
    ex = [glue.InputExample("dev-0", "the cat sat on the mat", b, "entailment", "") for b in (" ", "\x00 \t", "", None)]
    f = glue.convert_examples_to_features(ex, task, 8, tok)
    for i, e in enumerate(ex):
        ids, mask, seg, _ = google_features(e, list(task.labels), 8, tok)
        assert (f.input_ids[i].tolist(), f.input_mask[i].tolist(), f.segment_ids[i].tolist()) == (ids, mask, seg)
        assert f.input_mask[i].sum() == 8 and f.segment_ids[i].sum() == 0


def test_ax_is_glues_diagnostic_set_answered_with_mnlis_labels(tmp_path):
    rows = [["index", "sentence1", "sentence2"]] + [[str(i), a, b] for i, (a, b) in enumerate(PAIRS)]
    (tmp_path / "diagnostic.tsv").write_text("\n".join("\t".join(r) for r in rows) + "\n", encoding="utf-8")
    task = glue.get_task("AX")
    ex = glue.read_examples(task, tmp_path, "test")
    assert [(e.guid, e.text_a, e.text_b) for e in ex] == [(str(i), a, b) for i, (a, b) in enumerate(PAIRS)]
    assert task.labels == glue.get_task("MNLI").labels  # an MNLI model's outputs, in its order
    results.write_predictions(task, [e.guid for e in ex], np.eye(3), tmp_path)
    assert (tmp_path / "AX.tsv").read_text() == "index\tprediction\n0\tcontradiction\n1\tentailment\n2\tneutral\n"
    with pytest.raises(ValueError, match="AX has no train file: GLUE's diagnostic set is test only"):
        glue.read_examples(task, tmp_path, "train")


def test_truncate_pair_takes_from_the_longer_and_from_b_on_a_tie():
    a, b = [1, 2, 3, 4, 5], [6, 7, 8]
    glue.truncate_pair(a, b, 6)
    assert (a, b) == ([1, 2, 3], [6, 7, 8])
    glue.truncate_pair(a, b, 5)
    assert (a, b) == ([1, 2, 3], [6, 7])


# --- metrics against scikit-learn and scipy -------------------------------------------------------------------


def test_metrics_equal_scikit_learn_and_scipy():
    metrics = pytest.importorskip("sklearn.metrics", reason="scikit-learn is a test-only reference ([test] extra)")
    stats = pytest.importorskip("scipy.stats", reason="scipy is a test-only reference ([test] extra)")
    rng = np.random.default_rng(0)
    for n, k in [(50, 2), (1043, 2), (300, 3), (7, 2)]:
        label, pred = rng.integers(0, k, n), rng.integers(0, k, n)
        pred[: n // 2] = label[: n // 2]  # better than chance
        assert results.accuracy(pred, label) == pytest.approx(metrics.accuracy_score(label, pred), abs=1e-12)
        assert results.matthews_corrcoef(pred, label) == pytest.approx(
            metrics.matthews_corrcoef(label, pred), abs=1e-12
        )
        if k == 2:
            assert results.f1(pred, label) == pytest.approx(metrics.f1_score(label, pred), abs=1e-12)
    # degenerate: one class predicted (MCC 0, as scikit-learn), no positive anywhere (F1 0)
    label = np.array([0, 1, 1, 0])
    assert results.matthews_corrcoef(np.ones(4, int), label) == metrics.matthews_corrcoef(label, np.ones(4, int)) == 0
    assert results.f1(np.zeros(4, int), np.zeros(4, int)) == 0.0
    # STS-B: scores with ties (rounded), Pearson and Spearman
    x = rng.normal(size=500)
    y = np.round(x + rng.normal(size=500), 1).astype(np.float32)
    xs = np.round(x, 1)
    assert results.pearson(xs, y) == pytest.approx(stats.pearsonr(xs, y)[0], abs=1e-9)
    assert results.spearman(xs, y) == pytest.approx(stats.spearmanr(xs, y)[0], abs=1e-9)
    np.testing.assert_allclose(results.average_ranks(xs), stats.rankdata(xs))


def test_glue_metrics_reports_each_tasks_metrics():
    logits = np.array([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0], [0.0, 1.0]])
    labels = np.array([0, 1, 1, 1])
    assert results.glue_metrics(glue.get_task("mrpc"), logits, labels) == {"accuracy": 0.75, "f1": 0.8}
    assert set(results.glue_metrics(glue.get_task("cola"), logits, labels)) == {"matthews_corrcoef", "accuracy"}
    assert set(results.glue_metrics(glue.get_task("rte"), logits, labels)) == {"accuracy"}
    scores = np.array([[0.5], [2.0], [3.0], [4.5]])
    m = results.glue_metrics(glue.get_task("sts-b"), scores, np.array([1.0, 2.0, 2.5, 5.0]))
    assert set(m) == {"pearson", "spearman"} and m["spearman"] == pytest.approx(1.0)


def test_submission_files_use_glues_labels_and_indices(tmp_path):
    ex = [glue.InputExample(str(i), "a", "b", None, "") for i in (0, 1, 2)]
    paths = results.write_predictions(
        glue.get_task("rte"), [e.guid for e in ex], np.array([[2.0, 0.0], [0.0, 1.0], [1.0, 1.5]]), tmp_path
    )
    assert [p.name for p in paths] == ["test_results.tsv", "RTE.tsv"]
    assert (
        tmp_path / "RTE.tsv"
    ).read_text() == "index\tprediction\n0\tentailment\n1\tnot_entailment\n2\tnot_entailment\n"
    probs = [list(map(float, line.split("\t"))) for line in (tmp_path / "test_results.tsv").read_text().splitlines()]
    assert len(probs) == 3 and all(abs(sum(p) - 1) < 1e-6 for p in probs) and probs[0][0] > 0.88
    first = (tmp_path / "test_results.tsv").read_text().splitlines()[0]
    assert all(str(np.float32(x)) == x for x in first.split("\t"))  # float32 as str() prints it, as Google's
    assert [float(x) for x in first.split("\t")] == pytest.approx([1 / (1 + np.exp(-2)), 1 / (1 + np.exp(2))], abs=1e-6)
    results.write_predictions(
        glue.get_task("sts-b"), [e.guid for e in ex], np.array([[4.12345], [0.5], [2.0]]), tmp_path
    )
    assert (tmp_path / "STS-B.tsv").read_text().splitlines()[1] == "0\t4.123"


# --- records: bertkit create-glue-data ------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["ofrecord", "tfrecord"])
def test_create_glue_data_writes_the_features_as_records(tmp_path, fmt, capsys):
    d = write_glue_files("mrpc", tmp_path / "MRPC", LABELS["mrpc"])
    out = tmp_path / "records"
    cfg = records.CreateGlueDataConfig.from_flags(task_name="MRPC", data_dir=str(d), output_dir=str(out), max_seq_length=24,
                                    output_format=fmt, part_num=2, splits="train,dev,test")  # fmt: skip
    assert records.run_create_glue_data(cfg) == {"train": 3, "dev": 3, "test": 3}
    assert "MRPC train: 3 examples" in capsys.readouterr().out
    tok = WordPieceTokenizer()
    want = glue.convert_examples_to_features(glue.read_examples(glue.TASKS["mrpc"], d, "train"), glue.TASKS["mrpc"],
                                             24, tok)  # fmt: skip
    if fmt == "ofrecord":
        names = ["train.of_record-0", "train.of_record-1", "eval.of_record-0", "eval.of_record-1",
                 "predict.of_record-0", "predict.of_record-1", "predict_guids.txt", "bertkit_data.json",
                 "vocab.txt"]  # fmt: skip
        assert sorted(p.name for p in out.iterdir() if p.suffix != ".sha256") == sorted(names)
        files = records.part_files(out, "train.of_record-", 0, "train")
        first = next(read_ofrecord(files[0]))
        assert first["input_ids"].dtype == np.int32 and first["label_ids"].tolist() == [1]  # OneFlow's int32 lists
        assert sum(1 for f in files for _ in read_ofrecord(f)) == 3
    else:
        written = sorted(p.name for p in out.iterdir() if p.suffix != ".sha256")
        assert written == ["bertkit_data.json", "eval.tf_record", "predict.tf_record", "predict_guids.txt",
                           "train.tf_record", "vocab.txt"]  # fmt: skip
        files = [out / "train.tf_record"]
        assert next(read_tfrecord(files[0]))["is_real_example"].tolist() == [1]
    got = records.read_record_features(files, 24, regression=False)
    for k in glue.FEATURES:
        np.testing.assert_array_equal(getattr(got, k), getattr(want, k), err_msg=k)
    with pytest.raises(ValueError, match="already exist; remove them"):  # existing files are not replaced
        records.run_create_glue_data(cfg)


def test_part_files_errors_name_the_flags(tmp_path):
    (tmp_path / "train.of_record-0").write_bytes(b"")
    assert records.part_files(tmp_path, "train.of_record-", 0, "train") == [tmp_path / "train.of_record-0"]
    with pytest.raises(ValueError, match="train_data_part_num 2 needs train.of_record-0 ... train.of_record-1.*"
                                         "missing train.of_record-1"):  # fmt: skip
        records.part_files(tmp_path, "train.of_record-", 2, "train")
    with pytest.raises(ValueError, match="--eval_data_dir .*: eval_data_part_num 0 needs .*found: none"):
        records.part_files(tmp_path, "eval.of_record-", 0, "eval")
    with pytest.raises(ValueError, match="--eval_data_dir .*nope: no such file or directory"):
        records.part_files(tmp_path / "nope", "eval.of_record-", 0, "eval")
