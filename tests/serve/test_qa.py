"""QuestionAnswerer and `bertkit ask`: the answers are SQuAD prediction's (Google's write_predictions on the golden
logits, `bertkit squad-predict` on a model), the scores and spans Hugging Face's pipeline's."""

from __future__ import annotations

import json
import re
import sys

import numpy as np
import pytest
import torch

from bertkit.checkpoint.formats import save_hf, save_pretrained
from bertkit.cli import main
from bertkit.model.bert import BertForPreTraining, BertForQuestionAnswering
from bertkit.model.config import BertConfig
from bertkit.serve.qa import QuestionAnswerer
from bertkit.tasks.squad.data import convert_examples_to_features, read_squad_examples, squad_tokenizer
from bertkit.tasks.squad.predict import RawResults, predict_answers

TINY = dict(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
            max_position_embeddings=512)  # fmt: skip
CONTEXT = ("The  Denver Broncos\ndefeated the Carolina Panthers 24–10 to earn their third Super Bowl title.\n\n"
           "The game was played on February 7, 2016, at Levi's Stadium in Santa Clara, California.")  # fmt: skip


@pytest.fixture(scope="module")
def vocab(tmp_path_factory):
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "src" / "bertkit" / "data" / "vocab-bert-base-uncased.txt"
    assert path.is_file(), path
    return path


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, vocab):
    """A random tiny QA model (uncased vocabulary) in bertkit's format."""
    torch.manual_seed(0)
    cfg = BertConfig(**TINY)
    return save_pretrained(BertForQuestionAnswering(cfg), cfg, tmp_path_factory.mktemp("tiny") / "m", vocab)


@pytest.fixture(scope="module")
def qa(tiny_dir):
    return QuestionAnswerer.from_pretrained(tiny_dir, device="cpu")


def squad_pairs(path, paragraphs=None):
    data = json.loads(path.read_text(encoding="utf-8"))
    ps = [p for article in data["data"] for p in article["paragraphs"]][:paragraphs]
    return [(qa["id"], qa["question"], p["context"]) for p in ps for qa in p["qas"]]


# --- equal to SQuAD prediction --------------------------------------------------------------------------------


class GoldenLogits(torch.nn.Module):
    """A "model" that returns the logits Google's run_squad.py was given for each golden window (looked up by the
    window's tokens; a question asked twice of one paragraph has twin windows, answered in window order), so the
    QA API's windows and answers can be checked against the golden files."""

    def __init__(self, features: dict, logits: dict):
        super().__init__()
        row_of_uid = {int(u): i for i, u in enumerate(logits["unique_id"])}
        self.table = {}
        for ids, mask, uid in zip(features["input_ids"], features["input_mask"], features["unique_id"], strict=True):
            i = row_of_uid[int(uid)]
            key = ids[mask.astype(bool)].astype(np.int32).tobytes()
            self.table.setdefault(key, []).append((logits["start_logits"][i], logits["end_logits"][i]))

    def forward(self, ids, types, mask):
        keys = [row[m.bool()].numpy().astype(np.int32).tobytes() for row, m in zip(ids, mask, strict=True)]
        rows = [self.table[key].pop(0) for key in keys]
        L = ids.shape[1]
        return tuple(torch.from_numpy(np.stack([r[k][:L] for r in rows])) for k in (0, 1))


