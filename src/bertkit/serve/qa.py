"""Answer questions about a text with a fine-tuned SQuAD model: `QuestionAnswerer`, the Python API behind
`bertkit ask` and `bertkit serve`.

    qa = QuestionAnswerer.from_pretrained("squad_out/last_snapshot")
    qa("Who won Super Bowl 50?", context)       # [Answer(text='Denver Broncos', score=0.93, start=177, end=191)]
    qa([(q1, c1), (q2, c2)], top_k=3)            # one list of answers per pair, windows batched together

It is SQuAD prediction, not a copy of it: a (question, context) pair becomes a SquadExample, its windows come
from `squad_data.convert_examples_to_features`, the logits from `squad_predict.predict_logits` and the answer from
`squad_predict.answer_example` (Google's write_predictions for one question), so the answer is the one
`bertkit squad-predict` writes for the same question and flags (tests/test_qa.py). A long context is covered by
windows of max_seq_length tokens moving by doc_stride, and the best span over all windows wins by Google's rule
(start + end logit, each token judged in its max-context window).

What is added is what a caller needs beyond predictions.json:
- `score`: Hugging Face's pipeline("question-answering") definition, so that users can compare the two: in the
  answer's window, P(start) x P(end), each a softmax over [CLS] and the context tokens of that window. It ranks
  spans within a window as start + end logit does, but is not comparable across windows (each has its own
  softmax); the ranking across windows is Google's. For the SQuAD 2.0 null answer it is P([CLS]) x P([CLS]).
- `start`/`end`: character offsets of the answer in the original context, end exclusive. `text` is
  squad-predict's answer, whose words Google joins by single spaces: context[start:end] is the same span with the
  context's own whitespace, identical unless the span crosses a run of whitespace or a line break.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bertkit.checkpoint import formats as checkpoint
from bertkit.checkpoint.snapshot import snapshot_extras
from bertkit.data.tokenizer import WordPieceTokenizer
from bertkit.data.vocab import choose_tokenizer
from bertkit.model.bert import BertForQuestionAnswering
from bertkit.runtime import dist
from bertkit.runtime.precision import cast_linears
from bertkit.runtime.precision import quantize as quantize_model
from bertkit.tasks.squad.data import (
    SquadExample,
    SquadFeatures,
    convert_examples_to_features,
    split_paragraph,
    squad_tokenizer,
)
from bertkit.tasks.squad.predict import RawResults, answer_example, predict_logits, span_text


@dataclass(frozen=True)
class Answer:
    """One answer: the text (squad-predict's), its score (P(start) x P(end) in its window, as Hugging Face's
    pipeline), and its character span [start, end) in the context; "" with start = end = 0 for SQuAD 2.0's
    "no answer"."""

    text: str
    score: float
    start: int
    end: int

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Prepared:
    """Queries cut into windows, waiting for their logits: `features` holds the windows (N, T) in query order."""

    queries: list[Query]
    examples: list[SquadExample]
    features: SquadFeatures
    paragraphs: dict[str, tuple[list[str], np.ndarray]]

    @property
    def inputs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The windows' (input_ids, input_mask, segment_ids), each (N, T): the rows the server's batcher runs."""
        f = self.features
        return f.input_ids, f.input_mask, f.segment_ids


@dataclass
class Query:
    """One question about one context, with its own answer settings (the server batches queries of many
    requests together)."""

    question: str
    context: str
    top_k: int = 1
    max_answer_length: int = 30


