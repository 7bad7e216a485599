"""SQuAD examples as Google's `read_squad_examples` makes them: crafted paragraphs, every real file, and the order
and word spans of Google's own features (golden/*-train.npz, written by run_squad.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from bertkit.squad_data import SquadExample, load_squad, read_squad_examples, split_paragraph


def write_squad(tmp_path: Path, context: str, qas: list[dict], name: str = "squad.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps({"version": "1.1", "data": [{"paragraphs": [{"context": context, "qas": qas}]}]}))
    return path


def question(qid: str, text: str | None, start: int = 0, **extra) -> dict:
    answers = [] if text is None else [{"text": text, "answer_start": start}]
    return {"id": qid, "question": f"what is {qid}?", "answers": answers, **extra}


def test_split_paragraph_uses_googles_whitespace():
    # U+202F splits words; U+00A0 does not (str.split would); leading spaces map to word -1.
    tokens, offsets = split_paragraph(" Hi  a\u202fb\u00a0c\n")
    assert tokens == ["Hi", "a", "b\u00a0c"]
    assert offsets == [-1, 0, 0, 0, 0, 1, 1, 2, 2, 2, 2]


def test_answer_spans_by_hand(tmp_path):
    context = "Notre Dame was founded (1842) by Father Sorin."
    path = write_squad(
        tmp_path,
        context,
        [
            question("whole", "Father Sorin", context.index("Father")),
            question("inside", "1842", context.index("1842")),  # inside the word "(1842)"
        ],
    )
    examples, skipped = read_squad_examples(path, is_training=True)
    assert skipped == 0
    words = context.split()
    assert [(e.start_position, e.end_position) for e in examples] == [(6, 7), (4, 4)]
    assert examples[0] == SquadExample("whole", "what is whole?", words, "Father Sorin", 6, 7, False)
    assert examples[1].doc_tokens is examples[0].doc_tokens  # one list per paragraph, as Google's


def test_prediction_mode_keeps_every_question_without_positions(tmp_path):
    path = write_squad(tmp_path, "a b", [question("q", "b", 2), question("n", None, is_impossible=True)])
    examples, skipped = read_squad_examples(path, is_training=False, version_2_with_negative=True)
    assert skipped == 0
    # Google reads is_impossible only for training; in prediction mode the model decides.
    assert [(e.orig_answer_text, e.start_position, e.end_position, e.is_impossible) for e in examples] == [
        (None, None, None, False)
    ] * 2


def test_v2_training_impossible_questions(tmp_path):
    path = write_squad(
        tmp_path, "a b", [question("q", "b", 2, is_impossible=False), question("n", None, is_impossible=True)]
    )
    examples, _ = read_squad_examples(path, is_training=True, version_2_with_negative=True)
    assert [(e.orig_answer_text, e.start_position, e.end_position, e.is_impossible) for e in examples] == [
        ("b", 1, 1, False),
        ("", -1, -1, True),
    ]
    with pytest.raises(ValueError, match=re.escape("data[0].paragraphs[0].qas[0].is_impossible is missing")):
        read_squad_examples(write_squad(tmp_path, "a b", [question("q", "b", 2)]), True, True)


def test_unrecoverable_answer_is_skipped_and_counted(tmp_path):
    # The answer holds U+00A0: Google's words keep it, but str.split() cleans it to a space, so "5 000" is not in
    # the word "5\u00a0000"; Google's reader skips such a question in training.
    context = "It costs 5\u00a0000 euros."
    path = write_squad(tmp_path, context, [question("nbsp", "5\u00a0000", 9), question("ok", "euros", 15)])
    with pytest.warns(UserWarning, match="skipped 1 training question.*: nbsp"):
        examples, skipped = read_squad_examples(path, is_training=True)
    assert skipped == 1 and [e.qas_id for e in examples] == ["ok"]
    examples, skipped = read_squad_examples(path, is_training=False)
    assert skipped == 0 and len(examples) == 2


@pytest.mark.parametrize(
    "qa, message",
    [
        (question("q", "b", 2) | {"answers": [{"text": "a", "answer_start": 0}] * 2}, "should hold exactly 1 answer"),
        (question("q", "b", 7), r"qas\[0\]\.answers\[0\] \(answer_start 7, 1 characters\) lies outside its context"),
        ({"id": "q", "question": "?", "answers": [{"text": "b"}]}, r"qas\[0\]\.answers\[0\]\.answer_start is missing"),
        (question("q", "b", "2"), r"answer_start should be an integer, got str"),
        ({"id": 7, "question": "?", "answers": []}, r"qas\[0\]\.id should be a string, got int"),
    ],
)
def test_bad_training_answers_name_file_and_json_path(tmp_path, qa, message):
    path = write_squad(tmp_path, "a b", [qa], name="bad.json")
    with pytest.raises(ValueError, match=r"bad\.json: .*" + message):
        read_squad_examples(path, is_training=True)


def test_not_json_and_not_squad(tmp_path):
    (tmp_path / "x.json").write_text("{")
    with pytest.raises(ValueError, match=r"x\.json: not valid JSON"):
        load_squad(tmp_path / "x.json")
    (tmp_path / "x.json").write_text("[]")
    with pytest.raises(ValueError, match=r"x\.json: the top level should be an object holding 'data'"):
        load_squad(tmp_path / "x.json")


def first_answer_copy(path: Path, tmp_path: Path) -> Path:
    """Dev files hold up to 5 answers per question; Google's training reader wants exactly one: keep the first."""
    dataset = json.loads(path.read_text())
    for article in dataset["data"]:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                qa["answers"] = qa["answers"][:1]
    out = tmp_path / path.name
    out.write_text(json.dumps(dataset))
    return out