@pytest.mark.parametrize(
    "name, v2, articles", [("dev-v1.1-Super_Bowl_50", False, 1), ("dev-v2.0-first5", True, 2)], ids=["v1.1", "v2.0"]
)
def test_answers_are_squad_predicts_on_the_golden_logits(shared_data, tmp_path, name, v2, articles):
    """Google's windows (each is found in the table) and squad-predict's answers from the same logits."""
    golden = shared_data / "golden"
    features = dict(np.load(golden / f"google-squad-features-{name}-uncased-predict.npz"))
    logits = dict(np.load(golden / f"google-predictions-{name}-logits.npz"))
    dataset = json.loads((shared_data / "squad" / f"{name}.json").read_text())
    dataset["data"] = dataset["data"][:articles]  # v2.0: 2 of 5 articles (a shorter test)
    (tmp_path / "dev.json").write_text(json.dumps(dataset))
    pairs = squad_pairs(tmp_path / "dev.json")
    google = {i: a for i, a in json.loads((golden / f"google-predictions-{name}.json").read_text()).items()
              if i in {p[0] for p in pairs}}  # fmt: skip
    tokenizer = squad_tokenizer(shared_data / "vocab" / "bert-base-uncased-vocab.txt", True)
    qa = QuestionAnswerer(GoldenLogits(features, logits), tokenizer, batch_size=64, version_2_with_negative=v2)
    found = qa([(q, c) for _, q, c in pairs])
    got = {i: a[0].text if a else "" for (i, _, _), a in zip(pairs, found, strict=True)}

    # squad-predict's answers: the model's logits with -inf at padding (predict_logits), then predict_answers
    examples, _ = read_squad_examples(tmp_path / "dev.json", False)
    windows = convert_examples_to_features(examples, tokenizer)
    padding = ~windows.input_mask.astype(bool)
    rows = np.searchsorted(logits["unique_id"], windows.unique_id)  # the subset's windows come first, in order
    start, end = (np.where(padding, -np.inf, logits[k][rows]) for k in ("start_logits", "end_logits"))
    want = predict_answers(examples, windows, RawResults(windows.unique_id, start, end), tokenizer,
                           version_2_with_negative=v2).predictions  # fmt: skip
    assert got == want
    # Google ranks padding logits too before dropping them, so where the golden noise at padding is high its
    # top-20 lists hold fewer real positions; a trained model's padding logits are low.
    assert sum(got[i] == google[i] for i in google) > 0.97 * len(google)
    if v2:
        no_answer = [a for a in found if a[0].text == ""]
        assert no_answer and all((a[0].start, a[0].end) == (0, 0) and 0 < a[0].score <= 1 for a in no_answer)


def test_answers_equal_squad_predicts_with_several_windows(shared_data, tiny_dir, qa, tmp_path, capsys):
    """The real `bertkit squad-predict` command and the API, on short windows so that contexts take several."""
    source = json.loads((shared_data / "squad" / "dev-v1.1-Super_Bowl_50.json").read_text())
    source["data"][0]["paragraphs"] = source["data"][0]["paragraphs"][:4]
    predict_file = tmp_path / "dev.json"
    predict_file.write_text(json.dumps(source))
    out = tmp_path / "out"
    flags = ["--max_seq_length", "96", "--doc_stride", "32"]
    assert main(["squad-predict", "--model_load_dir", str(tiny_dir), "--predict_file", str(predict_file),
                 "--output_dir", str(out), *flags]) == 0  # fmt: skip
    capsys.readouterr()
    want = json.loads((out / "predictions.json").read_text())
    pairs = squad_pairs(predict_file)
    found = qa([(q, c) for _, q, c in pairs], max_seq_length=96, doc_stride=32)
    assert {i: a[0].text for (i, _, _), a in zip(pairs, found, strict=True)} == want
    windows = [len(qa.tokenizer.tokenize(c)) for _, _, c in pairs]
    assert max(windows) > 96  # several windows per context were needed


def test_windows_default_to_the_ones_the_model_was_fine_tuned_on(tiny_dir, tmp_path, vocab):
    """A snapshot's run_config.json gives the windows it was trained on; without one the window is 384 at most the
    model's max_position_embeddings, the stride 128 at most half of it (a small model is not refused)."""
    import shutil

    snap = tmp_path / "snap"
    shutil.copytree(tiny_dir, snap)
    (snap / "run_config.json").write_text(json.dumps({"max_seq_length": 96, "doc_stride": 32, "max_query_length": 20}))
    qa = QuestionAnswerer.from_pretrained(snap, device="cpu")
    assert (qa.max_seq_length, qa.doc_stride, qa.max_query_length) == (96, 32, 20)
    assert QuestionAnswerer.from_pretrained(snap, device="cpu", doc_stride=48).doc_stride == 48  # given wins
    cfg = BertConfig(**{**TINY, "max_position_embeddings": 128})
    small = save_pretrained(BertForQuestionAnswering(cfg), cfg, tmp_path / "small", vocab)
    qa = QuestionAnswerer.from_pretrained(small, device="cpu")
    assert (qa.max_seq_length, qa.doc_stride, qa.max_query_length) == (128, 64, 64)
    assert qa("Who won?", CONTEXT, top_k=1)  # answers, where a fixed 384 was refused


