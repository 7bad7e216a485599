"""SQuAD contexts with leading, repeated and odd whitespace: training labels and windows exactly as Google's
run_squad.py makes them. The oracle below restates Google's read_squad_examples and convert_examples_to_features
(@ eedf5716) in plain lists, word by word, as that script runs them: char_to_word_offset maps leading whitespace
to word -1, and Python's list[-1] then picks the last word."""

from __future__ import annotations

import contextlib
import json

import pytest

from bertkit.tasks.squad.data import convert_examples_to_features, read_squad_examples, squad_tokenizer

MAX_SEQ, STRIDE, MAX_QUERY = 24, 4, 8


def google_labels(context: str, answer: str, answer_start: int, question: str, tok) -> list[tuple] | None:
    """(window start, window length, start_position, end_position) per window, as run_squad.py labels them; None
    when Google's reader skips the question."""
    doc_tokens, char_to_word, prev_ws = [], [], True
    for c in context:
        if c in " \t\r\n" or ord(c) == 0x202F:
            prev_ws = True
        else:
            if prev_ws:
                doc_tokens.append(c)
            else:
                doc_tokens[-1] += c
            prev_ws = False
        char_to_word.append(len(doc_tokens) - 1)
    start = char_to_word[answer_start]
    end = char_to_word[answer_start + len(answer) - 1]
    if " ".join(doc_tokens[start : end + 1]).find(" ".join(answer.split())) == -1:
        return None
    orig_to_tok, pieces = [], []
    for word in doc_tokens:
        orig_to_tok.append(len(pieces))
        pieces.extend(tok.tokenize(word))
    tok_start = orig_to_tok[start]
    tok_end = orig_to_tok[end + 1] - 1 if end < len(doc_tokens) - 1 else len(pieces) - 1
    want = " ".join(tok.tokenize(answer))
    found = [(s, e) for s in range(tok_start, tok_end + 1) for e in range(tok_end, s - 1, -1)
             if " ".join(pieces[s : e + 1]) == want]  # fmt: skip
    if found:
        tok_start, tok_end = found[0]
    q = len(tok.tokenize(question)[:MAX_QUERY])
    room, spans, at = MAX_SEQ - q - 3, [], 0
    while at < len(pieces):
        length = min(len(pieces) - at, room)
        spans.append((at, length))
        if at + length == len(pieces):
            break
        at += min(length, STRIDE)
    out = []
    for s, n in spans:
        inside = tok_start >= s and tok_end <= s + n - 1
        out.append((s, n, *((tok_start - s + q + 2, tok_end - s + q + 2) if inside else (0, 0))))
    return out


CASES = [  # (context, answer text, answer_start)
    (" Paris", " Paris", 0),  # leading space, answer from it: Google's start is word -1, the last word
    ("   Paris", "Paris", 3),
    ("  the city of  Paris  is big", "Paris", 15),
    ("\tthe city\n\nof Paris", "city", 5),
    (" x y z Paris", " x", 0),  # words -1 .. 0: the slice doc_tokens[-1:1] is empty, so Google skips it
    (" the city  Paris ", " " * 11 + "P", 0),  # words -1 .. the last, whose text holds the answer: kept
    ("  Notre Dame  (1842)   by Father\u202fSorin ", "1842", 15),
    ("\n\nthe Broncos  defeated the Carolina Panthers 24–10 to earn their third Super Bowl title", "Broncos", 6),
    (" " * 3 + "a b c d e f g h i j k l m n o p q r s t u v w Paris", "Paris", 49),
]


@pytest.mark.parametrize("context, answer, answer_start", CASES)
def test_training_labels_and_windows_are_googles(tmp_path, context, answer, answer_start):
    tok = squad_tokenizer()
    question = "where is it?"
    qa = {"id": "q", "question": question, "answers": [{"text": answer, "answer_start": answer_start}]}
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"version": "1.1", "data": [{"paragraphs": [{"context": context, "qas": [qa]}]}]}))
    want = google_labels(context, answer, answer_start, question, tok)
    with pytest.warns(UserWarning, match="skipped 1") if want is None else contextlib.nullcontext():
        examples, skipped = read_squad_examples(path, is_training=True)
    assert skipped == (want is None)
    if want is None:
        return
    f = convert_examples_to_features(examples, tok, MAX_SEQ, STRIDE, MAX_QUERY, is_training=True)
    q = len(tok.tokenize(question))
    lengths = (f.input_mask.sum(1) - q - 3).tolist()  # context pieces per window
    got = list(zip(lengths, f.start_position.tolist(), f.end_position.tolist(), strict=True))
    assert got == [(n, s, e) for _, n, s, e in want]


def test_a_leading_space_answer_is_labelled_as_google_labels_it(tmp_path):
    """ " Paris" from offset 0: word -1 is the last word, here Paris itself, so Google trains on Paris's piece."""
    tok = squad_tokenizer()
    qa = {"id": "q", "question": "where?", "answers": [{"text": " Paris", "answer_start": 0}]}
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"version": "1.1", "data": [{"paragraphs": [{"context": " Paris", "qas": [qa]}]}]}))
    examples, _ = read_squad_examples(path, is_training=True)
    assert (examples[0].start_position, examples[0].end_position) == (-1, 0)
    f = convert_examples_to_features(examples, tok, MAX_SEQ, STRIDE, MAX_QUERY, is_training=True)
    q = len(tok.tokenize("where?"))
    assert (int(f.start_position[0]), int(f.end_position[0])) == (q + 2, q + 2)  # before the fix: start after end
