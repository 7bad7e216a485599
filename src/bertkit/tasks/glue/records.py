"""GLUE features as record files: written by `bertkit create-glue-data` (OneFlow's OFRecord part files or Google's
TFRecords, with the test split's guids beside them), found and read by `bertkit classify` (which falls back on
--data_dir's tsv files).

References: google-research/bert `run_classifier.py` @ eedf5716 (file_based_convert_examples_to_features: the
features input_ids, input_mask, segment_ids, label_ids, is_real_example) and OneFlow-Benchmark
`LanguageModeling/BERT/run_classifier.py` (OFRecord part files `train.of_record-<i>` / `eval.of_record-<i>`
holding those five features as int32 lists).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bertkit.data.loader import read_dataset
from bertkit.data.records import Spec, write_ofrecord, write_tfrecord
from bertkit.data.tokenizer import WordPieceTokenizer
from bertkit.data.vocab import TokenizerFlags, check_data_vocab_target, record_data_vocab
from bertkit.runtime import dist
from bertkit.runtime.atomic import refuse_existing
from bertkit.runtime.config import Composed, Section
from bertkit.tasks.glue.data import (
    SPLITS,
    TASK_HELP,
    Features,
    GlueTask,
    InputExample,
    check_labels,
    convert_examples_to_features,
    get_task,
    read_examples,
)

if TYPE_CHECKING:
    from bertkit.tasks.glue.task import GlueDataFlags

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


@dataclass(frozen=True)
class GlueRecordFlags(Section):
    """What create-glue-data reads and writes."""

    task_name: str = field(default="", metadata={"help": TASK_HELP})
    data_dir: str = field(
        default="", metadata={"help": "the task's folder of GLUE tsv files (train.tsv, dev.tsv, ...)"}
    )
    output_dir: str = field(default="", metadata={"help": "folder for the record files"})
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
    def glue_task(self) -> GlueTask:
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


@dataclass(frozen=True)
class CreateGlueDataConfig(Composed):
    """Write a GLUE task's tsv files as classifier records: OneFlow's OFRecord part files (train.of_record-<i>,
    eval.of_record-<i>) for `bertkit classify --train_data_dir` and OneFlow's run_classifier.py, or Google's TFRecords."""

    records: GlueRecordFlags
    tokenizer: TokenizerFlags

    HELP = {"vocab_file": "vocab.txt of the model (default: bert-base-uncased)"}


GUIDS = "predict_guids.txt"  # beside the test records: each example's GLUE index, one a line, in record order


def read_guids(records: list[Path], n: int) -> tuple[list[str], str | None]:
    """(the guids of n test records, a note when they are not recorded): create-glue-data's GUIDS file beside the
    records, else 0 ... n-1 (every GLUE test file numbers its rows so). ValueError when the file holds another
    count."""
    path = records[0].parent / GUIDS
    if not path.is_file():
        return [str(i) for i in range(n)], f"note: no {path}; the submission file numbers the examples 0 ... {n - 1}"
    guids = path.read_text(encoding="utf-8").splitlines()
    if len(guids) != n:
        raise ValueError(f"{path}: {len(guids)} guids for {n} test records: were they written together?")
    return guids, None


def classify_command(cfg: CreateGlueDataConfig, split: str, n: int) -> str:
    """The `bertkit classify` flags that read one split's records (a hint: every flag in it exists)."""
    files = cfg.records
    which = {"train": "train", "dev": "eval", "test": "predict"}[split]
    action = {"train": "--do_train", "dev": "--do_eval", "test": "--do_predict"}[split]
    where = files.output_paths(split)
    data = where[0] if files.output_format == "tfrecord" else Path(files.output_dir)
    prefix = (
        "" if files.output_format == "tfrecord" else f" --{which}_data_prefix {getattr(files, f'{which}_data_prefix')}"
    )
    return (f"bertkit classify --task_name {files.task_name} {action} --{which}_data_dir {data}{prefix} "
            f"--{which}_example_num {n} --max_seq_length {files.max_seq_length}")  # fmt: skip


