"""SQuAD json files: loading with checks that name the broken JSON path, Google's example reader, and the model's
input windows ("features") built from the examples.

Reference: google-research/bert `run_squad.py` @ eedf5716 (`SquadExample`, `read_squad_examples`,
`tokenization.whitespace_tokenize`, `convert_examples_to_features`, `_improve_answer_span`, `_check_is_max_context`).
Examples come out as Google's do, in file order, with the same word positions and the same training questions
skipped; windows come out array for array as Google's features (tests/test_squad_data.py compares them with the
golden files run_squad.py wrote). Google tokenizes every word of every question's paragraph in Python; here a
paragraph is tokenized once, in one call to the Rust tokenizer, and each window is filled with numpy slices, so
all of train-v1.1 (87,599 questions) takes seconds on one core (benchmarks/bench_squad.py).

The file format (SQuAD v1.1 and v2.0):
    {"version": "1.1", "data": [{"title", "paragraphs": [{"context", "qas": [
        {"id", "question", "answers": [{"text", "answer_start"}], "is_impossible" (v2.0 only)}]}]}]}
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bertkit.data.tokenizer import WordPieceTokenizer
from bertkit.runtime.atomic import atomic_output

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
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not a SQuAD json: not UTF-8 text (byte {e.start}: {e.reason})") from None
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


# --- features: Google's convert_examples_to_features ----------------------------------------------------------

# Arrays of a SquadFeatures, in the order of Google's InputFeatures; (F,) per window or (F, T) per position.
FEATURE_FIELDS = (
    "qas_id", "unique_id", "example_index", "doc_span_index", "input_ids", "input_mask", "segment_ids",
    "token_to_orig_map", "token_is_max_context", "start_position", "end_position", "is_impossible",
)  # fmt: skip
FIRST_UNIQUE_ID = 1000000000  # Google numbers windows from here; the seed's records and all_results.npy keep it


@dataclass
class SquadFeatures:
    """The windows ("features") of a list of examples as Google's `convert_examples_to_features` makes them, held as
    arrays: F windows of T = max_seq_length positions.

    Per window (F,): qas_id (str), unique_id (int64, from 1000000000), example_index and doc_span_index (int32),
    start_position and end_position (int32: the answer's first and last token in the window; 0, 0 when the window
    lacks the answer or the question has none; -1 when not built for training), is_impossible (bool).
    Per position (F, T): input_ids (int32), input_mask and segment_ids (int8), token_to_orig_map (int32: the
    example's word index of a context token, -1 elsewhere), token_is_max_context (int8: 1 where this window gives the
    token its most context, 0 where another window does, -1 outside the context).
    """

    qas_id: np.ndarray
    unique_id: np.ndarray
    example_index: np.ndarray
    doc_span_index: np.ndarray
    input_ids: np.ndarray
    input_mask: np.ndarray
    segment_ids: np.ndarray
    token_to_orig_map: np.ndarray
    token_is_max_context: np.ndarray
    start_position: np.ndarray
    end_position: np.ndarray
    is_impossible: np.ndarray

    def __len__(self) -> int:
        return len(self.unique_id)

    def arrays(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name) for name in FEATURE_FIELDS}

    def save(self, path: str | Path) -> None:
        """An .npz of the arrays (no pickles), written under a temporary name and renamed."""
        with atomic_output(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, **self.arrays())

    @classmethod
    def load(cls, path: str | Path) -> SquadFeatures:
        with np.load(path, allow_pickle=False) as z:
            return cls(**{name: z[name] for name in FEATURE_FIELDS})


def squad_tokenizer(vocab_file: str | os.PathLike | None = None, do_lower_case: bool = True) -> WordPieceTokenizer:
    """The tokenizer run_squad.py uses: Google's FullTokenizer, whose WordPiece keeps words up to 200 characters."""
    return WordPieceTokenizer(vocab_file, do_lower_case, max_input_chars_per_word=200)