class QuestionAnswerer:
    """A SQuAD model and its tokenizer, answering (question, context) pairs; see the module docstring.

    `batch_size` windows run through the model at once (sorted by length, each batch cut to its longest window).
    `max_seq_length`, `doc_stride`: the windows, as SQuAD prediction's flags (default: 384 at most the model's
    max_position_embeddings, and 128 at most half the window; `from_pretrained` takes a bertkit snapshot's own, the
    windows it was fine-tuned on). `max_query_length`: questions are cut to this many WordPieces (64, as
    run_squad.py; a snapshot's own). `n_best_size`: Google's
    candidates, the n best starts x the n best ends of each window (20, as squad-predict), also the bound of top_k;
    with n_best_size >= max_seq_length every span is tried, as Hugging Face's pipeline does (with 20, a span whose
    start or end is not among the 20 best of its window is never chosen; a trained model's rarely is).
    `version_2_with_negative`: SQuAD 2.0 models may answer "no answer" ("") when the null score beats the best span
    by more than `null_score_diff_threshold` (Google's rule). `precision`: fp32, bf16 or fp16 autocast.
    `quantize`: "int8" runs the Linear layers in dynamic int8 (CPU only, `runtime.precision.quantize`); "none"
    (the default) is exact.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: WordPieceTokenizer,
        *,
        device: str | torch.device = "cpu",
        batch_size: int = 32,
        max_query_length: int | None = None,
        max_seq_length: int | None = None,
        doc_stride: int | None = None,
        n_best_size: int = 20,
        version_2_with_negative: bool = False,
        null_score_diff_threshold: float = 0.0,
        precision: str = "fp32",
        quantize: str = "none",
    ):
        max_query_length = 64 if max_query_length is None else max_query_length
        for name, value in (("batch_size", batch_size), ("max_query_length", max_query_length),
                            ("n_best_size", n_best_size)):  # fmt: skip
            if value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        if precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"precision must be fp32, bf16 or fp16, got {precision!r}")
        device = torch.device(device) if isinstance(device, str) else device
        # int8 first (it quantizes float32 Linear layers), then the rest stored in the autocast dtype
        model = model.to(device).eval()
        fast = quantize_model(model, quantize)  # a copy for int8
        self.model = cast_linears(fast, precision, copy=fast is model)
        self.quantize = quantize
        self.tokenizer = tokenizer
        self.tokenization = ""  # the vocabulary and casing decision, one line (set by from_pretrained)
        self.env = dist.DistEnv(device=device)
        self.batch_size, self.max_query_length, self.n_best_size = batch_size, max_query_length, n_best_size
        self.version_2_with_negative = version_2_with_negative
        self.null_score_diff_threshold = null_score_diff_threshold
        self.precision = precision
        self.max_seq_length = min(384, self.max_seq_length_limit) if max_seq_length is None else max_seq_length
        self.doc_stride = min(128, self.max_seq_length // 2) if doc_stride is None else doc_stride

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        *,
        vocab_file: str | os.PathLike | None = None,
        do_lower_case: bool | None = None,
        device: str = "auto",
        check_casing: bool = True,
        **kwargs,
    ) -> QuestionAnswerer:
        """Load a fine-tuned model from any checkpoint bertkit reads (bertkit, Hugging Face, Google TF, OneFlow
        with its bert_config.json) with the checkpoint's vocab.txt and casing.

        `vocab_file` (default: the checkpoint's vocab.txt, else bert-base-uncased's) and `do_lower_case` (default:
        the checkpoint's tokenizer_config.json, else its vocabulary's capitals, else its name) are chosen and
        checked as squad-predict does (`data.vocab.choose_tokenizer`; `check_casing` False: --check_casing False).
        `device`: auto, cpu or cuda. Other
        keyword arguments go to the constructor; max_seq_length, doc_stride and max_query_length not given are a
        bertkit snapshot's own (its run_config.json: the windows it was fine-tuned on). Warns when the checkpoint
        has no QA head (a pretraining checkpoint: its answers would be random).
        """
        path = Path(path)
        fmt = checkpoint.detect_format(path)
        cfg = checkpoint.own_config(path, fmt)
        if cfg is None:
            raise ValueError(f"{path}: this {fmt} checkpoint has no {checkpoint.CONFIG} beside it; put one there")
        model = BertForQuestionAnswering(cfg)
        report = checkpoint.load_into(model, path)
        if any(name.startswith("qa.") for name in report.new):
            warnings.warn(
                f"{path} has no QA head (qa.weight, qa.bias): its answers come from random weights. Fine-tune it "
                "first (bertkit squad --do_train ...)",
                stacklevel=2,
            )
        # the one vocabulary and casing policy (data/vocab.py), as squad-predict applies it
        choice = choose_tokenizer(vocab_file, do_lower_case, str(path), cfg.vocab_size, check_casing)
        if choice.note:
            warnings.warn(choice.note.removeprefix("warning: "), stacklevel=2)
        tokenizer = squad_tokenizer(choice.vocab_file, choice.do_lower_case)
        run = snapshot_extras(path)[2] if path.is_dir() else None
        for name in ("max_seq_length", "doc_stride", "max_query_length"):  # the windows it was fine-tuned on
            if kwargs.get(name) is None and isinstance((run or {}).get(name), int):
                kwargs[name] = run[name]
        if len(tokenizer.vocab) > cfg.vocab_size:
            raise ValueError(
                f"{tokenizer.vocab_file} has {len(tokenizer.vocab)} entries, the model {cfg.vocab_size}: give the "
                "model's vocab.txt (vocab_file / --vocab_file)"
            )
        qa = cls(model, tokenizer, device=dist.pick_device(device, 0), **kwargs)
        qa.tokenization = choice.line()  # the decision, for `ask` and `serve` to log
        return qa

    @property
    def max_seq_length_limit(self) -> int:
        """The longest window the model takes (its max_position_embeddings)."""
        return self.model.bert.cfg.max_position_embeddings if hasattr(self.model, "bert") else 512

    def __call__(
        self,
        question: str | Sequence[tuple[str, str]],
        context: str | None = None,
        *,
        top_k: int = 1,
        max_answer_length: int = 30,
        doc_stride: int | None = None,
        max_seq_length: int | None = None,
    ) -> list[Answer] | list[list[Answer]]:
        """Answer one question about `context` -> its answers, best first (at most top_k; none when the context
        has no words or no valid span); or, given a list of (question, context) pairs and no context, answer
        them together (their windows batched) -> one such list per pair, in order.

        `max_answer_length`: the longest answer in WordPieces. `doc_stride`, `max_seq_length`: the windows, as
        SQuAD prediction's flags (default: this answerer's). Raises ValueError naming the argument for a value out
        of range.
        """
        if isinstance(question, str):
            if not isinstance(context, str):
                raise ValueError("context must be a string when question is one (or pass a list of pairs)")
            pairs, single = [(question, context)], True
        else:
            if context is not None:
                raise ValueError("pass either question and context, or a list of (question, context) pairs")
            pairs, single = list(question), False
        queries = [Query(q, c, top_k, max_answer_length) for q, c in pairs]
        answers = self.answer(queries, doc_stride=doc_stride, max_seq_length=max_seq_length)
        return answers[0] if single else answers

    def check(self, query: Query, where: str = "") -> None:
        """ValueError naming the field (prefixed by `where`) of a query the model cannot answer as asked."""
        if not isinstance(query.question, str) or not isinstance(query.context, str):
            raise ValueError(f"{where}question and {where}context must be strings")
        if not 1 <= query.top_k <= self.n_best_size:
            raise ValueError(f"{where}top_k must be in [1, {self.n_best_size}] (n_best_size), got {query.top_k}")
        if query.max_answer_length < 1:
            raise ValueError(f"{where}max_answer_length must be positive, got {query.max_answer_length}")

    def check_windows(self, doc_stride: int, max_seq_length: int) -> None:
        if doc_stride <= 0:
            raise ValueError(f"doc_stride must be positive, got {doc_stride}")
        if not self.max_query_length + 3 < max_seq_length <= self.max_seq_length_limit:
            raise ValueError(
                f"max_seq_length must be in ({self.max_query_length + 3}, {self.max_seq_length_limit}] (above "
                f"max_query_length + 3, at most the model's max_position_embeddings), got {max_seq_length}"
            )

    def answer(
        self, queries: list[Query], doc_stride: int | None = None, max_seq_length: int | None = None
    ) -> list[list[Answer]]:
        """Answers to each query, best first (at most its top_k), all windows run through the model together;
        windows of max_seq_length tokens every doc_stride (default: this answerer's)."""
        prepared = self.prepare(queries, doc_stride, max_seq_length)
        f = prepared.features
        return self.finish(prepared, self.logits(f.input_ids, f.input_mask, f.segment_ids))

    def prepare(
        self, queries: list[Query], doc_stride: int | None = None, max_seq_length: int | None = None
    ) -> Prepared:
        """The queries checked (ValueError naming the field) and cut into windows: `answer`'s first step, and what
        the server's batcher schedules (its rows are the windows)."""
        doc_stride = self.doc_stride if doc_stride is None else doc_stride
        max_seq_length = self.max_seq_length if max_seq_length is None else max_seq_length
        self.check_windows(doc_stride, max_seq_length)
        for i, query in enumerate(queries):
            self.check(query, f"[{i}]." if len(queries) > 1 else "")
        # Queries about the same context share its word list, so the paragraph is tokenized once.
        paragraphs: dict[str, tuple[list[str], np.ndarray]] = {}
        examples = []
        for i, query in enumerate(queries):
            if query.context not in paragraphs:
                words, char_to_word = split_paragraph(query.context)
                # A word starts at the first character mapped to it (whitespace maps to the word before).
                paragraphs[query.context] = words, np.searchsorted(char_to_word, np.arange(len(words)))
            examples.append(SquadExample(str(i), query.question, paragraphs[query.context][0]))
        features = convert_examples_to_features(
            examples, self.tokenizer, max_seq_length, doc_stride, self.max_query_length, is_training=False
        )
        return Prepared(queries, examples, features, paragraphs)

    def logits(self, input_ids: np.ndarray, input_mask: np.ndarray, segment_ids: np.ndarray) -> tuple[np.ndarray, ...]:
        """(start, end) logits (N, T) float32 of N windows (N, T), -inf at padding: SQuAD prediction's loop."""
        return predict_logits(self.model, input_ids, input_mask, segment_ids, self.batch_size, self.env, self.precision)

    def finish(self, prepared: Prepared, logits: tuple[np.ndarray, ...]) -> list[list[Answer]]:
        """The answers of prepared queries from their windows' (start, end) logits (N, T): Google's rule per query."""
        start, end = logits
        queries, examples, features = prepared.queries, prepared.examples, prepared.features
        results, rows = RawResults(features.unique_id, start, end), np.arange(len(features))
        bounds = np.searchsorted(features.example_index, np.arange(len(examples) + 1))
        out = []
        for i, (query, example) in enumerate(zip(queries, examples, strict=True)):
            windows = range(bounds[i], bounds[i + 1])
            if not windows:  # a context without words
                out.append([])
                continue
            nbest, prediction, _ = answer_example(
                example, features, results, rows, windows, self.tokenizer, self.n_best_size,
                query.max_answer_length, self.version_2_with_negative, self.null_score_diff_threshold,
                keep=query.top_k + 1,
            )  # fmt: skip
            # Google's "empty" placeholder is no answer; the null answer comes first when it wins, else not at all.
            chosen = [c for c in nbest if c.window >= 0 and c.text != ""]
            if prediction == "":
                chosen = [c for c in nbest if c.text == ""][:1] + chosen
            word_starts = prepared.paragraphs[query.context][1]
            answers = []
            for c in chosen[: query.top_k]:
                p_start, p_end = (_window_probs(logits[c.window], features.token_to_orig_map[c.window])
                                  for logits in (start, end))  # fmt: skip
                score = float(p_start[c.start] * p_end[c.end])
                if c.text == "":
                    answers.append(Answer("", score, 0, 0))
                    continue
                text, word, offset = span_text(example, features, c.window, c.start, c.end, self.tokenizer)
                char_start = _context_offset(example.doc_tokens, word_starts, word, offset)
                char_end = _context_offset(example.doc_tokens, word_starts, word, offset + len(text) - 1) + 1
                answers.append(Answer(text, score, char_start, char_end))
            out.append(answers[: query.top_k])
        return out


def _window_probs(logits: np.ndarray, token_to_orig: np.ndarray) -> np.ndarray:
    """(T,) float64 softmax of one window's start or end logits over [CLS] and its context tokens (0 elsewhere):
    Hugging Face's pipeline masks the question, [SEP] and padding the same way."""
    allowed = token_to_orig >= 0
    allowed[0] = True
    x = np.where(allowed, logits.astype(np.float64), -np.inf)
    p = np.exp(x - x.max())
    return p / p.sum()


def _context_offset(words: list[str], word_starts: np.ndarray, word: int, position: int) -> int:
    """The context's character index of `position` in the words from `word` on joined by single spaces (a
    position inside a word, not a joining space)."""
    while position > len(words[word]):  # past this word and the space after it
        position -= len(words[word]) + 1
        word += 1
    return int(word_starts[word]) + position