def run_create_glue_data(cfg: CreateGlueDataConfig) -> dict[str, int]:
    """Write the records of each split (and, for test, GUIDS: the submission file's indices); returns {split:
    examples}. Existing files are refused, not replaced. Prints, per split, the classify flags that read it."""
    files = cfg.records
    task = files.glue_task
    paths = {s: files.output_paths(s) for s in files.split_list}
    if "test" in paths:
        paths["guids"] = [Path(files.output_dir) / GUIDS]
    refuse_existing([p for ps in paths.values() for p in ps], elsewhere="--output_dir")  # the one overwrite rule
    # every split read and checked before any is written
    examples = {s: read_examples(task, files.data_dir, s) for s in files.split_list}
    for ex in examples.values():
        check_labels(task, ex)
    choice = cfg.tokenizer.choose()  # data/vocab.py
    check_data_vocab_target(Path(files.output_dir), Path(choice.path))
    print(choice.line())
    tokenizer = WordPieceTokenizer(choice.vocab_file, choice.do_lower_case)
    Path(files.output_dir).mkdir(parents=True, exist_ok=True)
    counts = {}
    for split, ex in examples.items():
        start = time.perf_counter()
        feats = convert_examples_to_features(ex, task, files.max_seq_length, tokenizer)
        write_record_parts(feats, paths[split], files.output_format)
        if split == "test":
            paths["guids"][0].write_text("".join(f"{e.guid}\n" for e in ex), encoding="utf-8")
        counts[split] = len(feats)
        where = str(paths[split][0]) + (f" ... {paths[split][-1].name}" if len(paths[split]) > 1 else "")
        print(f"{task.name} {split}: {len(feats)} examples -> {where} ({time.perf_counter() - start:.1f} s); "
              f"read with: {classify_command(cfg, split, len(feats))}")  # fmt: skip
    record_data_vocab(files.output_dir, choice.path, choice.do_lower_case)  # what classify checks its model against
    return counts


# --- a classify run's features: from records, or from --data_dir's tsv files ------------------------------


def tsv_examples(cfg: GlueDataFlags, split: str) -> list[InputExample]:
    """The examples of a split of --data_dir, every label checked (ValueError naming file and line)."""
    examples = read_examples(cfg.glue_task, cfg.data_dir, split)
    check_labels(cfg.glue_task, examples)
    if not examples:
        raise ValueError(f"--data_dir {cfg.data_dir}: {cfg.glue_task.file(split)} holds no examples")
    return examples


def record_files(cfg: GlueDataFlags, which: str) -> list[Path]:
    """The part files of --train_data_dir, --eval_data_dir or --predict_data_dir (`which`: train, eval, predict)."""
    return part_files(getattr(cfg, f"{which}_data_dir"), getattr(cfg, f"{which}_data_prefix"),
                           getattr(cfg, f"{which}_data_part_num"), which)  # fmt: skip


def load_features(cfg: GlueDataFlags, which: str, tokenizer: WordPieceTokenizer, env: dist.DistEnv,
                  say: Callable[[str], None]) -> tuple[Features, list[str]]:  # fmt: skip
    """(features, their guids) of train, eval or predict: from records when --{which}_data_dir is given (test
    guids from create-glue-data's file beside them), else from --data_dir's tsv file. Every rank builds the same
    features (deterministic)."""
    records = {"train": cfg.train_data_dir, "eval": cfg.eval_data_dir, "predict": cfg.predict_data_dir}[which]
    if records:
        feats = read_record_features(record_files(cfg, which), cfg.max_seq_length, cfg.glue_task.is_regression,
                                          progress=env.is_main)  # fmt: skip
        n, real = len(feats), feats.real()
        if len(real) < n:
            say(f"{which}: {n - len(real)} padding records (is_real_example 0) left out")
        given = getattr(cfg, f"{which}_example_num")
        if given is not None and given != len(real):
            say(f"note: --{which}_example_num is {given}; the records hold {len(real)} examples, all used")
        guids, note = read_guids(record_files(cfg, which), len(real)) if which == "predict" else ([], None)
        if note:
            say(note)
        return real, guids
    examples = tsv_examples(cfg, {"train": "train", "eval": "dev", "predict": "test"}[which])
    feats = convert_examples_to_features(examples, cfg.glue_task, cfg.max_seq_length, tokenizer)
    return feats, [e.guid for e in examples]