def test_a_batch_equals_one_question_at_a_time(qa):
    questions = ["Who won?", "Who lost the game?", "When was the game played?", "Where is Levi's Stadium?"]
    batched = qa([(q, CONTEXT) for q in questions], top_k=3)
    for q, answers in zip(questions, batched, strict=True):
        one = qa(q, CONTEXT, top_k=3)
        assert [(a.text, a.start, a.end) for a in one] == [(a.text, a.start, a.end) for a in answers]
        assert [a.score for a in one] == pytest.approx([a.score for a in answers], rel=1e-4)


# --- what the API adds: spans in the context, scores as the pipeline, loading ----------------------------------


def test_spans_point_into_the_context_and_answers_come_best_first(qa):
    answers = qa("Who won?", CONTEXT, top_k=5, max_answer_length=10)
    assert 1 <= len(answers) <= 5
    for a in answers:
        # text is squad-predict's (words joined by one space); the span is the context's own characters
        assert " ".join(CONTEXT[a.start : a.end].split()) == a.text
        assert 0 < a.score < 1 and a.start < a.end
    assert len({a.text for a in answers}) == len(answers)
    across = qa("Who won?", CONTEXT, top_k=20, max_answer_length=30)
    assert any(re.search(r"\s\s", CONTEXT[a.start : a.end]) for a in across)  # a span over "  " or "\n\n"
    assert qa("Who won?", "", top_k=3) == [] and qa("Who won?", " \n ") == []


