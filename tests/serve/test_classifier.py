"""Classifiers served: `TextClassifier` and `bertkit serve --model CLASSIFY_SNAPSHOT` (POST /predict) give the numbers
`bertkit classify --do_predict` writes (test_results.tsv) with the task's label names; the model's kind is found
from the snapshot; --quantize int8 stays close to fp32 and fp32 stays exact."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from serve_fixtures import JSON

from bertkit.cli import main
from bertkit.model.config import BertConfig
from bertkit.serve.classify import TextClassifier, is_classifier

WORDS = "yes no the cat dog sat ran on a mat rug and then it was red blue big small".split()
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def write_rte(d: Path, seed: int = 0) -> Path:
    """RTE-format files whose label is sentence1's first word (yes: entailment), a tiny vocab and model config."""
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    label = ("not_entailment", "entailment")
    for split, n in (("train", 32), ("dev", 8), ("test", 12)):
        rows = []
        for i in range(n):
            y = int(rng.integers(0, 2))
            a = " ".join(["yes" if y else "no", *rng.choice(WORDS[2:], int(rng.integers(2, 14)))])
            b = " ".join(rng.choice(WORDS[2:], int(rng.integers(1, 9))))
            rows.append(f"{i}\t{a}\t{b}" + (f"\t{label[y]}" if split != "test" else ""))
        head = "index\tsentence1\tsentence2" + ("\tlabel" if split != "test" else "")
        (d / f"{split}.tsv").write_text("\n".join([head, *rows]) + "\n", encoding="utf-8")
    (d / "vocab.txt").write_text("\n".join(SPECIAL + WORDS) + "\n")
    BertConfig(vocab_size=32, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
               max_position_embeddings=64).to_json_file(d / "tiny.json")  # fmt: skip
    return d


@pytest.fixture(scope="module")
def fine_tuned(tmp_path_factory):
    """A classifier fine-tuned by `bertkit classify` (a few steps), and its --do_predict outputs."""
    d = write_rte(tmp_path_factory.mktemp("rte") / "RTE")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        argv = ["classify", "--task_name", "rte", "--do_train", "--do_predict", "--data_dir", str(d),
                "--vocab_file", str(d / "vocab.txt"), "--bert_config_file", str(d / "tiny.json"),
                "--max_seq_length", "24", "--train_batch_size", "8", "--iter_num", "8", "--learning_rate", "3e-3",
                "--output_dir", str(d / "out"), "--device", "cpu", "--predict_batch_size", "5"]  # fmt: skip
        assert main(argv) == 0
    finally:
        torch.set_num_threads(before)
    return d


def test_text_classifier_gives_classify_do_predicts_numbers(fine_tuned):
    d = fine_tuned
    snapshot = d / "out" / "last_snapshot"
    assert is_classifier(snapshot)
    clf = TextClassifier.from_pretrained(snapshot, device="cpu", batch_size=5)
    assert clf.labels == ("entailment", "not_entailment") and clf.max_seq_length == 24  # RTE's, the run's window
    pairs = [line.split("\t")[1:3] for line in (d / "test.tsv").read_text().splitlines()[1:]]
    found = clf([{"text": a, "text_pair": b} for a, b in pairs])
    want = np.array([[float(x) for x in line.split("\t")] for line in (d / "out" / "test_results.tsv").read_text().splitlines()], np.float32)  # fmt: skip
    got = np.array([[p.scores[label] for label in clf.labels] for p in found], np.float32)
    np.testing.assert_array_equal(got, want)  # test_results.tsv's float32 probabilities, exactly
    submitted = [line.split("\t")[1] for line in (d / "out" / "RTE.tsv").read_text().splitlines()[1:]]
    assert [p.label for p in found] == submitted
    one = clf(pairs[0][0], text_pair=pairs[0][1])
    assert one.label == found[0].label and one.score == pytest.approx(found[0].score, rel=1e-6)


def test_inputs_are_taken_as_the_pipeline_takes_them(fine_tuned):
    clf = TextClassifier.from_pretrained(fine_tuned / "out" / "last_snapshot", device="cpu")
    assert isinstance(clf("yes the cat"), type(clf({"text": "yes the cat"})))
    assert len(clf(["yes the cat", {"text": "no", "text_pair": "a mat"}])) == 2
    for bad in (5, [{"text": 5}], {"txt": "x"}, [["a", "b"]]):
        with pytest.raises(ValueError, match="each input must be"):
            clf(bad)


def test_serve_finds_the_classifier_and_predicts_the_same(fine_tuned, make_client):
    from bertkit.serve.http import ServeConfig, load_engine

    d = fine_tuned
    engine, kind = load_engine(ServeConfig.from_flags(model=str(d / "out" / "last_snapshot"), device="cpu"))
    assert kind == "classify"
    pairs = [line.split("\t")[1:3] for line in (d / "test.tsv").read_text().splitlines()[1:]]
    direct = engine([{"text": a, "text_pair": b} for a, b in pairs])
    with make_client(engine, "classify") as c:
        r = c.post("/predict", json=[{"text": a, "text_pair": b} for a, b in pairs])
        assert r.status_code == 200
        for got, want in zip(r.json(), direct, strict=True):
            assert got["label"] == want.label and np.float32(got["score"]) == np.float32(want.score)
        r = c.post("/predict", json={"text": pairs[0][0], "text_pair": pairs[0][1]})
        assert (
            r.status_code == 200
            and r.json()["label"] == direct[0].label
            and set(r.json()["scores"]) == set(engine.labels)
        )
        assert c.post("/predict", json="yes the cat").json()["label"] in engine.labels  # a bare string, as the pipeline
        r = c.post("/answer", json={"question": "q", "context": "c"})  # a QA client at a classifier
        assert r.status_code == 404 and "a classifier: POST /predict" in r.json()["detail"]
        for bad in (
            {"text": 5},
            {"text": "a", "colour": "red"},
            [],
            {"text": "x" * 30_000},
            {"text": "a", "text_pair": True},
        ):
            r = c.post("/predict", content=json.dumps(bad), headers=JSON)
            assert r.status_code == 422, bad
        assert c.post("/answer", json={"question": "q", "context": "c"}).status_code == 404
        info = c.get("/info").json()
        assert info["kind"] == "classify" and info["labels"] == ["entailment", "not_entailment"]
        assert info["windows"] == {"max_seq_length": 24}


def test_int8_is_close_to_fp32_and_fp32_is_exact(fine_tuned):
    snapshot = fine_tuned / "out" / "last_snapshot"
    texts = [line.split("\t")[1] for line in (fine_tuned / "test.tsv").read_text().splitlines()[1:]]
    fp32 = TextClassifier.from_pretrained(snapshot, device="cpu")
    int8 = TextClassifier.from_pretrained(snapshot, device="cpu", quantize="int8")
    assert fp32.model is not int8.model and any("quantized" in type(m).__module__ for m in int8.model.modules())
    prepared = fp32.prepare([(t, None) for t in texts])
    (a,), (b,) = fp32.logits(*prepared.inputs), int8.logits(*prepared.inputs)
    assert np.abs(a - b).max() < 0.05 * np.abs(a).max() + 0.02
    assert not any("quantized" in type(m).__module__ for m in fp32.model.modules())
