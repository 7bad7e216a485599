"""GLUE sentence and sentence-pair classification: the command `bertkit classify`.

References: google-research/bert `run_classifier.py` @ eedf5716 (its flags and defaults; create_model: dropout and
a linear layer on the pooled [CLS] output, mean cross-entropy; num_train_steps = int(examples / train_batch_size x
epochs), warmup = int(steps x warmup_proportion); eval_results.txt; test_results.tsv) and OneFlow-Benchmark
`LanguageModeling/BERT/run_classifier.py` (OFRecord inputs --train_data_dir / --eval_data_dir with part-file
prefixes, --num_epochs, iter_num = ceil(train_example_num / global batch) x epochs). STS-B, a regression, as
Hugging Face's run_glue does it: one output, mean squared error. The data, features and metrics are `glue`'s.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bertkit.checkpoint import formats as checkpoint
from bertkit.checkpoint.snapshot import check_writable, existing_snapshots
from bertkit.data.loader import ArrayLoader
from bertkit.data.tokenizer import WordPieceTokenizer
from bertkit.data.vocab import Tokenization, TokenizerFlags
from bertkit.model.bert import BertForSequenceClassification
from bertkit.runtime import dist
from bertkit.runtime.atomic import refuse_existing
from bertkit.runtime.config import Composed, Section, one_of, positive
from bertkit.runtime.dist import DistFlags
from bertkit.runtime.precision import QUANTIZE
from bertkit.tasks.glue import data as glue
from bertkit.tasks.glue import labels
from bertkit.tasks.glue.evaluate import check_ids, evaluate, mean_batch_loss, predict_logits, write_eval_results
from bertkit.tasks.glue.predict import quantize_classifier
from bertkit.tasks.glue.records import load_features, record_files, tsv_examples
from bertkit.tasks.glue.results import write_predictions
from bertkit.train import runner
from bertkit.train.build import build_model, checkpoint_path, fine_tuned_differently, model_config
from bertkit.train.config import ModelFlags, OptimizerFlags, RunFlags, TrainingFlags, with_schedule
from bertkit.train.loop import Task, fit
from bertkit.train.metrics import log_final_eval

# --- losses ----------------------------------------------------------------------------------------------------
# Every batch is full (the loader wraps around epochs) and every example weighs the same, so each rank's batch
# mean is the mean over the global batch once DDP averages the gradients over ranks: no count to all-reduce.


def classification_loss(model: nn.Module, b: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
    """Google's loss: mean cross-entropy of logits (B, C) against label_ids (B,), in fp32 whatever the autocast."""
    logits = model(b["input_ids"], b["segment_ids"], b["input_mask"])
    loss = F.cross_entropy(logits.float(), b["label_ids"])
    return loss, {"total_loss": loss}