# None of the 24,933 questions in these files defeats Google's reader; the full train-v1.1.json (not here) has a few.
REAL_FILES = {
    "dev-v1.1-Super_Bowl_50.json": 810,
    "dev-v1.1.json": 10570,
    "dev-v2.0-first5.json": 1407,
    "train-v1.1-University_of_Notre_Dame.json": 269,
    "train-v1.1-first44.json": 11877,
}


@pytest.mark.parametrize("name, num_questions", REAL_FILES.items())
def test_every_real_answer_span_maps_back_to_its_text(shared_data, tmp_path, name, num_questions):
    path = first_answer_copy(shared_data / "squad" / name, tmp_path)
    version_2 = "v2.0" in name
    examples, skipped = read_squad_examples(path, is_training=True, version_2_with_negative=version_2)
    assert (len(examples), skipped) == (num_questions, 0)
    gold = {qa["id"]: qa for a in json.loads(path.read_text())["data"] for p in a["paragraphs"] for qa in p["qas"]}
    for e in examples:
        if e.is_impossible:
            assert (e.start_position, e.end_position, e.orig_answer_text) == (-1, -1, "") and not gold[e.qas_id][
                "answers"
            ]
            continue
        assert e.orig_answer_text == gold[e.qas_id]["answers"][0]["text"]
        span = " ".join(e.doc_tokens[e.start_position : e.end_position + 1])
        assert " ".join(e.orig_answer_text.split()) in span, e.qas_id
        # The span is tight: the answer starts in its first word and ends in its last.
        pieces = e.orig_answer_text.split()
        assert pieces[0] in e.doc_tokens[e.start_position] and pieces[-1] in e.doc_tokens[e.end_position], e.qas_id
    if version_2:
        assert sum(e.is_impossible for e in examples) == 702


def test_examples_match_googles_features(shared_data):
    """Google's train features (run_squad.py on the Notre Dame article) list their examples' qas_ids in order, and
    map the answer's first and last sub-token back to words: those must be our start and end word positions."""
    golden = np.load(
        shared_data / "golden" / "google-squad-features-train-v1.1-University_of_Notre_Dame-uncased-train.npz"
    )
    assert golden["qas_id"].dtype.kind == "U"  # plain unicode strings: no pickle needed
    examples, skipped = read_squad_examples(shared_data / "squad" / "train-v1.1-University_of_Notre_Dame.json", True)
    example_index = golden["example_index"]
    first_feature = np.searchsorted(example_index, np.arange(example_index.max() + 1))
    assert skipped == 0 and [e.qas_id for e in examples] == golden["qas_id"][first_feature].tolist()
    in_window = 0
    for f, (start, end) in enumerate(zip(golden["start_position"], golden["end_position"], strict=True)):
        if start == 0:  # the answer lies outside this window: Google points at [CLS]
            continue
        e = examples[example_index[f]]
        to_word = golden["token_to_orig_map"][f]
        assert (to_word[start], to_word[end]) == (e.start_position, e.end_position), e.qas_id
        in_window += 1
    assert in_window == 270
