"""SQuAD json files: loading with checks that name the broken JSON path, and Google's example reader.

Reference: google-research/bert `run_squad.py` @ eedf5716 (`SquadExample`, `read_squad_examples`,
`tokenization.whitespace_tokenize`). Examples come out as Google's do, in file order, with the same word positions
and the same training questions skipped, so features built from them can be compared with Google's one to one.

The file format (SQuAD v1.1 and v2.0):
    {"version": "1.1", "data": [{"title", "paragraphs": [{"context", "qas": [
        {"id", "question", "answers": [{"text", "answer_start"}], "is_impossible" (v2.0 only)}]}]}]}
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

JSON_TYPE_NAMES = {dict: "an object", list: "an array", str: "a string", int: "an integer", bool: "true or false"}


def _field(obj: Any, key: str, kind: type, where: str, path: str | Path) -> Any:
    """obj[key], checked to exist and be of `kind`; the error names the file and the JSON path `where.key`."""
    at = f"{where}.{key}" if where else key
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: {where or 'the top level'} should be {JSON_TYPE_NAMES[dict]} holding '{key}'")
    if key not in obj:
        raise ValueError(f"{path}: {at} is missing (is this a SQuAD v1.1/v2.0 json file?)")
    value = obj[key]
    # bool is an int in Python, but `"answer_start": true` is not an offset.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ValueError(f"{path}: {at} should be {JSON_TYPE_NAMES[kind]}, got {type(value).__name__} {value!r:.60}")
    return value


def check_squad(dataset: Any, path: str | Path) -> None:
    """Raise ValueError naming `path` and the JSON path (`data[3].paragraphs[2].qas[0].answers`) of the first
    missing or mistyped field that the readers and the evaluator rely on; return quietly otherwise."""
    for i, article in enumerate(_field(dataset, "data", list, "", path)):
        for j, paragraph in enumerate(_field(article, "paragraphs", list, f"data[{i}]", path)):
            where = f"data[{i}].paragraphs[{j}]"
            _field(paragraph, "context", str, where, path)
            for k, qa in enumerate(_field(paragraph, "qas", list, where, path)):
                q_where = f"{where}.qas[{k}]"
                _field(qa, "id", str, q_where, path)
                _field(qa, "question", str, q_where, path)
                if isinstance(qa, dict) and "is_impossible" in qa:
                    _field(qa, "is_impossible", bool, q_where, path)
                for m, answer in enumerate(_field(qa, "answers", list, q_where, path)):
                    _field(answer, "text", str, f"{q_where}.answers[{m}]", path)


def load_squad(path: str | Path) -> dict:
    """The whole json object of a SQuAD file (`version`, `data`), checked by `check_squad`."""
    try:
        with open(path, encoding="utf-8") as f:
            dataset = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    check_squad(dataset, path)
    return dataset


def is_squad_v2(dataset: dict) -> bool:
    """True for SQuAD 2.0 data: its version says 2 (Google's dev file says "v2.0") or a question has is_impossible."""
    if str(dataset.get("version", "")).lstrip("vV").startswith("2"):
        return True
    return any("is_impossible" in qa for article in dataset["data"] for p in article["paragraphs"] for qa in p["qas"])


@dataclass
class SquadExample:
    """One question over its whitespace-split paragraph, as Google's `SquadExample`.

    `start_position`/`end_position` are inclusive indices into `doc_tokens`; they and `orig_answer_text` are None
    when reading for prediction, and -1, -1, "" for an impossible question read for training.
    """

    qas_id: str
    question_text: str
    doc_tokens: list[str]
    orig_answer_text: str | None = None
    start_position: int | None = None
    end_position: int | None = None
    is_impossible: bool = False


def is_whitespace(c: str) -> bool:
    # Google's set, not str.isspace: U+202F (narrow no-break space) splits words, but U+00A0 and U+2009 do not,
    # so a word may contain them. That is what makes some answers unrecoverable below.
    return c in " \t\r\n" or ord(c) == 0x202F


def split_paragraph(context: str) -> tuple[list[str], list[int]]:
    """(doc_tokens, char_to_word_offset): the words of `context` and, for each character, the index of the word
    it belongs to (a whitespace character maps to the word before it; leading whitespace maps to -1)."""
    doc_tokens: list[str] = []
    char_to_word_offset: list[int] = []
    prev_is_whitespace = True
    for c in context:
        if is_whitespace(c):
            prev_is_whitespace = True
        else:
            if prev_is_whitespace:
                doc_tokens.append(c)
            else:
                doc_tokens[-1] += c
            prev_is_whitespace = False
        char_to_word_offset.append(len(doc_tokens) - 1)
    return doc_tokens, char_to_word_offset


def read_squad_examples(
    path: str | Path, is_training: bool, version_2_with_negative: bool = False
) -> tuple[list[SquadExample], int]:
    """All questions of a SQuAD file as `SquadExample`s, in file order, and how many were skipped.

    For training, a question's answer span is located from `answer_start` and the answer's length; a question whose
    cleaned answer text is not inside the words of that span is skipped, as Google's reader does (it happens where
    the text holds spaces Google does not split on, e.g. U+00A0). Skips happen only when `is_training`.
    With `version_2_with_negative`, training questions must carry `is_impossible`.
    """
    dataset = load_squad(path)
    examples: list[SquadExample] = []
    skipped: list[str] = []
    for i, article in enumerate(dataset["data"]):
        for j, paragraph in enumerate(article["paragraphs"]):
            # Every question of a paragraph shares this one list, as in Google's reader (a 4x memory saving on train).
            doc_tokens, char_to_word_offset = split_paragraph(paragraph["context"])
            for k, qa in enumerate(paragraph["qas"]):
                where = f"data[{i}].paragraphs[{j}].qas[{k}]"
                example = SquadExample(qa["id"], qa["question"], doc_tokens)
                if is_training:
                    if version_2_with_negative:
                        example.is_impossible = _field(qa, "is_impossible", bool, where, path)
                    if example.is_impossible:
                        example.start_position, example.end_position, example.orig_answer_text = -1, -1, ""
                    elif not _locate_answer(example, qa, char_to_word_offset, where, path):
                        skipped.append(qa["id"])
                        continue
                examples.append(example)
    if skipped:
        warnings.warn(
            f"{path}: skipped {len(skipped)} training question(s) whose answer text is not found in the words of "
            f"its span (Google's reader skips them too): {', '.join(skipped[:5])}{' ...' if len(skipped) > 5 else ''}",
            stacklevel=2,
        )
    return examples, len(skipped)


def _locate_answer(
    example: SquadExample, qa: dict, char_to_word_offset: list[int], where: str, path: str | Path
) -> bool:
    """Set the example's answer text and word span from its one answer; False when the text cannot be recovered."""
    answers = qa["answers"]
    if len(answers) != 1:
        raise ValueError(f"{path}: {where}.answers should hold exactly 1 answer for training, got {len(answers)}")
    text = answers[0]["text"]
    start = _field(answers[0], "answer_start", int, f"{where}.answers[0]", path)
    end = start + len(text) - 1  # the answer's last character
    if not text or start < 0 or end >= len(char_to_word_offset):
        raise ValueError(
            f"{path}: {where}.answers[0] (answer_start {start}, {len(text)} characters) lies outside its context"
        )
    example.orig_answer_text = text
    example.start_position = char_to_word_offset[start]
    example.end_position = char_to_word_offset[end]
    actual_text = " ".join(example.doc_tokens[example.start_position : example.end_position + 1])
    # Google's `whitespace_tokenize` is str.split(), which, unlike `is_whitespace`, splits on every Unicode space.
    cleaned_answer_text = " ".join(text.split())
    return cleaned_answer_text in actual_text