def test_scores_and_spans_are_the_hugging_face_pipelines(qa, tiny_dir, vocab, tmp_path):
    """Same weights in transformers' BertForQuestionAnswering, single-window context: the spans and scores that
    pipeline("question-answering") (transformers 4; removed in 5) gives, by its own rule restated here: P(start) x
    P(end), softmax over [CLS] and the context tokens, [CLS] then zeroed, length <= max_answer_len, best first."""
    transformers = pytest.importorskip("transformers")
    hf = transformers.BertForQuestionAnswering.from_pretrained(save_hf(qa.model, qa.model.bert.cfg, tmp_path / "hf"))
    tokenizer = transformers.BertTokenizerFast(str(vocab), do_lower_case=True)
    every_span = QuestionAnswerer(qa.model, qa.tokenizer, n_best_size=512)  # Google's 20 best starts/ends: all
    for question in ("Who won?", "When was the game played?", "Where?"):
        enc = tokenizer(question, CONTEXT, return_offsets_mapping=True, return_tensors="pt")
        with torch.no_grad():
            out = hf.eval()(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])
        context = torch.tensor([s == 1 for s in enc.sequence_ids(0)])
        allowed = context.clone()
        allowed[0] = True
        p_start, p_end = (torch.softmax(x[0].double().masked_fill(~allowed, -10000.0), -1)
                          for x in (out.start_logits, out.end_logits))  # fmt: skip
        spans = torch.outer(p_start * context, p_end * context).triu().tril(30 - 1)
        best = spans.flatten().argsort(descending=True)[:3]
        T, offsets = spans.shape[1], enc["offset_mapping"][0]
        theirs = [(int(offsets[i // T][0]), int(offsets[i % T][1]), float(spans.flatten()[i])) for i in best]
        ours = every_span(question, CONTEXT, top_k=3)
        assert [(a.start, a.end) for a in ours] == [(s, e) for s, e, _ in theirs]
        assert [a.score for a in ours] == pytest.approx([score for _, _, score in theirs], rel=1e-4)


def test_arguments_out_of_range_are_named(qa):
    for kwargs, name in (({"top_k": 0}, "top_k"), ({"top_k": 21}, "top_k"), ({"max_answer_length": 0},
                         "max_answer_length"), ({"doc_stride": 0}, "doc_stride"), ({"max_seq_length": 513},
                         "max_seq_length"), ({"max_seq_length": 60}, "max_seq_length")):  # fmt: skip
        with pytest.raises(ValueError, match=name):
            qa("Who?", CONTEXT, **kwargs)
    with pytest.raises(ValueError, match="context"):
        qa("Who?")
    with pytest.raises(ValueError, match="pairs"):
        qa([("Who?", CONTEXT)], CONTEXT)


def test_loads_hugging_face_checkpoints_with_their_casing_and_warns_without_a_qa_head(qa, tiny_dir, vocab, tmp_path):
    hf_dir = save_hf(qa.model, qa.model.bert.cfg, tmp_path / "hf", vocab)
    (hf_dir / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": False}))
    loaded = QuestionAnswerer.from_pretrained(hf_dir, device="cpu")
    assert loaded.tokenizer.do_lower_case is False
    assert [a.text for a in loaded("who won?", CONTEXT.lower())] == [a.text for a in qa("who won?", CONTEXT.lower())]
    assert QuestionAnswerer.from_pretrained(tiny_dir, device="cpu").tokenizer.do_lower_case is True  # its vocab
    with pytest.raises(ValueError, match="do_lower_case"):  # contradicts the checkpoint: squad-predict's check
        QuestionAnswerer.from_pretrained(hf_dir, do_lower_case=True, device="cpu")
    cfg = BertConfig(**TINY)
    pretrained = save_pretrained(BertForPreTraining(cfg), cfg, tmp_path / "pre", vocab)
    with pytest.warns(UserWarning, match="no QA head"):
        QuestionAnswerer.from_pretrained(pretrained, device="cpu")


def test_lazy_export():
    import subprocess
    import sys

    import bertkit

    code = "import sys, bertkit; assert not {'torch', 'fastapi'} & set(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True)
    assert bertkit.QuestionAnswerer is QuestionAnswerer


# --- bertkit ask ------------------------------------------------------------------------------------------------


def test_ask_prints_answers_with_score_and_span(tiny_dir, qa, tmp_path, capsys):
    context = tmp_path / "context.txt"
    context.write_text(CONTEXT, encoding="utf-8")
    assert main(["ask", "--model", str(tiny_dir), "--question", "Who won?", "--context", str(context),
                 "--top_k", "2"]) == 0  # fmt: skip
    lines = capsys.readouterr().out.splitlines()
    want = qa("Who won?", CONTEXT, top_k=2)
    assert len(lines) == len(want) == 2
    for line, a in zip(lines, want, strict=True):
        assert a.text in line and f"[{a.start}, {a.end})" in line and f"score {a.score:.4f}" in line


def test_ask_answers_a_jsonl_file(tiny_dir, qa, tmp_path, capsys, monkeypatch):
    rows = [{"id": "a", "question": "Who won?", "context": CONTEXT}, {"id": 2, "question": "When?", "context": CONTEXT}]
    questions = tmp_path / "q.jsonl"
    questions.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "answers.jsonl"
    assert main(["ask", "--model", str(tiny_dir), "--jsonl", str(questions), "--output", str(out)]) == 0
    err = capsys.readouterr().err  # no progress bar in a file or pipe: `ask ... > log 2>&1` stays clean
    assert err.startswith("tokenizer: vocabulary") and len(err.splitlines()) == 1  # the vocabulary decision only
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert main(["ask", "--model", str(tiny_dir), "--jsonl", str(questions), "--output", str(out)]) == 0
    assert "2/2" in capsys.readouterr().err  # the bar, on a terminal
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert [g["id"] for g in got] == ["a", 2]
    assert got[0]["answers"] == [a.to_dict() for a in qa("Who won?", CONTEXT)]
    questions.write_text(json.dumps(rows[0]) + "\n{not json\n")
    assert main(["ask", "--model", str(tiny_dir), "--jsonl", str(questions)]) == 2
    assert f"{questions}:2: not valid JSON" in capsys.readouterr().err
