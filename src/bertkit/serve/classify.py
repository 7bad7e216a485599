"""Classify texts and text pairs with a model fine-tuned by `bertkit classify`: `TextClassifier`, the Python API
beside `QuestionAnswerer`, and what `bertkit serve` runs on `POST /predict` for a classifier.

    clf = TextClassifier.from_pretrained("classify_output/last_snapshot")
    clf("a gripping, funny film")                        # Prediction(label='1', score=0.97, scores={...})
    clf([{"text": "A man sleeps.", "text_pair": "A person rests."}, "second text"])   # one Prediction each

Inputs are taken as transformers' pipeline("text-classification") takes them: a string, a {"text", "text_pair"}
dict, or a list of either. The numbers are `bertkit classify --do_predict`'s: the same features (Google's
convert_single_example: [CLS] a [SEP] b [SEP], the pair cut longest first), the same length-sorted prediction loop
(`tasks/glue/predict.py`) and the same float32 softmax as test_results.tsv. The label names are the GLUE task's the
checkpoint names (a bertkit directory's labels.txt, a Hugging Face config's id2label), else the GLUE task's it was
fine-tuned on (its run_config.json), else LABEL_0, LABEL_1, ...; STS-B (regression) gives its score.
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bertkit.checkpoint import formats as checkpoint
from bertkit.checkpoint.snapshot import snapshot_extras
from bertkit.data.tokenizer import WordPieceTokenizer
from bertkit.data.vocab import choose_tokenizer
from bertkit.model.bert import BertForSequenceClassification
from bertkit.runtime import dist
from bertkit.runtime.precision import cast_linears
from bertkit.tasks.glue import data as glue
from bertkit.tasks.glue.predict import predict_logits, probabilities, quantize_classifier


@dataclass(frozen=True)
class Prediction:
    """One text's class: `label` (None for a regression model), `score` (its probability; the regression score),
    `scores` (every label's probability, in the model's label order; empty for regression)."""

    label: str | None
    score: float
    scores: dict[str, float]

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Prepared:
    """Texts turned into model features, waiting for their logits."""

    features: glue.Features

    @property
    def inputs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(input_ids, input_mask, segment_ids), each (N, T): the rows the server's batcher runs."""
        f = self.features
        return f.input_ids, f.input_mask, f.segment_ids


Pair = tuple[str, str | None]


def as_pairs(inputs, text_pair: str | None = None) -> tuple[list[Pair], bool]:
    """(the (text, text_pair) pairs, whether one input was given) of pipeline-style inputs; ValueError otherwise."""

    def one(x) -> Pair:
        if isinstance(x, str):
            return x, None
        if isinstance(x, dict) and isinstance(x.get("text"), str) and set(x) <= {"text", "text_pair"}:
            pair = x.get("text_pair")
            if pair is None or isinstance(pair, str):
                return x["text"], pair
        raise ValueError('each input must be a string or a {"text", "text_pair"?} object of strings')

    if isinstance(inputs, str):
        if text_pair is not None and not isinstance(text_pair, str):
            raise ValueError("text_pair must be a string")
        return [(inputs, text_pair)], True
    if text_pair is not None:
        raise ValueError("text_pair goes with one text; for many, pass {'text', 'text_pair'} objects")
    if isinstance(inputs, dict):
        return [one(inputs)], True
    if not isinstance(inputs, list | tuple):
        one(inputs)  # raises, naming what is expected
    return [one(x) for x in inputs], False


