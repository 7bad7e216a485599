"""GLUE data: the tasks (files, columns, labels), their tsv files and Google's featurization. The metrics and
submission files are `results`', the record files `records`', a checkpoint's label order `labels`'.

References: google-research/bert `run_classifier.py` @ eedf5716 (DataProcessor and its Xnli, Mnli, Mrpc and Cola
processors; convert_single_example and _truncate_seq_pair; the features input_ids, input_mask, segment_ids,
label_ids, is_real_example); Hugging Face transformers' `data/processors/glue.py` (the columns of SST-2, STS-B, QQP,
QNLI, RTE, WNLI and MNLI-mismatched).

File quirks handled here: tsv files are split on tabs with no quote character (sentences hold unbalanced `"`);
MRPC's header opens with a UTF-8 BOM; CoLA's train and dev files have no header (and its dev.tsv no final newline).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bertkit.data.tokenizer import WordPieceTokenizer

# --- the tasks -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Columns:
    """Where one kind of file keeps its texts and label (0-based column indices; -1 is the last)."""

    text_a: int
    text_b: int | None = None
    label: int | None = None  # None: a test file, no labels
    width: int | None = None  # a file without a header: the number of columns every row has
    keep: tuple[int, str] | None = None  # XNLI's dev file: only rows whose column holds this (the language)


@dataclass(frozen=True)
class GlueTask:
    """One GLUE task: its files in --data_dir, their columns, its labels and the metrics it is reported with."""

    name: str  # GLUE's spelling; also the submission file's name (RTE.tsv)
    labels: tuple[str, ...]  # the label strings in id order; () for a regression task (STS-B)
    files: tuple[str | None, str | None, str | None]  # train, dev, test (None: GLUE has none)
    columns: tuple[Columns | None, Columns | None, Columns | None]  # of the train, dev and test files
    metrics: tuple[str, ...] = ("accuracy",)
    label_aliases: tuple[tuple[str, str], ...] = ()  # XNLI's train file says "contradictory"

    def missing(self, split: str) -> str:
        """Why `split` cannot be read: the line for a task without that file."""
        if self.name == "AX":
            return (f"AX has no {split} file: GLUE's diagnostic set is test only; predict it with a model fine-tuned "
                    "on MNLI (--task_name ax --do_predict --init_checkpoint MNLI_MODEL)")  # fmt: skip
        return f"{self.name} has no {split} file bertkit reads"

    @property
    def is_regression(self) -> bool:
        return not self.labels

    @property
    def num_labels(self) -> int:
        """Outputs of the classification head: one score for regression."""
        return len(self.labels) or 1

    def file(self, split: str) -> str | None:
        return self.files[SPLITS.index(split)]


SPLITS = ("train", "dev", "test")
_BINARY, _NLI, _ENTAIL = ("0", "1"), ("contradiction", "entailment", "neutral"), ("entailment", "not_entailment")
_TSV = ("train.tsv", "dev.tsv", "test.tsv")
_PAIR_LAST = Columns(1, 2, -1)  # index, sentence1, sentence2, label (QNLI: index, question, sentence, label)

# Keys are lowercase without '-' or '_' (so Google's `cola`, Hugging Face's `sst-2` and `sst2` all work).
TASKS: dict[str, GlueTask] = {
    "cola": GlueTask(
        "CoLA",
        _BINARY,
        _TSV,
        (Columns(3, None, 1, width=4), Columns(3, None, 1, width=4), Columns(1)),
        metrics=("matthews_corrcoef", "accuracy"),
    ),  # fmt: skip
    "sst2": GlueTask("SST-2", _BINARY, _TSV, (Columns(0, None, 1), Columns(0, None, 1), Columns(1))),
    "mrpc": GlueTask(
        "MRPC", _BINARY, _TSV, (Columns(3, 4, 0), Columns(3, 4, 0), Columns(3, 4)), metrics=("accuracy", "f1")
    ),  # fmt: skip
    "stsb": GlueTask(
        "STS-B", (), _TSV, (Columns(7, 8, -1), Columns(7, 8, -1), Columns(7, 8)), metrics=("pearson", "spearman")
    ),  # fmt: skip
    "qqp": GlueTask(
        "QQP", _BINARY, _TSV, (Columns(3, 4, 5), Columns(3, 4, 5), Columns(1, 2)), metrics=("accuracy", "f1")
    ),  # fmt: skip
    "mnli": GlueTask(
        "MNLI-m",
        _NLI,
        ("train.tsv", "dev_matched.tsv", "test_matched.tsv"),
        (Columns(8, 9, -1), Columns(8, 9, -1), Columns(8, 9)),
    ),  # fmt: skip
    "mnlimm": GlueTask(
        "MNLI-mm",
        _NLI,
        ("train.tsv", "dev_mismatched.tsv", "test_mismatched.tsv"),
        (Columns(8, 9, -1), Columns(8, 9, -1), Columns(8, 9)),
    ),  # fmt: skip
    "qnli": GlueTask("QNLI", _ENTAIL, _TSV, (_PAIR_LAST, _PAIR_LAST, Columns(1, 2))),
    "rte": GlueTask("RTE", _ENTAIL, _TSV, (_PAIR_LAST, _PAIR_LAST, Columns(1, 2))),
    "wnli": GlueTask("WNLI", _BINARY, _TSV, (_PAIR_LAST, _PAIR_LAST, Columns(1, 2))),
    # Google's XnliProcessor: Chinese (its hard-coded language); train from the machine-translated MultiNLI.
    "xnli": GlueTask(
        "XNLI",
        _NLI,
        ("multinli/multinli.train.zh.tsv", "xnli.dev.tsv", None),
        (Columns(0, 1, 2), Columns(6, 7, 1, keep=(0, "zh")), None),
        label_aliases=(("contradictory", "contradiction"),),
    ),  # fmt: skip
    # GLUE's diagnostic set (diagnostic/diagnostic.tsv: index, sentence1, sentence2): test only, answered by a model
    # fine-tuned on MNLI (same labels in the same order), submitted as AX.tsv.
    "ax": GlueTask("AX", _NLI, (None, None, "diagnostic.tsv"), (None, None, Columns(1, 2))),
}
TASK_HELP = "cola, sst-2, mrpc, sts-b, qqp, mnli, mnli-mm, qnli, rte, wnli, xnli or ax (GLUE's diagnostic set)"


def get_task(name: str) -> GlueTask:
    """The task called `name` (any case; `sst-2`, `sst2` and `SST_2` alike); ValueError listing the known ones."""
    task = TASKS.get(name.lower().replace("-", "").replace("_", ""))
    if task is None:
        known = ", ".join(t.name if key != "mnli" else "MNLI" for key, t in TASKS.items())
        raise ValueError(f"--task_name {name!r} is not a task bertkit knows; the known ones are {known}")
    return task


# --- reading tsv files -----------------------------------------------------------------------------------------


@dataclass
class InputExample:
    """One row: its guid (`train-5`, or a test file's index column), texts, label string (None in test files)."""

    guid: str
    text_a: str
    text_b: str | None
    label: str | None
    where: str  # "FILE line N", for error messages


def read_tsv(path: str | Path) -> list[list[str]]:
    """Rows of a tab-separated file, split on tabs only: no quote character (GLUE's sentences hold lone `"`, which
    a csv reader would take as the start of a quoted field running across lines). A BOM is dropped (MRPC's header);
    a missing final newline is fine (CoLA's dev.tsv)."""
    try:
        text = Path(path).read_bytes().decode("utf-8-sig")
    except OSError as e:
        raise ValueError(f"{path}: cannot read it ({e.strerror or e})") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason})") from None
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r").split("\t") for line in lines]


