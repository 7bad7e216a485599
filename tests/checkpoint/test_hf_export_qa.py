"""An exported fine-tuned SQuAD model answers in transformers as `bertkit ask` answers: a tiny model fine-tuned in
the test on real SQuAD dev questions (dev-v1.1, Super Bowl 50: two short paragraphs), written by `bertkit convert
--to hf`, loaded by transformers' AutoModelForQuestionAnswering and AutoTokenizer from that directory alone. Its
span for each question is pipeline("question-answering")'s (transformers 4; transformers 5 removed that pipeline,
so its rule is applied: P(start) x P(end), softmax over [CLS] and the context, [CLS] then zeroed, at most
max_answer_len=15 tokens, best first) and equals `bertkit ask`'s."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from bertkit.checkpoint.formats import save_pretrained
from bertkit.cli import main
from bertkit.model.bert import BertForQuestionAnswering
from bertkit.model.config import BertConfig
from bertkit.tasks.squad.data import convert_examples_to_features, read_squad_examples, squad_tokenizer

transformers = pytest.importorskip("transformers", reason="transformers is the test oracle ([test] extra)")
MAX_ANSWER = 15  # the pipeline's default max_answer_len


@pytest.fixture
def questions(tmp_path_factory, shared_data):
    data = json.loads((shared_data / "squad" / "dev-v1.1-Super_Bowl_50.json").read_text(encoding="utf-8"))
    paragraphs = [p for p in data["data"][0]["paragraphs"] if len(p["context"]) < 200][:2]
    for p in paragraphs:
        for qa in p["qas"]:
            qa["answers"] = qa["answers"][:1]  # training takes one answer
    path = tmp_path_factory.mktemp("qa") / "dev-two-paragraphs.json"
    path.write_text(json.dumps({"version": "1.1", "data": [{"title": "Super_Bowl_50", "paragraphs": paragraphs}]}))
    return path, [(qa["question"], p["context"]) for p in paragraphs for qa in p["qas"]]


@pytest.fixture
def exported(questions, tmp_path_factory):
    """Fine-tune a 2-layer, hidden-32 model on the questions (Google's loss, full batch), save it, export it. Its
    vocabulary is the WordPieces of these texts alone (a subset of bert-base-uncased's that tokenizes them the same:
    every piece the full vocabulary's longest-match gives is in it, and nothing longer), so training takes seconds."""
    path, pairs = questions
    full = squad_tokenizer()
    pieces = sorted({p for q, c in pairs for text in (q, c) for p in full.tokenize(text)})
    d = tmp_path_factory.mktemp("models")
    (d / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *pieces]) + "\n")
    tok = squad_tokenizer(d / "vocab.txt")
    f = convert_examples_to_features(read_squad_examples(path, is_training=True)[0], tok, 96, 64, 32, True)
    cfg = BertConfig(vocab_size=len(tok.vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=128, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0)  # fmt: skip
    torch.manual_seed(0)
    model = BertForQuestionAnswering(cfg)
    ids, types, mask = (torch.from_numpy(a).long() for a in (f.input_ids, f.segment_ids, f.input_mask))
    labels = [torch.from_numpy(a).long() for a in (f.start_position, f.end_position)]
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _ in range(80):
            logits = model(ids, types, mask)
            loss = sum(F.cross_entropy(x.masked_fill(mask == 0, -1e4), y) for x, y in zip(logits, labels, strict=True))
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(before)
    save_pretrained(model.eval(), cfg, d / "bertkit", d / "vocab.txt", do_lower_case=True)
    assert main(["convert", "--input", str(d / "bertkit"), "--to", "hf", "--output", str(d / "hf")]) == 0
    return d


def pipeline_answer(model, tokenizer, question: str, context: str) -> tuple[int, int]:
    """The character span [start, end) that pipeline("question-answering") answers (one window: short contexts)."""
    enc = tokenizer(question, context, return_offsets_mapping=True, return_tensors="pt")
    with torch.no_grad():
        out = model(
            input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], token_type_ids=enc["token_type_ids"]
        )
    in_context = torch.tensor([s == 1 for s in enc.sequence_ids(0)])
    allowed = in_context.clone()
    allowed[0] = True
    p_start, p_end = (torch.softmax(x[0].double().masked_fill(~allowed, -10000.0), -1) * in_context
                      for x in (out.start_logits, out.end_logits))  # fmt: skip
    spans = torch.outer(p_start, p_end).triu().tril(MAX_ANSWER - 1)
    best = int(spans.flatten().argmax())
    T, offsets = spans.shape[1], enc["offset_mapping"][0]
    return int(offsets[best // T][0]), int(offsets[best % T][1])


def test_exported_squad_model_answers_as_bertkit_ask(exported, questions, tmp_path):
    _, pairs = questions
    hf_dir = exported / "hf"
    assert json.loads((hf_dir / "config.json").read_text())["architectures"] == ["BertForQuestionAnswering"]
    model = transformers.AutoModelForQuestionAnswering.from_pretrained(hf_dir).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(hf_dir)
    if "question-answering" in transformers.pipelines.SUPPORTED_TASKS:  # transformers 4
        pipe = transformers.pipeline("question-answering", model=model, tokenizer=tokenizer, device="cpu")
        theirs = [(a["start"], a["end"]) for a in (pipe(question=q, context=c) for q, c in pairs)]
    else:
        theirs = [pipeline_answer(model, tokenizer, q, c) for q, c in pairs]
    rows = tmp_path / "q.jsonl"
    rows.write_text(
        "".join(json.dumps({"id": i, "question": q, "context": c}) + "\n" for i, (q, c) in enumerate(pairs))
    )
    for source in (hf_dir, exported / "bertkit"):  # `bertkit ask` on the export and on bertkit's own directory
        out = tmp_path / f"{source.name}.jsonl"
        argv = ["ask", "--model", str(source), "--jsonl", str(rows), "--output", str(out),
                "--max_answer_length", str(MAX_ANSWER)]  # fmt: skip
        assert main(argv) == 0
        ours = [
            (r["answers"][0]["start"], r["answers"][0]["end"]) for r in map(json.loads, out.read_text().splitlines())
        ]
        assert ours == theirs, source.name
    # the spans are the model's answers, not noise: it learned the questions
    answers = [c[s:e] for (q, c), (s, e) in zip(pairs, theirs, strict=True)]
    golden = json.loads(questions[0].read_text())["data"][0]["paragraphs"]
    right = [qa["answers"][0]["text"] for p in golden for qa in p["qas"]]
    assert sum(a == r for a, r in zip(answers, right, strict=True)) >= 0.8 * len(right), list(
        zip(answers, right, strict=True)
    )
