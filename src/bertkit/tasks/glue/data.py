"""GLUE data: the tasks' tsv files, Google's featurization, the metrics each task reports, GLUE's submission files,
and the OFRecord / TFRecord form of the features (`bertkit create-glue-data`).

References: google-research/bert `run_classifier.py` @ eedf5716 (DataProcessor and its Xnli, Mnli, Mrpc and Cola
processors; convert_single_example and _truncate_seq_pair; file_based_convert_examples_to_features, whose features
are input_ids, input_mask, segment_ids, label_ids, is_real_example; test_results.tsv); Hugging Face transformers'
`data/processors/glue.py` (the columns of SST-2, STS-B, QQP, QNLI, RTE, WNLI and MNLI-mismatched) and
`data/metrics` (which metric each task reports); OneFlow-Benchmark `LanguageModeling/BERT/run_classifier.py`
(OFRecord part files `train.of_record-<i>` / `eval.of_record-<i>` holding those five features as int32 lists).

File quirks handled here: tsv files are split on tabs with no quote character (sentences hold unbalanced `"`);
MRPC's header opens with a UTF-8 BOM; CoLA's train and dev files have no header (and its dev.tsv no final newline).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bertkit.data.loader import read_dataset
from bertkit.data.records import Spec, write_ofrecord, write_tfrecord
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


# --- metrics ---------------------------------------------------------------------------------------------------


def accuracy(pred: np.ndarray, label: np.ndarray) -> float:
    return float((pred == label).mean())


def f1(pred: np.ndarray, label: np.ndarray) -> float:
    """F1 of class 1 (MRPC's paraphrase, QQP's duplicate): 2 TP / (2 TP + FP + FN); 0 when there is no positive."""
    tp = int(((pred == 1) & (label == 1)).sum())
    wrong = int((pred != label).sum())
    return 2 * tp / (2 * tp + wrong) if tp else 0.0


def matthews_corrcoef(pred: np.ndarray, label: np.ndarray) -> float:
    """Matthews correlation (CoLA's metric), scikit-learn's multiclass form; 0 when either side is constant."""
    k = int(max(pred.max(), label.max())) + 1
    c = np.bincount(label.astype(np.int64) * k + pred.astype(np.int64), minlength=k * k).reshape(k, k).astype(float)
    t, p, n = c.sum(1), c.sum(0), c.sum()
    cov_tp, cov_pp, cov_tt = np.trace(c) * n - t @ p, n * n - p @ p, n * n - t @ t
    return float(cov_tp / np.sqrt(cov_tt * cov_pp)) if cov_tt * cov_pp else 0.0


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    x, y = x.astype(np.float64) - x.mean(), y.astype(np.float64) - y.mean()
    denom = np.sqrt((x @ x) * (y @ y))
    return float(x @ y / denom) if denom else float("nan")


def average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks, tied values sharing the mean of their ranks (scipy.stats.rankdata's 'average')."""
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    last = np.cumsum(counts)
    return (last - (counts - 1) / 2)[inverse]


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    return pearson(average_ranks(x), average_ranks(y))


def glue_metrics(task: GlueTask, logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """The task's metrics from logits (N, num_labels) and labels (N,): argmax for classes, the score itself for
    regression. Metric names: accuracy, f1, matthews_corrcoef, pearson, spearman."""
    if task.is_regression:
        return {m: {"pearson": pearson, "spearman": spearman}[m](logits[:, 0], labels) for m in task.metrics}
    pred = logits.argmax(-1)
    funcs = {"accuracy": accuracy, "f1": f1, "matthews_corrcoef": matthews_corrcoef}
    return {m: funcs[m](pred, labels) for m in task.metrics}


# --- predictions: Google's test_results.tsv and GLUE's submission file ------------------------------------------


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(-1, keepdims=True))
    return z / z.sum(-1, keepdims=True)


def write_predictions(
    task: GlueTask, examples: list[InputExample], logits: np.ndarray, out_dir: str | Path
) -> list[Path]:
    """OUT/test_results.tsv (Google's: each example's class probabilities as float32, tab-separated; the score for
    regression) and OUT/<TASK>.tsv, GLUE's submission file (`index<TAB>prediction`, GLUE's label strings, a score
    with 3 decimals for STS-B)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if task.is_regression:
        rows, preds = [f"{s}" for s in logits[:, 0]], [f"{s:.3f}" for s in logits[:, 0]]
    else:
        # float32 probabilities printed by str(), as Google's (its softmax runs in float32): '0.98201376'
        rows = ["\t".join(str(p) for p in probs) for probs in softmax(logits.astype(np.float32))]
        preds = [task.labels[i] for i in logits.argmax(-1)]
    google, glue = out / "test_results.tsv", out / f"{task.name}.tsv"
    google.write_text("".join(f"{r}\n" for r in rows), encoding="utf-8")
    lines = ["index\tprediction"] + [f"{e.guid}\t{p}" for e, p in zip(examples, preds, strict=True)]
    glue.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return [google, glue]


# --- records: OneFlow's OFRecord part files, Google's TFRecord -----------------------------------------------


def record_features(seq_length: int, regression: bool) -> dict[str, Spec]:
    """The features of Google's train.tf_record / eval.tf_record and OneFlow's classifier OFRecords."""
    T = Spec(seq_length, np.int32, "--seq_length")
    label = Spec(1, np.float32 if regression else np.int32)
    return {"input_ids": T, "input_mask": T, "segment_ids": T, "label_ids": label, "is_real_example": Spec(1, np.int32)}


def part_files(data_dir: str | Path, prefix: str, part_num: int, flag: str) -> list[Path]:
    """`<prefix>0 ... <prefix>{part_num-1}` in data_dir (OneFlow's part_name_prefix); part_num 0: every one there.
    A file given instead of a directory is read alone (Google's train.tf_record)."""
    d = Path(data_dir)
    if d.is_file():
        return [d]
    if not d.is_dir():
        raise ValueError(f"--{flag}_data_dir {d}: no such file or directory")
    found = {p.name for p in d.iterdir() if p.name.startswith(prefix) and p.name[len(prefix) :].isdigit()}
    n = part_num or len(found)
    missing = [f"{prefix}{i}" for i in range(n) if f"{prefix}{i}" not in found]
    if not n or missing:
        have = ", ".join(sorted(found)[:10]) or "none"
        raise ValueError(f"--{flag}_data_dir {d}: {flag}_data_part_num {n} needs {prefix}0 ... {prefix}{max(n, 1) - 1}"
                         f" (--{flag}_data_prefix {prefix}); missing {', '.join(missing[:5]) or 'all'}; "
                         f"found: {have}")  # fmt: skip
    return [d / f"{prefix}{i}" for i in range(n)]


def read_record_features(files: list[Path], seq_length: int, regression: bool, progress: bool = False) -> Features:
    """Features from record files (OFRecord or TFRecord, told apart by looking); ValueError naming file, record
    and feature for one that does not fit --seq_length or lacks a feature."""
    return Features.from_arrays(read_dataset(files, record_features(seq_length, regression), "auto", progress=progress))


def write_record_parts(features: Features, paths: list[Path], fmt: str) -> None:
    """Split the features into len(paths) contiguous parts, one record per example, one file per part."""
    write = write_ofrecord if fmt == "ofrecord" else write_tfrecord
    arrays = features.arrays()
    for path, idx in zip(paths, np.array_split(np.arange(len(features)), len(paths)), strict=True):
        write(path, ({k: np.atleast_1d(a[j]) for k, a in arrays.items()} for j in idx))


@dataclass
class CreateGlueDataConfig:
    """Write a GLUE task's tsv files as classifier records: OneFlow's OFRecord part files (train.of_record-<i>,
    eval.of_record-<i>) for `bertkit classify --train_data_dir` and OneFlow's run_classifier.py, or Google's TFRecords."""

    task_name: str = field(default="", metadata={"help": TASK_HELP})
    data_dir: str = field(
        default="", metadata={"help": "the task's folder of GLUE tsv files (train.tsv, dev.tsv, ...)"}
    )
    output_dir: str = field(default="", metadata={"help": "folder for the record files"})
    vocab_file: str | None = field(
        default=None, metadata={"help": "vocab.txt of the model (default: bert-base-uncased)"}
    )
    do_lower_case: bool = field(default=True, metadata={"help": "lowercase and strip accents: True for uncased models"})
    max_seq_length: int = field(default=128, metadata={"help": "tokens per example, padded or cut to this"})
    splits: str = field(
        default="train,dev", metadata={"help": "which files: train, dev (-> eval records), test (-> predict)"}
    )
    output_format: str = field(default="ofrecord", metadata={"help": "ofrecord (OneFlow) or tfrecord (Google)",
                                                             "choices": ["ofrecord", "tfrecord"]})  # fmt: skip
    part_num: int = field(default=1, metadata={"help": "part files per split (ofrecord)"})
    train_data_prefix: str = field(
        default="train.of_record-", metadata={"help": "name of the train part files, + index"}
    )
    eval_data_prefix: str = field(default="eval.of_record-", metadata={"help": "name of the dev part files, + index"})
    predict_data_prefix: str = field(
        default="predict.of_record-", metadata={"help": "name of the test part files, + index"}
    )

    def __post_init__(self) -> None:
        for name in ("task_name", "data_dir", "output_dir"):
            if not getattr(self, name):
                raise ValueError(f"--{name} is required")
        get_task(self.task_name)  # an unknown name fails here, listing the known ones
        if not self.split_list or any(s not in SPLITS for s in self.split_list):
            raise ValueError(f"--splits {self.splits!r}: choose among train, dev, test")
        if self.part_num <= 0 or self.max_seq_length < 3:
            raise ValueError("--part_num must be positive and --max_seq_length at least 3")

    @property
    def task(self) -> GlueTask:
        return get_task(self.task_name)

    @property
    def split_list(self) -> list[str]:
        return [s.strip() for s in self.splits.split(",") if s.strip()]

    def output_paths(self, split: str) -> list[Path]:
        """The files of a split: OneFlow's `<prefix>0 ...` parts, or Google's single train.tf_record etc."""
        out = Path(self.output_dir)
        if self.output_format == "tfrecord":
            return [out / {"train": "train.tf_record", "dev": "eval.tf_record", "test": "predict.tf_record"}[split]]
        prefix = {"train": self.train_data_prefix, "dev": self.eval_data_prefix, "test": self.predict_data_prefix}
        return [out / f"{prefix[split]}{i}" for i in range(self.part_num)]


def run_create_glue_data(cfg: CreateGlueDataConfig) -> dict[str, int]:
    """Write the records of each split; returns {split: examples}. Existing files are refused, not replaced."""
    task = cfg.task
    paths = {s: cfg.output_paths(s) for s in cfg.split_list}
    existing = [str(p) for ps in paths.values() for p in ps if p.exists()]
    if existing:
        one = len(existing) == 1
        raise ValueError(f"{', '.join(existing)} already {'exists' if one else 'exist'}; remove "
                         f"{'it' if one else 'them'} or choose another --output_dir")  # fmt: skip
    examples = {s: read_examples(task, cfg.data_dir, s) for s in cfg.split_list}  # all checked before any is written
    for ex in examples.values():
        check_labels(task, ex)
    tokenizer = WordPieceTokenizer(cfg.vocab_file, cfg.do_lower_case)
    Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
    counts = {}
    for split, ex in examples.items():
        start = time.perf_counter()
        feats = convert_examples_to_features(ex, task, cfg.max_seq_length, tokenizer)
        write_record_parts(feats, paths[split], cfg.output_format)
        counts[split] = len(feats)
        where = str(paths[split][0]) + (f" ... {paths[split][-1].name}" if len(paths[split]) > 1 else "")
        flag = {"train": "train", "dev": "eval", "test": "predict"}[split]
        print(f"{task.name} {split}: {len(feats)} examples -> {where} ({time.perf_counter() - start:.1f} s); "
              f"--{flag}_example_num {len(feats)}")  # fmt: skip
    return counts