def regression_loss(model: nn.Module, b: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
    """STS-B: mean squared error of the one output (B, 1) against the score label_ids (B,) float, in fp32."""
    scores = model(b["input_ids"], b["segment_ids"], b["input_mask"])
    loss = F.mse_loss(scores.float().squeeze(-1), b["label_ids"].float())
    return loss, {"total_loss": loss}


class ClassifyLoader(ArrayLoader):
    """Endless shuffled batches {input_ids, input_mask, segment_ids (B, T'), int64; label_ids (B,), int64 or
    float32}, T' the batch's longest example: padding columns are cut, which changes no logit (the [CLS] output
    attends to real tokens only; tested). Epochs, rank sharding and the resumable position are ArrayLoader's."""

    def next_batch(self) -> dict[str, Tensor]:
        idx = self.next_indices()
        L = int(self.arrays["input_mask"][idx].astype(bool).sum(1).max())
        batch = {k: torch.from_numpy(self.arrays[k][idx, :L].astype(np.int64))
                 for k in ("input_ids", "input_mask", "segment_ids")}  # fmt: skip
        labels = self.arrays["label_ids"][idx]
        batch["label_ids"] = torch.from_numpy(labels.astype(np.float32 if labels.dtype.kind == "f" else np.int64))
        return batch


# --- the config: Google's flags and OneFlow's, each declared once ---------------------------------------------------


@dataclass(frozen=True)
class GlueDataFlags(Section):
    """A GLUE task's data: Google's tsv files in --data_dir, or OneFlow's record part files per split."""

    task_name: str | None = field(default=None, metadata={"help": glue.TASK_HELP})
    data_dir: str | None = field(
        default=None,
        metadata={"resume": "warned",
                  "help": "the task's GLUE folder: train.tsv, dev.tsv, test.tsv (MNLI: dev_matched...)"},
    )  # fmt: skip
    max_seq_length: int | None = field(
        default=None, metadata={"resume": "refused", "help": "tokens per example, cut or padded (default: 128)"}
    )
    seq_length: int | None = field(
        default=None, metadata={"resume": "refused", "help": "OneFlow's name for --max_seq_length"}
    )
    train_data_dir: str | None = field(
        default=None,
        metadata={"resume": "warned", "help": "OneFlow: folder of training part files (or one record file)"},
    )
    train_data_prefix: str = field(default="train.of_record-", metadata={"help": "training part files: prefix + i"})
    train_data_part_num: int = field(
        default=0, metadata={"resume": "warned", "help": "training part files read (0: all there)"}
    )
    train_example_num: int | None = field(
        default=None,
        metadata={
            "help": "OneFlow's count of training examples (a note when the data holds another count: all of it is used)"
        },
    )
    eval_data_dir: str | None = field(
        default=None, metadata={"help": "OneFlow: folder of evaluation part files (or one record file)"}
    )
    eval_data_prefix: str = field(default="eval.of_record-", metadata={"help": "evaluation part files: prefix + i"})
    eval_data_part_num: int = field(default=0, metadata={"help": "evaluation part files read (0: all there)"})
    eval_example_num: int | None = field(
        default=None,
        metadata={
            "help": "OneFlow's count of evaluation examples (a note when the data holds another count: all of it is used)"
        },
    )
    predict_data_dir: str | None = field(
        default=None, metadata={"help": "test part files (create-glue-data --splits test), or one record file"}
    )
    predict_data_prefix: str = field(default="predict.of_record-", metadata={"help": "test part files: prefix + i"})
    predict_data_part_num: int = field(default=0, metadata={"help": "test part files read (0: all there)"})
    predict_example_num: int | None = field(
        default=None, metadata={"help": "the count of test examples (a note when the records hold another)"}
    )

    def __post_init__(self) -> None:
        if not self.task_name:
            raise ValueError(f"--task_name is required: one of {', '.join(t.name for t in glue.TASKS.values())}")
        glue.get_task(self.task_name)  # an unknown name fails here, listing the known ones
        if self.max_seq_length is not None and self.max_seq_length < 3:
            raise ValueError(f"--max_seq_length must be at least 3 ([CLS] text [SEP]), got {self.max_seq_length}")

    @property
    def glue_task(self) -> glue.GlueTask:
        return glue.get_task(self.task_name)


@dataclass(frozen=True)
class ClassifyFlags(Section):
    """classify's own flags: what to do, Google's global batches, epochs, where results go, the seed's names."""

    do_train: bool | None = field(
        default=None, metadata={"help": "fine-tune on the train set (default: when --train_data_dir is given)"}
    )
    do_eval: bool | None = field(
        default=None, metadata={"help": "score the dev set, write eval_results.txt (default: with --eval_data_dir)"}
    )
    do_predict: bool = field(default=False, metadata={"help": "predict the test set; write GLUE's submission file"})
    quantize: str = field(
        default="none",
        metadata={"help": "int8: --do_predict (and --do_eval) with dynamic int8 Linear layers on the CPU (faster, "
                          "not exact; on a CPU with AMX --precision bf16 is faster still); none: exact",
                  "choices": QUANTIZE},
    )  # fmt: skip
    train_batch_size: int | None = field(
        default=None, metadata={"help": "Google's global batch: --batch_size_per_device = it / processes (default: 32)"}
    )
    eval_batch_size: int = field(default=8, metadata={"help": "Google's global evaluation batch"})
    predict_batch_size: int = field(default=8, metadata={"help": "Google's global prediction batch"})
    eval_batch_size_per_device: int | None = field(
        default=None,
        metadata={"help": "OneFlow's evaluation batch per process (default: --eval_batch_size / processes)"},
    )
    num_train_epochs: float | None = field(
        default=None, metadata={"resume": "warned", "help": "passes over the train set (default: 3)"}
    )
    num_epochs: float | None = field(
        default=None, metadata={"resume": "warned", "help": "OneFlow's name for --num_train_epochs"}
    )
    warmup_proportion: float = field(
        default=0.1, metadata={"resume": "warned", "help": "warmup steps as a fraction of --iter_num"}
    )
    output_dir: str = field(
        default="classify_output", metadata={"help": "folder for eval_results.txt, test_results.tsv and <TASK>.tsv"}
    )
    overwrite_output_dir: bool = field(default=False, metadata={"help": "replace result files and snapshots"})
    # the seed's pretraining flags that classification takes (its command lines carry them) but never uses
    data_part_num: int = field(
        default=32, metadata={"resume": "warned", "help": "accepted for the seed's command lines; unused"}
    )
    max_predictions_per_seq: int = field(
        default=80, metadata={"resume": "refused", "help": "accepted for the seed's command lines; unused"}
    )
    use_boxing_v2: bool | None = field(default=None, metadata={"help": "accepted for the seed's command lines; unused"})

    def __post_init__(self) -> None:
        positive(self, "eval_batch_size", "predict_batch_size", "num_train_epochs", "eval_batch_size_per_device")
        if not 0 <= self.warmup_proportion <= 1:
            raise ValueError(f"--warmup_proportion must be in [0, 1], got {self.warmup_proportion}")


@dataclass(frozen=True)
class ClassifyConfig(Composed):
    """Fine-tune BERT on a GLUE task, evaluate on its dev set, predict its test set: Google's run_classifier.py
    and OneFlow's.

    Google's form reads GLUE's tsv files in --data_dir; OneFlow's reads record part files (--train_data_dir,
    --eval_data_dir, --predict_data_dir; `bertkit create-glue-data` writes them). A checkpoint that names its labels
    (Hugging Face id2label/label2id, bertkit's labels.txt) is read in its own order, mapped onto the task's (the
    mapping is printed); labels the task does not know are an error. Checkpoints that name none (Google's, and
    transformers' placeholders LABEL_0, ...) are read in the task's order, as Google's run_classifier reads them. --do_eval writes OUTPUT_DIR/eval_results.txt,
    --do_predict Google's test_results.tsv and GLUE's submission file (RTE.tsv, ...). --iter_num defaults to the
    epochs' steps, --warmup_batches to --warmup_proportion of them.
    """

    tokenizer: TokenizerFlags
    data: GlueDataFlags
    model: ModelFlags
    task: ClassifyFlags
    optimizer: OptimizerFlags
    training: TrainingFlags
    run: RunFlags
    dist: DistFlags

    cli_hidden = frozenset({"max_predictions_per_seq", "data_part_num", "use_boxing_v2"})
    # Fine-tuning defaults that differ from pretraining's (Google's run_classifier.py and OneFlow's); Google's
    # run_classifier keeps everything in --output_dir, the fine-tuned model included: so do these defaults.
    DEFAULTS = {"model_save_dir": None, "log_dir": None, "save_last_snapshot": True,
                                "learning_rate": 5e-5, "batch_size_per_device": None, "iter_num": None,
                                "warmup_batches": None}  # fmt: skip
    HELP = {
        "model_save_dir": "directory for snapshots (default: --output_dir)",
        "log_dir": "metrics.jsonl goes here (default: --output_dir)",
        "save_last_snapshot": "keep the fine-tuned model: model_save_dir/last_snapshot at the end",
        "batch_size_per_device": "OneFlow's examples per process per micro-step (default: --train_batch_size)",
        "iter_num": "optimizer steps (default: Google's int(examples / batch x epochs) for tsv, OneFlow's "
        "ceil(examples / batch) x epochs for records)",
        "warmup_batches": "linear warmup steps (default: --warmup_proportion x --iter_num)",
    }

    @classmethod
    def resolve(cls, v: dict) -> dict:
        one = one_of
        v["model_save_dir"] = v["model_save_dir"] or v["output_dir"]
        v["log_dir"] = v["log_dir"] or v["output_dir"]
        v["max_seq_length"] = v["seq_length"] = one(("max_seq_length", "seq_length"), v["max_seq_length"],
                                                    v["seq_length"], 128)  # fmt: skip
        v["num_train_epochs"] = v["num_epochs"] = one(("num_train_epochs", "num_epochs"), v["num_train_epochs"],
                                                      v["num_epochs"], 3.0)  # fmt: skip
        processes = v["gpu_num_per_node"] * v["node_num"]
        tbs, per = v["train_batch_size"], v["batch_size_per_device"]
        if tbs is not None:
            if tbs <= 0 or tbs % processes:
                raise ValueError(f"--train_batch_size {tbs} must be a positive multiple of the {processes} processes")
            if per is not None and per != tbs // processes:
                raise ValueError(f"--train_batch_size {tbs} is {tbs // processes} per process for {processes} "
                                 f"processes, but --batch_size_per_device is {per}; give one")  # fmt: skip
            per = tbs // processes
        elif per is None:  # Google's default global batch
            if 32 % processes:
                raise ValueError(f"the default --train_batch_size 32 does not split over {processes} processes; "
                                 "give --train_batch_size or --batch_size_per_device")  # fmt: skip
            per = 32 // processes
        v["batch_size_per_device"], v["train_batch_size"] = per, per * processes
        if v["eval_batch_size"] <= 0:
            raise ValueError(f"--eval_batch_size must be positive, got {v['eval_batch_size']}")
        v["eval_batch_size_per_device"] = v["eval_batch_size_per_device"] or math.ceil(v["eval_batch_size"] / processes)
        if v["do_train"] is None:  # OneFlow's form: record files given are used
            v["do_train"] = bool(v["train_data_dir"])
        if v["do_eval"] is None:
            v["do_eval"] = bool(v["eval_data_dir"])
        if v["quantize"] != "none" and v["device"] == "cuda":
            raise ValueError("--quantize int8 runs on the CPU only: pass --device cpu")
        if not (v["do_train"] or v["do_eval"] or v["do_predict"]):
            raise ValueError("nothing to do: pass at least one of --do_train, --do_eval, --do_predict")
        if v["do_train"] and not (v["train_data_dir"] or v["data_dir"]):
            raise ValueError("--do_train needs --data_dir (GLUE tsv files) or --train_data_dir (record files)")
        if v["do_eval"] and not (v["eval_data_dir"] or v["data_dir"]):
            raise ValueError("--do_eval needs --data_dir (GLUE tsv files) or --eval_data_dir (record files)")
        if v["task_name"]:  # (its absence is GlueDataFlags's error)
            task = glue.get_task(v["task_name"])
            if v["do_predict"] and not (v["predict_data_dir"] or v["data_dir"]):
                raise ValueError(f"--do_predict needs --data_dir holding {task.name}'s test file, or "
                                 "--predict_data_dir (record files)")  # fmt: skip
            for flag, split, records in (("do_train", "train", v["train_data_dir"]),
                                         ("do_eval", "dev", v["eval_data_dir"]),
                                         ("do_predict", "test", v["predict_data_dir"])):  # fmt: skip
                if v[flag] and not records and task.file(split) is None:
                    raise ValueError(f"--{flag}: {task.missing(split)}")
        return v

    def outputs(self) -> list[Path]:
        """The result files this run writes."""
        out = Path(self.task.output_dir)
        names = (["eval_results.txt"] if self.task.do_eval else []) + (
            ["test_results.tsv", f"{self.data.glue_task.name}.tsv"] if self.task.do_predict else []
        )
        return [out / n for n in names]


# --- data: tsv files (Google) or record part files (OneFlow) ----------------------------------------------------


# --- the model, evaluation and prediction ----------------------------------------------------------------------


def label_hook(cfg: ClassifyConfig, say: Callable[[str], None]) -> Callable | None:
    """What the model builder does after loading --init_checkpoint: a classifier whose labels the checkpoint names
    in another order is reordered to the task's (checked before loading, so a mismatch is a clear error)."""
    path = cfg.model.model_load_dir
    if cfg.run.resume or not path:
        return None
    theirs = checkpoint.own_labels(path, checkpoint.detect_format(path))
    perm = labels.label_order(cfg.data.glue_task, theirs, f"--init_checkpoint {path}")

    def after_load(model: nn.Module, report: checkpoint.LoadReport) -> None:
        if theirs and "classifier.weight" in report.loaded and not cfg.data.glue_task.is_regression:
            say(labels.describe(cfg.data.glue_task, theirs, perm))
            if perm:
                labels.reorder_classifier(model, perm)

    return after_load


def choose_vocab(cfg: ClassifyConfig, vocab_size: int) -> Tokenization:
    """The vocabulary and casing by the one policy (data/vocab.py): the model's (the snapshot resumed, else
    --init_checkpoint) against --vocab_file, --do_lower_case and the record data's."""
    data = (("--train_data_dir", cfg.data.train_data_dir), ("--eval_data_dir", cfg.data.eval_data_dir))
    return cfg.tokenizer.choose(checkpoint_path(cfg), vocab_size, data)


# --- the command -------------------------------------------------------------------------------------------------


def _check(cfg: ClassifyConfig) -> ClassifyConfig:
    """Every user error before any worker starts: inputs there and well-formed, outputs not about to be replaced.
    Returns the config the workers get (--resume latest resolved)."""
    flags = cfg.flat()
    for flag in ("data_dir", "model_load_dir", "bert_config_file", "vocab_file"):
        value = flags[flag]
        if value and not Path(value).exists():
            name = cfg.model.checkpoint_flag if flag == "model_load_dir" else f"--{flag}"
            raise ValueError(f"{name} {value}: no such file or directory")
    bert_cfg, source = cfg.model.model_config()
    if cfg.data.max_seq_length > bert_cfg.max_position_embeddings:
        raise ValueError(f"--max_seq_length {cfg.data.max_seq_length} exceeds the model's max_position_embeddings "
                         f"{bert_cfg.max_position_embeddings} ({source})")  # fmt: skip
    # Rows, columns and labels of every tsv file used (reading is quick; tokenizing waits for the workers).
    for wanted, which, split, records in ((cfg.task.do_train, "train", "train", cfg.data.train_data_dir),
                                          (cfg.task.do_eval, "eval", "dev", cfg.data.eval_data_dir),
                                          (cfg.task.do_predict, "predict", "test", cfg.data.predict_data_dir)):  # fmt: skip
        if wanted and records:
            record_files(cfg.data, which)
        elif wanted:
            tsv_examples(cfg.data, split)
    outputs = cfg.outputs()
    save_dir = Path(cfg.run.model_save_dir)
    if cfg.task.do_train and not cfg.run.resume:
        outputs += existing_snapshots(save_dir)
    refuse_existing(outputs, "--overwrite_output_dir", overwrite=cfg.task.overwrite_output_dir)
    if cfg.task.do_train:
        check_writable(cfg.run.model_save_dir)
        cfg = runner.check_resume(cfg)
    choose_vocab(cfg, model_config(cfg).vocab_size)  # after --resume latest is resolved
    return cfg


def run(cfg: ClassifyConfig) -> dict | None:
    return runner.run(cfg, _run, check=_check)


def _run(cfg: ClassifyConfig, env: dist.DistEnv) -> dict:
    say = print if env.is_main else (lambda *a, **k: None)
    say(runner.banner(cfg))
    glue_task = cfg.data.glue_task
    head = lambda c: BertForSequenceClassification(c, glue_task.num_labels)  # noqa: E731
    model, bert_cfg, resume_state = build_model(cfg, head, env, say, label_hook(cfg, say))
    if not cfg.task.do_train and (note := fine_tuned_differently(cfg, ("max_seq_length",))):
        say(note)
    batch = cfg.task.eval_batch_size_per_device
    choice = choose_vocab(cfg, bert_cfg.vocab_size)
    say(choice.line())
    if choice.note:
        say(choice.note)
    tokenizer = WordPieceTokenizer(choice.vocab_file, choice.do_lower_case)
    dev = None
    if cfg.task.do_eval:  # built first, so that a bad dev file fails before training, not after
        dev, _ = load_features(cfg.data, "eval", tokenizer, env, say)
        check_ids(dev, bert_cfg, "dev set")
    summary, metrics, step = None, None, resume_state["step"] if resume_state else 0
    if cfg.task.do_train:
        train, _ = load_features(cfg.data, "train", tokenizer, env, say)
        check_ids(train, bert_cfg, "train set")
        n = len(train)
        global_batch = cfg.training.batch_size_per_device * env.world_size * cfg.training.num_accumulation_steps
        steps, epochs = cfg.training.iter_num, cfg.task.num_train_epochs
        if steps is None:
            if cfg.data.train_data_dir:  # OneFlow: whole batches per epoch, times the epochs
                steps = max(1, math.ceil(math.ceil(n / global_batch) * epochs))
            else:  # Google: int(len(train_examples) / train_batch_size * num_train_epochs)
                steps = max(1, int(n / global_batch * epochs))
        cfg = with_schedule(cfg, steps, cfg.task.warmup_proportion)
        say(f"training {glue_task.name}: {n} examples, global batch {global_batch}, iter_num {cfg.training.iter_num}, "
            f"warmup_batches {cfg.optimizer.warmup_batches}")  # fmt: skip
        loader = ClassifyLoader({k: v for k, v in train.arrays().items() if k != "is_real_example"},
                                cfg.training.batch_size_per_device, rank=env.rank, world_size=env.world_size,
                                seed=cfg.training.seed)  # fmt: skip

        def eval_fn(m: nn.Module) -> dict[str, float]:  # inside training: a signal waits for the loop's stop check
            return evaluate(m, glue_task, dev, batch, replace(env, stop=None), cfg.training.precision)[0]

        loss_fn = regression_loss if glue_task.is_regression else classification_loss
        extras = {"vocab_file": choice.path, "do_lower_case": choice.do_lower_case,
                  "run_config": cfg.flat(), "labels": glue_task.labels or None}  # fmt: skip
        plugged = Task(loss_fn, loader, evaluate=eval_fn if dev is not None else None, snapshot_extras=extras)
        summary = fit(model, bert_cfg, plugged, cfg, env, resume_state, say)
        step = summary["step"]
        if not cfg.run.save_last_snapshot and step % cfg.run.model_save_every_n_iter:
            say("note: the fine-tuned model is not kept (--save_last_snapshot False)")
    model = quantize_classifier(model, cfg.task.quantize)  # after training: evaluation and prediction only
    out = Path(cfg.task.output_dir)
    if dev is not None:
        metrics, example_loss = evaluate(
            model, glue_task, dev, batch, env, cfg.training.precision, progress=env.is_main
        )
        if env.is_main:
            batch_loss = mean_batch_loss(example_loss, cfg.task.eval_batch_size)
            lines = write_eval_results(out / "eval_results.txt", metrics, step, batch_loss)
            say(f"***** Eval results ({glue_task.name} dev, {len(dev)} examples) *****")
            for line in lines:  # as Google logs them
                say(f"  {line}")
            say(f"wrote {out / 'eval_results.txt'}")
            if summary is not None:  # trained in this run: its log ends with the closing evaluation
                log_final_eval(cfg.run.log_dir, step, metrics)
    if cfg.task.do_predict:
        test, guids = load_features(cfg.data, "predict", tokenizer, env, say)
        check_ids(test, bert_cfg, "test set")
        logits = predict_logits(model, test, math.ceil(cfg.task.predict_batch_size / env.world_size), env,
                                cfg.training.precision, env.is_main)  # fmt: skip
        if env.is_main:
            paths = write_predictions(glue_task, guids, logits, out)
            say(f"wrote {', '.join(str(p) for p in paths)} ({len(guids)} test examples)")
    return {"train": summary, "eval": metrics}