class TextClassifier:
    """A sequence classifier and its tokenizer; see the module docstring.

    `labels`: the label names in output order (() for regression). `max_seq_length`: tokens per example, the pair
    cut to fit (a snapshot's own, else 128). `batch_size`: examples run at once (sorted by length, each batch cut
    to its longest). `precision`: fp32, bf16 or fp16 autocast. `quantize`: "int8" for dynamic int8 Linear layers
    (CPU only), "none" (the default) is exact.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: WordPieceTokenizer,
        labels: tuple[str, ...],
        *,
        device: str | torch.device = "cpu",
        batch_size: int = 32,
        max_seq_length: int | None = None,
        precision: str = "fp32",
        quantize: str = "none",
    ):
        max_seq_length = 128 if max_seq_length is None else max_seq_length
        limit = model.bert.cfg.max_position_embeddings
        if not 3 <= max_seq_length <= limit:
            raise ValueError(f"max_seq_length must be in [3, {limit}] (the model's max_position_embeddings), "
                             f"got {max_seq_length}")  # fmt: skip
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        outputs = model.classifier.out_features
        if len(labels or ("",)) != outputs:
            raise ValueError(f"{len(labels)} label names for a model with {outputs} outputs")
        device = torch.device(device) if isinstance(device, str) else device
        # int8 first (it quantizes float32 Linear layers), then the rest stored in the autocast dtype
        model = model.to(device).eval()
        fast = quantize_classifier(model, quantize)  # a copy for int8
        self.model = cast_linears(fast, precision, copy=fast is model)
        self.quantize = quantize
        self.tokenizer, self.labels = tokenizer, tuple(labels)
        self.env = dist.DistEnv(device=device)
        self.batch_size, self.max_seq_length, self.precision = batch_size, max_seq_length, precision
        # convert_examples_to_features reads a task for its label type only (no labels are given here)
        self.task = glue.GlueTask("request", self.labels, (None, None, None), (None, None, None))

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
    ) -> TextClassifier:
        """Load a model fine-tuned by `bertkit classify` (any checkpoint format bertkit reads, with a classifier
        head), its vocabulary and casing (`data.vocab.choose_tokenizer`, as QuestionAnswerer), its label names and
        max_seq_length from its run_config.json. ValueError for a checkpoint without a classifier head."""
        path = Path(path)
        state, cfg, _, _ = checkpoint.load_state(path)
        head = state.get("classifier.weight")
        if head is None:
            raise ValueError(f"{path} has no classifier head (classifier.weight): fine-tune it with bertkit classify")
        run = (snapshot_extras(path)[2] if path.is_dir() else None) or {}
        labels = tuple(f"LABEL_{i}" for i in range(head.shape[0])) if head.shape[0] > 1 else ()  # 1: regression
        if isinstance(run.get("task_name"), str):
            try:
                labels = glue.get_task(run["task_name"]).labels
            except ValueError:
                warnings.warn(f"{path}: unknown task_name {run['task_name']!r}; labels are LABEL_i", stacklevel=2)
        named = checkpoint.own_labels(path, checkpoint.detect_format(path))  # labels.txt, or HF's id2label
        if named and len(named) == head.shape[0] and not all(re.fullmatch(r"LABEL_\d+", n) for n in named):
            labels = tuple(named)
        if not labels and head.shape[0] != 1 or labels and len(labels) != head.shape[0]:
            labels = tuple(f"LABEL_{i}" for i in range(head.shape[0]))
        model = BertForSequenceClassification(cfg, head.shape[0])
        model.load_state_dict({k: v for k, v in state.items() if k in model.state_dict()}, strict=True)
        choice = choose_tokenizer(vocab_file, do_lower_case, str(path), cfg.vocab_size, check_casing)  # the one policy
        if choice.note:
            warnings.warn(choice.note.removeprefix("warning: "), stacklevel=2)
        tokenizer = WordPieceTokenizer(choice.vocab_file, choice.do_lower_case)
        if kwargs.get("max_seq_length") is None and isinstance(run.get("max_seq_length"), int):
            kwargs["max_seq_length"] = run["max_seq_length"]
        return cls(model, tokenizer, labels, device=dist.pick_device(device, 0), **kwargs)

    def __call__(self, inputs, text_pair: str | None = None) -> Prediction | list[Prediction]:
        """Classify a text (with its `text_pair`), a {"text", "text_pair"} dict, or a list of either -> one
        Prediction, or one per input in order. ValueError for another input."""
        pairs, single = as_pairs(inputs, text_pair)
        prepared = self.prepare(pairs)
        found = self.finish(prepared, self.logits(*prepared.inputs))
        return found[0] if single else found

    def prepare(self, pairs: list[Pair]) -> Prepared:
        """The features of (text, text_pair) pairs: Google's [CLS] a [SEP] b [SEP], cut to max_seq_length."""
        examples = [glue.InputExample(str(i), a, b, None, f"input {i}") for i, (a, b) in enumerate(pairs)]
        return Prepared(glue.convert_examples_to_features(examples, self.task, self.max_seq_length, self.tokenizer))

    def logits(self, input_ids: np.ndarray, input_mask: np.ndarray, segment_ids: np.ndarray) -> tuple[np.ndarray]:
        """(logits (N, C) float32,) of N examples (N, T): `bertkit classify`'s prediction loop."""
        labels = np.zeros(len(input_ids), np.int32)
        feats = glue.Features(input_ids, input_mask, segment_ids, labels)
        return (predict_logits(self.model, feats, self.batch_size, self.env, self.precision),)

    def finish(self, prepared: Prepared, logits: tuple[np.ndarray, ...]) -> list[Prediction]:
        """Predictions from logits (N, C): test_results.tsv's float32 softmax, the best label first."""
        (z,) = logits
        if not self.labels:
            return [Prediction(None, float(s), {}) for s in z[:, 0]]
        probs = probabilities(z)
        return [Prediction(self.labels[int(p.argmax())], float(p.max()), dict(zip(self.labels, map(float, p), strict=True)))
                for p in probs]  # fmt: skip


def is_classifier(path: str | os.PathLike) -> bool:
    """Whether a checkpoint is a classifier: a `bertkit classify` snapshot (task_name in its run_config.json), else
    one whose weights hold classifier.weight (a SQuAD snapshot's run_config has doc_stride instead)."""
    path = Path(path)
    run = (snapshot_extras(path)[2] if path.is_dir() else None) or {}
    if "task_name" in run or "doc_stride" in run:
        return "task_name" in run
    try:
        return "classifier.weight" in checkpoint.load_state(path)[0]
    except ValueError:  # a checkpoint without its config: QuestionAnswerer's loading says what is missing
        return False