def _doc_pieces(doc_tokens: list[str], tokenizer: WordPieceTokenizer) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(WordPieces of the paragraph, their ids, tok_to_orig_index: the word each piece comes from).

    Google tokenizes word by word. The words hold none of the characters Google splits paragraphs at, and all of
    those are whitespace to the tokenizer too, so tokenizing the words joined by spaces gives the same pieces, in
    one call; each piece's character offset says which word it belongs to.
    """
    starts = np.cumsum([0] + [len(w) + 1 for w in doc_tokens[:-1]]) if doc_tokens else np.zeros(0, np.int64)
    pieces, offsets = tokenizer.tokenize_with_offsets(" ".join(doc_tokens))
    piece_starts = np.fromiter((a for a, _ in offsets), np.int64, len(offsets))
    tok_to_orig = np.searchsorted(starts, piece_starts, side="right") - 1
    return pieces, np.asarray(tokenizer.convert_tokens_to_ids(pieces), np.int32), tok_to_orig.astype(np.int32)


def improve_answer_span(
    pieces: list[str], start: int, end: int, tokenizer: WordPieceTokenizer, answer_text: str
) -> tuple[int, int]:
    """Google's `_improve_answer_span`: the first sub-span of pieces[start:end+1] whose pieces are exactly those of
    the answer text ("1895" inside the word "(1895-1943)."), else the span as given (the answer "Japan" inside the
    one-piece word "Japanese")."""
    answer = tokenizer.tokenize(answer_text)
    n = len(answer)
    # Google compares " ".join()ed strings for every sub-span; pieces hold no spaces, so only the sub-span of the
    # answer's length can match, and comparing lists is the same test.
    for new_start in range(start, end - n + 2 if n else start):
        if pieces[new_start : new_start + n] == answer:
            return new_start, new_start + n - 1
    return start, end


def doc_spans(num_pieces: int, max_tokens_for_doc: int, doc_stride: int) -> list[tuple[int, int]]:
    """Google's sliding windows over the paragraph's pieces: (start, length), each window moving by at most
    doc_stride, the last one ending at the paragraph's end. An empty paragraph has none."""
    spans, start = [], 0
    while start < num_pieces:
        length = min(num_pieces - start, max_tokens_for_doc)
        spans.append((start, length))
        if start + length == num_pieces:
            break
        start += min(length, doc_stride)
    return spans


def max_context(spans: list[tuple[int, int]], num_pieces: int) -> np.ndarray:
    """(S, num_pieces) bool: True where span s is the piece's "max context" window (Google's _check_is_max_context).

    A piece's score in a window is min(left context, right context) + 0.01 * window length; the best window wins,
    the first one on ties (Google keeps the first strictly greater score). Float64 as in Python, so ties agree.
    """
    if len(spans) <= 1:
        return np.ones((len(spans), num_pieces), bool)
    starts = np.array([s for s, _ in spans])[:, None]
    lengths = np.array([n for _, n in spans])[:, None]
    p = np.arange(num_pieces)[None, :]
    inside = (p >= starts) & (p < starts + lengths)
    score = np.where(inside, np.minimum(p - starts, starts + lengths - 1 - p) + 0.01 * lengths, -np.inf)
    return np.arange(len(spans))[:, None] == score.argmax(0)[None, :]