def read_examples(task: GlueTask, data_dir: str | Path, split: str) -> list[InputExample]:
    """The examples of `split` (train, dev or test) in `data_dir`, columns as the task's processor reads them.

    Raises ValueError naming the file and line for a row with the wrong number of columns (a header file's rows
    must have as many as its header), and for a missing file.
    """
    name, cols = task.file(split), task.columns[SPLITS.index(split)]
    if name is None or cols is None:
        raise ValueError(task.missing(split))
    path = Path(data_dir) / name
    if not path.is_file():
        raise ValueError(f"--data_dir {data_dir}: {task.name}'s {split} file {name} is not there")
    rows = read_tsv(path)
    header = None if cols.width else (rows[0] if rows else [])
    width = cols.width or len(header)
    first = 0 if cols.width else 1
    needed = 1 + max(c for c in (cols.text_a, cols.text_b, cols.label, cols.keep and cols.keep[0]) if c is not None)
    if width < needed:  # another task's file, say: its rows would not hold the columns read
        named = f" ({', '.join(header)})" if header else ""
        raise ValueError(f"{path}: {width} columns{named}, but {task.name}'s {split} file has at least {needed}: "
                         f"is it {task.name}'s?")  # fmt: skip
    aliases = dict(task.label_aliases)
    examples = []
    for i, row in enumerate(rows[first:], start=first):
        if len(row) != width:
            names = f" ({', '.join(header)})" if header else ""
            raise ValueError(f"{path} line {i + 1}: {len(row)} tab-separated columns, expected {width}{names}")
        if cols.keep and row[cols.keep[0]] != cols.keep[1]:
            continue
        label = None if cols.label is None else aliases.get(row[cols.label], row[cols.label])
        guid = row[0] if split == "test" else f"{split}-{i - first}"  # every GLUE test file opens with its index
        text_b = None if cols.text_b is None else row[cols.text_b]
        examples.append(InputExample(guid, row[cols.text_a], text_b, label, f"{path} line {i + 1}"))
    return examples


def label_id(task: GlueTask, example: InputExample) -> int | float:
    """The label's id in the task's label list, or the score of a regression task; ValueError naming the row."""
    if task.is_regression:
        try:
            return float(example.label)
        except ValueError:
            raise ValueError(f"{example.where}: label {example.label!r} is not a number ({task.name} labels "
                             "are similarity scores)") from None  # fmt: skip
    try:
        return task.labels.index(example.label)
    except ValueError:
        raise ValueError(f"{example.where}: unknown label {example.label!r}; {task.name}'s labels are "
                         f"{', '.join(task.labels)}") from None  # fmt: skip


def check_labels(task: GlueTask, examples: list[InputExample]) -> None:
    """Every labelled example's label is one of the task's (ValueError naming the first that is not)."""
    for e in examples:
        if e.label is not None:
            label_id(task, e)


# --- features: Google's convert_single_example -----------------------------------------------------------------


@dataclass
class Features:
    """Model inputs of N examples: input_ids, input_mask, segment_ids (N, T) int32, zero-padded; label_ids (N,)
    int32 (class id) or float32 (regression score; 0 for test examples); is_real_example (N,) int32."""

    input_ids: np.ndarray
    input_mask: np.ndarray
    segment_ids: np.ndarray
    label_ids: np.ndarray
    is_real_example: np.ndarray | None = None  # None: all real

    def __post_init__(self) -> None:
        if self.is_real_example is None:
            self.is_real_example = np.ones(len(self.input_ids), np.int32)

    def __len__(self) -> int:
        return len(self.input_ids)

    def arrays(self) -> dict[str, np.ndarray]:
        return {k: getattr(self, k) for k in FEATURES}

    @classmethod
    def from_arrays(cls, a: dict[str, np.ndarray]) -> Features:
        """From record arrays (N, length) (labels and is_real_example (N, 1))."""
        return cls(a["input_ids"], a["input_mask"], a["segment_ids"], a["label_ids"].reshape(-1),
                   a["is_real_example"].reshape(-1))  # fmt: skip

    def real(self) -> Features:
        """Without the padding examples Google adds to fill a TPU's last batch (is_real_example 0)."""
        keep = self.is_real_example.astype(bool)
        return self if keep.all() else Features(*(a[keep] for a in self.arrays().values()))


FEATURES = ("input_ids", "input_mask", "segment_ids", "label_ids", "is_real_example")


def truncate_pair(a: list[int], b: list[int], max_length: int) -> None:
    """Google's _truncate_seq_pair: drop the last token of the longer list (of b on a tie) until both fit."""
    while len(a) + len(b) > max_length:
        (a if len(a) > len(b) else b).pop()


def convert_examples_to_features(
    examples: list[InputExample], task: GlueTask, max_seq_length: int, tokenizer: WordPieceTokenizer
) -> Features:
    """Google's convert_single_example for every example: [CLS] a [SEP] (b [SEP]), segment 0 then 1, the pair cut
    by truncate_pair to max_seq_length - 3 (a single text to max_seq_length - 2), zero padding to max_seq_length.

    Tokenizing whole texts and cutting ids equals Google's cutting tokens (one id per token). A text_b that is empty
    or has no tokens (spaces, control characters) counts as none, as in Google's `if tokens_b`. Raises ValueError
    for an unknown label.
    """
    if max_seq_length < 3:
        raise ValueError(f"--max_seq_length must be at least 3 ([CLS] text [SEP]), got {max_seq_length}")
    n, T = len(examples), max_seq_length
    ids_a = tokenizer.encode_batch([e.text_a for e in examples])
    with_b = [i for i, e in enumerate(examples) if e.text_b]
    ids_b: list[list[int] | None] = [None] * n
    for i, ids in zip(with_b, tokenizer.encode_batch([examples[i].text_b for i in with_b]), strict=True):
        ids_b[i] = ids
    out = Features(np.zeros((n, T), np.int32), np.zeros((n, T), np.int32), np.zeros((n, T), np.int32),
                   np.zeros(n, np.float32 if task.is_regression else np.int32))  # fmt: skip
    cls, sep = tokenizer.cls_id, tokenizer.sep_id
    for i, e in enumerate(examples):
        a, b = ids_a[i], ids_b[i]
        if not b:  # None or no tokens: a single text
            a = a[: T - 2]
            tokens, len_a = [cls, *a, sep], len(a) + 2
        else:
            truncate_pair(a, b, T - 3)
            tokens, len_a = [cls, *a, sep, *b, sep], len(a) + 2
        out.input_ids[i, : len(tokens)] = tokens
        out.input_mask[i, : len(tokens)] = 1
        out.segment_ids[i, len_a : len(tokens)] = 1
        if e.label is not None:
            out.label_ids[i] = label_id(task, e)
    return out