def convert_examples_to_features(
    examples: list[SquadExample],
    tokenizer: WordPieceTokenizer,
    max_seq_length: int = 384,
    doc_stride: int = 128,
    max_query_length: int = 64,
    is_training: bool = False,
) -> SquadFeatures:
    """Google's `convert_examples_to_features`: [CLS] question [SEP] window of the paragraph [SEP], zero-padded.

    The question is cut to max_query_length pieces; the paragraph's pieces are covered by windows of
    max_seq_length - question - 3 pieces moving by doc_stride. For training, the answer's word span becomes a
    piece span (improved to the answer's exact pieces where it can be) and each window labels it, or points at
    position 0 ([CLS]) when it does not hold the whole answer, as it does for an impossible (v2.0) question.
    Pass `squad_tokenizer(...)` to get Google's pieces exactly (words up to 200 characters).
    """
    if max_seq_length <= max_query_length + 3:
        raise ValueError(f"--max_seq_length ({max_seq_length}) must be greater than --max_query_length + 3")
    if doc_stride <= 0:
        raise ValueError(f"--doc_stride must be positive, got {doc_stride}")
    T = max_seq_length
    out = _Windows(T, capacity=len(examples) * 9 // 8 + 64)  # SQuAD has about 1.01 windows per question
    paragraph = None  # the examples of a paragraph share one word list (read_squad_examples) and come together
    for example_index, example in enumerate(examples):
        if paragraph is None or paragraph[0] is not example.doc_tokens:
            pieces, ids, tok_to_orig = _doc_pieces(example.doc_tokens, tokenizer)
            orig_to_tok = np.searchsorted(tok_to_orig, np.arange(len(example.doc_tokens) + 1), side="left")
            paragraph = (example.doc_tokens, pieces, ids, tok_to_orig, orig_to_tok, {})
        _, pieces, ids, tok_to_orig, orig_to_tok, spans_by_room = paragraph
        query = tokenizer.convert_tokens_to_ids(tokenizer.tokenize(example.question_text)[:max_query_length])
        q = len(query)
        tok_start = tok_end = -1
        if is_training and not example.is_impossible:
            # Google indexes a list of one entry per word: a start in leading whitespace (word -1) is the last word
            # there, and then starts after the end; kept so, as run_squad.py trains on it (orig_to_tok has W + 1).
            tok_start = int(orig_to_tok[: len(example.doc_tokens)][example.start_position])
            tok_end = int(orig_to_tok[example.end_position + 1]) - 1  # the last word's last piece
            tok_start, tok_end = improve_answer_span(pieces, tok_start, tok_end, tokenizer, example.orig_answer_text)
        room = T - q - 3  # pieces of context a window holds; questions of one length share windows
        if room not in spans_by_room:
            spans = doc_spans(len(pieces), room, doc_stride)
            spans_by_room[room] = (spans, max_context(spans, len(pieces)))
        spans, is_max = spans_by_room[room]
        for span_index, (start, length) in enumerate(spans):
            i = out.add()
            end = start + length
            row = out.input_ids[i]
            row[0], row[1 : q + 1], row[q + 1] = tokenizer.cls_id, query, tokenizer.sep_id
            row[q + 2 : q + 2 + length], row[q + 2 + length] = ids[start:end], tokenizer.sep_id
            out.input_mask[i, : q + 3 + length] = 1
            out.segment_ids[i, q + 2 : q + 3 + length] = 1
            out.token_to_orig_map[i, q + 2 : q + 2 + length] = tok_to_orig[start:end]
            out.token_is_max_context[i, q + 2 : q + 2 + length] = is_max[span_index, start:end]
            s = e = -1
            if is_training:
                s = e = 0  # the answer is not (wholly) in this window, or there is none: point at [CLS]
                if not example.is_impossible and start <= tok_start and tok_end < end:
                    s, e = tok_start - start + q + 2, tok_end - start + q + 2
            out.per_window[i] = (example_index, span_index, s, e)
            out.is_impossible[i] = example.is_impossible
    return out.finish([e.qas_id for e in examples])


class _Windows:
    """Growing arrays for convert_examples_to_features: rows are filled in place, capacity doubles when full."""

    def __init__(self, T: int, capacity: int):
        self.n, self.T = 0, T
        self._alloc(capacity)

    def _alloc(self, capacity: int) -> None:
        """(Re)allocate every array to `capacity` rows, keeping the first n."""
        T, old = self.T, getattr(self, "input_ids", None)
        new = {
            "input_ids": np.zeros((capacity, T), np.int32),
            "input_mask": np.zeros((capacity, T), np.int8),
            "segment_ids": np.zeros((capacity, T), np.int8),
            "token_to_orig_map": np.full((capacity, T), -1, np.int32),
            "token_is_max_context": np.full((capacity, T), -1, np.int8),
            "per_window": np.zeros((capacity, 4), np.int32),  # example_index, doc_span_index, start, end
            "is_impossible": np.zeros(capacity, bool),
        }
        for name, a in new.items():
            if old is not None:
                a[: self.n] = getattr(self, name)[: self.n]
            setattr(self, name, a)

    def add(self) -> int:
        if self.n == len(self.input_ids):
            self._alloc(2 * self.n)
        self.n += 1
        return self.n - 1

    def finish(self, qas_ids: list[str]) -> SquadFeatures:
        if self.n < len(self.input_ids):  # let go of the unused rows
            self._alloc(self.n)
        n, w = self.n, self.per_window
        example_index = w[:, 0].copy()
        return SquadFeatures(
            qas_id=np.array(qas_ids, dtype=str)[example_index] if n else np.zeros(0, "U1"),
            unique_id=np.arange(FIRST_UNIQUE_ID, FIRST_UNIQUE_ID + n, dtype=np.int64),
            example_index=example_index,
            doc_span_index=w[:, 1].copy(),
            input_ids=self.input_ids,
            input_mask=self.input_mask,
            segment_ids=self.segment_ids,
            token_to_orig_map=self.token_to_orig_map,
            token_is_max_context=self.token_is_max_context,
            start_position=w[:, 2].copy(),
            end_position=w[:, 3].copy(),
            is_impossible=self.is_impossible,
        )
