"""SQuAD fine-tuning and prediction: the commands `bertkit squad`, `bertkit squad-predict` and `bertkit npy2json`.

References: google-research/bert `run_squad.py` @ eedf5716 (the loss, the flags) and the seed's OneFlow-Benchmark
BERT scripts: `run_squad.py` (its tutorial form takes run_pretraining.py's flags and an OFRecord `--data_dir`; its
later form adds `--do_train/--do_eval`, `--train_data_dir`, `--num_epochs`, ...), `run_squad_predict.py` (OFRecord
windows -> `all_results.npy`) and `npy2json.py` (`all_results.npy` + SQuAD json -> `predictions.json`). Windows
("features") are built by `squad_data.convert_examples_to_features`; logits become answers and files (Google's
write_predictions, the all_results.npy format) in `squad_predict`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bertkit.checkpoint import formats as checkpoint
from bertkit.checkpoint.snapshot import check_writable, existing_snapshots, load_snapshot
from bertkit.data.loader import ArrayLoader, id_limits, read_dataset, resolve_inputs
from bertkit.data.records import squad_features
from bertkit.data.tokenizer import WordPieceTokenizer
from bertkit.data.vocab import CHECK_CASING_HELP, DO_LOWER_CASE_HELP, Tokenization, choose_tokenizer
from bertkit.model.bert import BertForQuestionAnswering, num_parameters
from bertkit.model.config import BertConfig
from bertkit.runtime import dist
from bertkit.runtime.atomic import refuse_existing
from bertkit.runtime.precision import QUANTIZE, quantize
from bertkit.tasks.squad.data import (
    SquadExample,
    SquadFeatures,
    convert_examples_to_features,
    is_squad_v2,
    load_squad,
    read_squad_examples,
    squad_tokenizer,
)
from bertkit.tasks.squad.evaluate import evaluate_v1, evaluate_v2
from bertkit.tasks.squad.predict import PREDICTION_FILES, RawResults, SquadPredictions, predict_answers, predict_logits
from bertkit.train import runner
from bertkit.train.loop import fit, log_final_eval

# --- training: Google's loss and shuffled batches of windows -------------------------------------------------


def span_logits(logits: Tensor, input_mask: Tensor) -> Tensor:
    """Start or end logits (B, T) in fp32 with padding positions (input_mask 0) at -inf: out of the softmax.

    So a window's loss and gradients do not depend on how much padding it carries (its batch's longest window,
    --max_seq_length). A masked position gets probability exactly 0 and gradient exactly 0; every window has a
    real [CLS], so no row is all -inf. Google's loss runs the softmax over the padding logits too."""
    return logits.float().masked_fill(~input_mask.bool(), float("-inf"))


def squad_loss(model: nn.Module, b: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
    """Google's loss, the mean of the start and end cross-entropies (B, T) -> (), over the real positions of each
    window only (`span_logits`: the one difference from Google), in fp32 whatever the autocast."""
    start, end = model(b["input_ids"], b["segment_ids"], b["input_mask"])
    start_loss = F.cross_entropy(span_logits(start, b["input_mask"]), b["start_positions"])
    end_loss = F.cross_entropy(span_logits(end, b["input_mask"]), b["end_positions"])
    total = (start_loss + end_loss) / 2
    return total, {"total_loss": total}


class SquadLoader(ArrayLoader):
    """Endless batches of training windows {input_ids, input_mask, segment_ids (B, T'); start_positions,
    end_positions (B,)}, int64, T' the batch's longest window. Padding columns are cut (faster), and exactly so:
    `squad_loss` leaves padding positions out of the span softmax, so no window's loss depends on T'.

    The sample stream, its epochs and the resumable position are ArrayLoader's (one global permutation per
    epoch, batches dealt round-robin to the ranks); the windows are already in memory.
    """

    def next_batch(self) -> dict[str, Tensor]:
        idx = self.next_indices()
        L = int(self.arrays["input_mask"][idx].astype(bool).sum(1).max())
        batch = {
            k: torch.from_numpy(self.arrays[k][idx, :L].astype(np.int64))
            for k in ("input_ids", "input_mask", "segment_ids")
        }
        for k in ("start_positions", "end_positions"):
            batch[k] = torch.from_numpy(self.arrays[k][idx].reshape(-1).astype(np.int64))
        return batch


# --- configs: each flag declared once; where the seed and Google name one thing twice, both are accepted --------


@dataclass
class SquadFlags:
    """Google's run_squad.py flags for windows and answers, shared by squad, squad-predict and npy2json."""

    vocab_file: str | None = field(
        default=None, metadata={"help": "vocab.txt of the model (default: the checkpoint's, else bert-base-uncased)"}
    )
    do_lower_case: bool | None = field(default=None, metadata={"help": DO_LOWER_CASE_HELP})
    check_casing: bool = field(default=True, metadata={"help": CHECK_CASING_HELP})
    max_seq_length: int = field(default=384, metadata={"help": "tokens per window: [CLS] question [SEP] context [SEP]"})
    doc_stride: int = field(default=128, metadata={"help": "tokens between the starts of a paragraph's windows"})
    max_query_length: int = field(default=64, metadata={"help": "questions are cut to this many tokens"})
    predict_file: str | None = field(
        default=None, metadata={"help": "SQuAD json to answer (dev-v1.1.json); scored when it holds answers"}
    )
    output_dir: str | None = field(
        default=None,
        metadata={
            "help": "folder for predictions.json, nbest_predictions.json, null_odds.json (v2.0) and all_results.npy "
            "(default: squad_output for squad, the working folder otherwise)"
        },
    )
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "replace prediction files and snapshots that already exist"}
    )
    n_best_size: int = field(default=20, metadata={"help": "answers listed per question in nbest_predictions.json"})
    max_answer_length: int = field(default=30, metadata={"help": "longest answer considered, in tokens"})
    version_2_with_negative: bool = field(default=False, metadata={"help": "SQuAD 2.0: a question may have no answer"})
    null_score_diff_threshold: float = field(
        default=0.0, metadata={"help": 'v2.0: answer "" when null score - best non-null score exceeds this'}
    )
    verbose_logging: bool = field(
        default=False, metadata={"help": "print each answer whose text cannot be mapped back"}
    )

    def check_squad_flags(self, default_output_dir: str) -> None:
        for name in ("max_seq_length", "doc_stride", "max_query_length", "n_best_size", "max_answer_length"):
            if getattr(self, name) <= 0:
                raise ValueError(f"--{name} must be positive, got {getattr(self, name)}")
        if self.max_seq_length <= self.max_query_length + 3:
            raise ValueError(
                f"--max_seq_length ({self.max_seq_length}) must exceed --max_query_length ({self.max_query_length}) + 3"
            )
        if self.output_dir is None:
            self.output_dir = default_output_dir

    def tokenizer_setup(
        self, checkpoint: str | None = None, vocab_size: int | None = None, data: tuple = ()
    ) -> Tokenization:
        """The vocabulary and casing for the model at `checkpoint` and the record `data` ((flag, path) pairs), by
        the one policy (`data.vocab.choose_tokenizer`); ValueError before any work for what it refuses."""
        return choose_tokenizer(self.vocab_file, self.do_lower_case, checkpoint, vocab_size, self.check_casing, data)

    def tokenizer(
        self,
        checkpoint: str | None = None,
        vocab_size: int | None = None,
        say: Callable[[str], None] = print,
        data: tuple = (),
    ) -> tuple[WordPieceTokenizer, Tokenization]:
        """Google's SQuAD tokenizer with what `tokenizer_setup` chooses, the decision printed with `say`."""
        choice = self.tokenizer_setup(checkpoint, vocab_size, data)
        say(choice.line())
        if choice.note:
            say(choice.note)
        return squad_tokenizer(choice.vocab_file, choice.do_lower_case), choice


@dataclass
class Npy2JsonConfig(SquadFlags):
    """Write predictions.json (and nbest_predictions.json, null_odds.json) from all_results.npy: the seed's npy2json.py."""

    all_results_file: str = field(
        default="all_results.npy", metadata={"help": "logits per window, from squad-predict (or the seed's script)"}
    )
    bert_config_file: str | None = field(
        default=None, metadata={"help": "accepted for the seed's command lines; unused"}
    )
    do_train: bool = field(default=False, metadata={"help": "accepted for the seed's command lines; unused"})
    do_predict: bool = field(default=True, metadata={"help": "accepted for the seed's command lines; unused"})

    def __post_init__(self) -> None:
        self.check_squad_flags(default_output_dir=".")
        if not self.predict_file:
            raise ValueError("--predict_file is required: the SQuAD json the logits were predicted on")


@dataclass
class SquadModelConfig(runner.SeedConfig, SquadFlags):
    """What squad and squad-predict share: the seed's run_pretraining.py flags (its SQuAD scripts take them too),
    Google's window and answer flags, and a checkpoint to start from."""

    init_checkpoint: str | None = field(
        default=None, metadata={"help": "Google's name for --model_load_dir: bertkit, HF, Google TF or OneFlow"}
    )
    seq_length: int | None = field(
        default=None, metadata={"help": "tokens per window in record files (default: --max_seq_length)"}
    )
    max_predictions_per_seq: int = field(
        default=80, metadata={"help": "accepted for the seed's command lines; unused by SQuAD"}
    )

    def _check_model_flags(self, default_output_dir: str) -> None:
        self.check_squad_flags(default_output_dir)
        self.check_dist_flags()
        # the name the user typed, for errors (the two names are one value from here on)
        self.checkpoint_flag = (
            "--init_checkpoint" if self.init_checkpoint and not self.model_load_dir else "--model_load_dir"
        )
        self.model_load_dir = self.init_checkpoint = runner.one_of(
            ("model_load_dir", "init_checkpoint"), self.model_load_dir, self.init_checkpoint
        )
        self.seq_length = self.seq_length or self.max_seq_length


@dataclass
class SquadPredictConfig(SquadModelConfig):
    """Answer SQuAD questions with a fine-tuned model: the seed's run_squad_predict.py.

    Windows come from --predict_file (a SQuAD json, windows built here) or from --data_dir (the seed's OFRecord
    windows, or Google's eval.tf_record). all_results.npy is written to --output_dir (default: the working folder),
    and predictions.json etc. when a json is given. --iter_num x --batch_size_per_device limits the record windows.
    """

    eval_data_dir: str | None = field(default=None, metadata={"help": "same as --data_dir"})
    quantize: str = field(
        default="none",
        metadata={"help": "int8: the Linear layers in dynamic int8 on the CPU (faster, not exact); none: exact",
                  "choices": QUANTIZE},
    )  # fmt: skip
    # Flags that only training uses: accepted (the seed's predict command lines carry them), hidden from --help.
    cli_hidden: ClassVar[frozenset[str]] = frozenset(
        "learning_rate weight_decay_rate warmup_batches log_every_n_iter loss_print_every_n_iter "
        "model_save_every_n_iter model_save_dir save_last_snapshot log_dir optimizer num_accumulation_steps "
        "max_grad_norm resume eval_every_n_iter stop_check_every_n_iter keep_last_n use_boxing_v2 "
        "max_predictions_per_seq hidden_dropout_prob attention_probs_dropout_prob".split()
    )

    def __post_init__(self) -> None:
        self._check_model_flags(default_output_dir=".")
        self.validate()
        self.data_dir = self.eval_data_dir = runner.one_of(
            ("data_dir", "eval_data_dir"), self.data_dir, self.eval_data_dir
        )
        if not self.data_dir and not self.predict_file:
            raise ValueError("give --predict_file (a SQuAD json) or --data_dir (record windows) to predict on")
        if self.quantize != "none" and self.device == "cuda":
            raise ValueError("--quantize int8 runs on the CPU only: pass --device cpu")


@dataclass
class SquadConfig(SquadModelConfig):
    """Fine-tune BERT on SQuAD, then answer and score: the seed's run_squad.py and Google's run_squad.py.

    Training windows come from --train_file (a SQuAD json; windows built and cached) or --train_data_dir /
    --data_dir (the seed's OFRecord windows, or Google's train.tf_record). --do_predict (or the seed's --do_eval)
    answers --predict_file / --eval_data_dir after training, writes predictions.json etc. to --output_dir, and
    prints exact match and F1 when the json holds answers. --iter_num defaults to `train_steps` (Google's count of
    questions for --num_train_epochs with --train_file, else the seed's count of windows), --warmup_batches to
    --warmup_proportion of it.
    """

    do_train: bool | None = field(default=None, metadata={"help": "fine-tune (default: when training data is given)"})
    do_predict: bool = field(default=False, metadata={"help": "answer --predict_file / --eval_data_dir and score"})
    do_eval: bool = field(default=False, metadata={"help": "the seed's name for --do_predict"})
    train_file: str | None = field(default=None, metadata={"help": "SQuAD json to train on (train-v1.1.json)"})
    train_data_dir: str | None = field(
        default=None, metadata={"help": "record windows to train on (input_ids, ..., start_positions, end_positions)"}
    )
    train_data_part_num: int | None = field(
        default=None, metadata={"help": "part-N files read from --train_data_dir (default: all; --data_dir: 32)"}
    )
    train_example_num: int | None = field(
        default=None,
        metadata={
            "help": "the seed's count of training windows (a note when the data holds another count: all of it is used)"
        },
    )
    num_epochs: float | None = field(
        default=None, metadata={"help": "passes over the training windows: the seed's step count (default 3)"}
    )
    num_train_epochs: float | None = field(
        default=None,
        metadata={"help": "Google's --num_epochs; with --train_file, steps = int(questions / train_batch_size x it)"},
    )
    warmup_proportion: float = field(default=0.1, metadata={"help": "warmup steps as a fraction of --iter_num"})
    train_batch_size: int | None = field(
        default=None, metadata={"help": "Google's global batch: sets --batch_size_per_device to it / processes"}
    )
    eval_data_dir: str | None = field(
        default=None, metadata={"help": "record windows to answer (input_ids, ..., unique_ids), e.g. the seed's dev"}
    )
    eval_data_part_num: int = field(default=0, metadata={"help": "part-N files read from --eval_data_dir (0: all)"})
    eval_example_num: int | None = field(
        default=None,
        metadata={
            "help": "the seed's count of evaluation windows (a note when the data holds another count: all of it is used)"
        },
    )
    eval_batch_size_per_device: int = field(default=64, metadata={"help": "windows per process per prediction batch"})
    predict_batch_size: int | None = field(
        default=None, metadata={"help": "Google's global prediction batch: sets --eval_batch_size_per_device"}
    )
    features_cache_dir: str | None = field(
        default=None,
        metadata={
            "help": "cache of windows built from json, by file hash (default: OUTPUT_DIR/cache with --do_predict, else "
            "LOG_DIR/cache)"
        },
    )
    model: str = field(default="SQuAD", metadata={"help": "the seed's run name, printed in the banner"})
    num_nodes: int | None = field(default=None, metadata={"help": "the seed's later name for --node_num"})
    node_ips: str | None = field(default=None, metadata={"help": "the seed's later name for --node_list"})
    # Google's run_squad keeps everything in --output_dir, the fine-tuned model included: so do these defaults
    model_save_dir: str | None = field(
        default=None, metadata={"help": "directory for snapshots (default: --output_dir)"}
    )
    log_dir: str | None = field(default=None, metadata={"help": "metrics.jsonl goes here (default: --output_dir)"})
    save_last_snapshot: bool = field(
        default=True, metadata={"help": "keep the fine-tuned model: model_save_dir/last_snapshot at the end"}
    )
    # Fine-tuning defaults that differ from pretraining's (Google's README and the seed's run_squad.sh):
    learning_rate: float = field(default=3e-5, metadata={"help": "peak learning rate"})
    batch_size_per_device: int = field(default=32, metadata={"help": "windows per process per micro-step"})
    iter_num: int | None = field(
        default=None,
        metadata={
            "help": "optimizer steps (default: Google's int(questions / train_batch_size x num_train_epochs) with "
            "--train_file and --num_train_epochs, else the seed's epochs x windows / global batch, rounded up)"
        },
    )
    warmup_batches: int | None = field(
        default=None, metadata={"help": "linear warmup steps (default: --warmup_proportion x --iter_num)"}
    )

    def __post_init__(self) -> None:
        self.reconcile_node_names(self.num_nodes, self.node_ips)
        self.num_nodes, self.node_ips = self.node_num, self.node_list
        self._check_model_flags(default_output_dir="squad_output")
        self.model_save_dir = self.model_save_dir or self.output_dir
        self.log_dir = self.log_dir or self.output_dir
        # num_train_epochs stays as given: it selects Google's step count (train_steps)
        self.num_epochs = runner.one_of(("num_epochs", "num_train_epochs"), self.num_epochs, self.num_train_epochs, 3.0)
        if self.data_dir:  # the tutorial's run_squad.py: --data_dir holds the training windows
            self.train_data_dir = runner.one_of(("data_dir", "train_data_dir"), self.data_dir, self.train_data_dir)
            self.train_data_part_num = self.train_data_part_num or self.data_part_num
        processes = self.gpu_num_per_node * self.node_num
        for google, ours in (("train_batch_size", "batch_size_per_device"),
                             ("predict_batch_size", "eval_batch_size_per_device")):  # fmt: skip
            total = getattr(self, google)
            if total is not None:
                if total <= 0 or total % processes:
                    raise ValueError(f"--{google} {total} must be a positive multiple of the {processes} processes")
                setattr(self, ours, total // processes)
        self.do_predict = self.do_eval = self.do_predict or self.do_eval
        if self.do_train is None:
            self.do_train = bool(self.train_file or self.train_data_dir)
        if self.do_train and bool(self.train_file) == bool(self.train_data_dir):
            raise ValueError("--do_train needs one of --train_file (SQuAD json) or --train_data_dir (record windows)")
        if self.do_predict and not (self.predict_file or self.eval_data_dir):
            raise ValueError("--do_predict needs --predict_file (SQuAD json) or --eval_data_dir (record windows)")
        if not (self.do_train or self.do_predict):
            raise ValueError(
                "nothing to do: pass --do_train with --train_file, and/or --do_predict with --predict_file"
            )
        if not 0 <= self.warmup_proportion <= 1:
            raise ValueError(f"--warmup_proportion must be in [0, 1], got {self.warmup_proportion}")
        if self.num_epochs <= 0 or self.eval_batch_size_per_device <= 0:
            raise ValueError("--num_epochs and --eval_batch_size_per_device must be positive")
        self.validate_before_derived()


def train_steps(cfg: SquadConfig, windows: int, questions: int | None, global_batch: int) -> tuple[int, str]:
    """(optimizer steps, the rule that gave them) when --iter_num is not given.

    Google's run_squad.py counts questions: int(questions / train_batch_size * num_train_epochs), used for
    --num_train_epochs with --train_file. The seed's run_squad.py counts windows (a question has one or more):
    ceil(num_epochs * windows / global batch), used for --num_epochs, neither flag, or record windows (whose
    questions are not known). At least 1 step either way.
    """
    if cfg.num_train_epochs is not None and questions is not None:
        steps = int(questions / global_batch * cfg.num_train_epochs)  # Google's expression, in Google's order
        rule = f"int({questions} questions / batch {global_batch} x {cfg.num_train_epochs:g} epochs): Google's count"
    else:
        steps = math.ceil(cfg.num_epochs * windows / global_batch)
        rule = f"ceil({cfg.num_epochs:g} epochs x {windows} windows / batch {global_batch}): the seed's count"
    return max(1, steps), rule


# --- running: model, windows, answers ------------------------------------------------------------------------


def _compact(names: list[str]) -> str:
    """Names with layer indices folded: `bert.layers.{0..11}.attn.qkv.weight` stands for twelve names."""
    groups: dict[str, list[int]] = {}
    for name in names:
        m = re.fullmatch(r"(.*\.layers\.)(\d+)(\..*)", name)
        groups.setdefault(f"{m[1]}{{}}{m[3]}" if m else name, []).append(int(m[2]) if m else 0)
    out = []
    for key, idx in groups.items():
        if "{}" in key:
            contiguous = len(idx) > 1 and idx == list(range(idx[0], idx[0] + len(idx)))
            key = key.replace("{}", f"{{{idx[0]}..{idx[-1]}}}" if contiguous else "{" + ",".join(map(str, idx)) + "}")
        out.append(key)
    return ", ".join(out) or "-"


def load_summary(report: checkpoint.LoadReport) -> str:
    """What a checkpoint gave the QA model: the parameters loaded, those new (the QA head when starting from a
    pretraining checkpoint) and the checkpoint entries left unused (pretraining heads)."""
    step = f", global_step {report.global_step}" if report.global_step is not None else ""
    lines = [f"Restoring model from {report.path} ({report.format} checkpoint{step}):"]
    for what, names in (("loaded", report.loaded), ("new", report.new), ("ignored", report.ignored)):
        lines.append(f"  {what} ({len(names)}): {_compact(names)}")
    if report.skipped:
        lines.append(f"  optimizer and step entries skipped ({len(report.skipped)}): the optimizer starts afresh")
    return "\n".join(lines)


def model_line(c: BertConfig, model: nn.Module) -> str:
    """e.g. '6 layers, hidden 384, 12 heads, FFN 1536, vocab 30522, 22.7M parameters'."""
    return (f"{c.num_hidden_layers} layers, hidden {c.hidden_size}, {c.num_attention_heads} heads, FFN "
            f"{c.intermediate_size}, vocab {c.vocab_size}, {_count(num_parameters(model))} parameters")  # fmt: skip


def _count(n: int) -> str:
    return f"{n / 1e6:.1f}M" if n >= 100_000 else f"{n:,}"


def model_checkpoint(cfg: SquadModelConfig) -> str | None:
    """The checkpoint whose vocabulary and casing count: the snapshot resumed, else --model_load_dir."""
    return cfg.resume if cfg.resume and cfg.resume != "latest" else cfg.model_load_dir or cfg.init_checkpoint


def record_data(cfg: SquadModelConfig) -> tuple[tuple[str, str | None], ...]:
    """(flag, path) of the record windows read, whose recorded vocabulary must be the model's."""
    return tuple((f"--{name}", getattr(cfg, name, None)) for name in ("train_data_dir", "eval_data_dir", "data_dir"))


def build_model(
    cfg: SquadModelConfig, env: dist.DistEnv, say: Callable[[str], None]
) -> tuple[BertForQuestionAnswering, BertConfig, dict | None]:
    """(model on the device, its config, the train state when resuming)."""
    if cfg.resume:
        weights, bert_cfg, resume_state = load_snapshot(cfg.resume, verify=False)  # verified by check()
        model = BertForQuestionAnswering(bert_cfg)
        model.load_state_dict(weights)
        say(f"Resuming from {cfg.resume} at iter {resume_state['step']}.")
        return model.to(env.device), bert_cfg, resume_state
    bert_cfg, source = cfg.model_config()
    uses_json = cfg.predict_file or getattr(cfg, "train_file", None)
    uses_records = cfg.data_dir or cfg.eval_data_dir or getattr(cfg, "train_data_dir", None)
    for flag, length, used in (("max_seq_length", cfg.max_seq_length, uses_json),
                               ("seq_length", cfg.seq_length, uses_records)):  # fmt: skip
        if used and length > bert_cfg.max_position_embeddings:
            raise ValueError(f"--{flag} {length} exceeds the model's max_position_embeddings "
                             f"{bert_cfg.max_position_embeddings}")  # fmt: skip
    torch.manual_seed(cfg.seed)
    model = BertForQuestionAnswering(bert_cfg)
    say(f"{runner.model_source(source)}: {model_line(bert_cfg, model)}")
    if cfg.model_load_dir:
        say(load_summary(checkpoint.load_into(model, cfg.model_load_dir)))
    else:
        say("Init model on demand (random weights)")
    return model.to(env.device), bert_cfg, None


WINDOWS_VERSION = 2  # bump when convert_examples_to_features changes what it makes (2: answers in leading whitespace)


def _cache_key(path: str | Path, tokenizer: WordPieceTokenizer, cfg: SquadFlags, training: bool) -> str:
    h = hashlib.sha256(Path(path).read_bytes())
    h.update("\n".join(tokenizer.inv_vocab).encode())
    params = [WINDOWS_VERSION, tokenizer.do_lower_case, tokenizer.max_input_chars_per_word, cfg.max_seq_length,
              cfg.doc_stride, cfg.max_query_length, training, cfg.version_2_with_negative]  # fmt: skip
    h.update(json.dumps(params).encode())
    return h.hexdigest()[:20]


def json_windows(
    path: str | Path,
    cfg: SquadFlags,
    tokenizer: WordPieceTokenizer,
    training: bool,
    cache_dir: str | Path | None = None,
    env: dist.DistEnv | None = None,
) -> tuple[list[SquadExample], SquadFeatures, list[str]]:
    """(examples, their windows, notes on skipped training questions) of a SQuAD json.

    With `cache_dir`, the windows are kept in `squad-windows-<hash of file, vocabulary and flags>.npz` there: rank 0
    builds and writes it, every rank reads it.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        examples, _ = read_squad_examples(path, training, cfg.version_2_with_negative)
    notes = [str(w.message) for w in caught]

    def build() -> SquadFeatures:
        return convert_examples_to_features(
            examples, tokenizer, cfg.max_seq_length, cfg.doc_stride, cfg.max_query_length, training
        )

    if cache_dir is None:
        return examples, build(), notes
    env = env or dist.DistEnv()
    cache = Path(cache_dir) / f"squad-windows-{_cache_key(path, tokenizer, cfg, training)}.npz"
    if env.is_main and not cache.is_file():
        cache.parent.mkdir(parents=True, exist_ok=True)
        build().save(cache)
    dist.all_reduce_sum(torch.zeros(1, device=env.device), env)  # a barrier: the other ranks wait for the file
    return examples, SquadFeatures.load(cache), notes


def record_windows(path: str, part_num: int | None, seq_length: int, training: bool, progress: bool) -> dict:
    """The seed's OFRecord SQuAD windows (or Google's TFRecord ones) as arrays (N, length) per feature."""
    return read_dataset(path, squad_features(seq_length, training), data_part_num=part_num or 0, progress=progress)


@dataclass
class EvalSet:
    """Windows to answer, (N, T) arrays and their unique ids, and, when a json is given, what answering needs."""

    input_ids: np.ndarray
    input_mask: np.ndarray
    segment_ids: np.ndarray
    unique_id: np.ndarray
    examples: list[SquadExample] | None = None
    features: SquadFeatures | None = None
    dataset: dict | None = None


def eval_set(
    cfg: SquadModelConfig, tokenizer: WordPieceTokenizer, data_dir: str | None, part_num: int | None,
    limit: int | None, say: Callable[[str], None], progress: bool,
) -> EvalSet:  # fmt: skip
    """Windows from record files (the first `limit`, each unique_id once) or built from --predict_file."""
    examples = features = dataset = None
    if cfg.predict_file:
        examples, features, _ = json_windows(cfg.predict_file, cfg, tokenizer, training=False)
        dataset = load_squad(cfg.predict_file)
    if not data_dir:
        return EvalSet(features.input_ids, features.input_mask, features.segment_ids, features.unique_id,
                       examples, features, dataset)  # fmt: skip
    a = record_windows(data_dir, part_num, cfg.seq_length, training=False, progress=progress)
    ids = a["unique_ids"].reshape(-1).astype(np.int64)
    if limit is not None and limit < len(ids):
        say(f"predicting the first {limit} of {len(ids)} windows (--iter_num x batch size)")
        ids = ids[:limit]
    keep = np.sort(np.unique(ids, return_index=True)[1])  # the seed's reader cycles: each window once
    if features is not None:
        common, mine, theirs = np.intersect1d(ids[keep], features.unique_id, return_indices=True)
        T = min(cfg.seq_length, cfg.max_seq_length)
        differ = (a["input_ids"][keep][mine, :T] != features.input_ids[theirs, :T]).any(1).sum()
        if differ:
            say(f"warning: {differ} of {len(common)} windows in {data_dir} differ from those built from "
                f"{cfg.predict_file}: were they made with other flags or another vocabulary?")  # fmt: skip
    return EvalSet(a["input_ids"][keep], a["input_mask"][keep], a["segment_ids"][keep], ids[keep],
                   examples, features, dataset)  # fmt: skip


def score(dataset: dict, preds: SquadPredictions) -> dict | None:
    """The official metrics when the dataset holds answers (v2.0 with null_odds.json as no-answer probabilities,
    as Google's README runs evaluate-v2.0.py); None for a test file without them."""
    questions = [qa for article in dataset["data"] for p in article["paragraphs"] for qa in p["qas"]]
    if not any(qa["answers"] for qa in questions):
        return None
    if preds.null_odds is not None or is_squad_v2(dataset):
        return evaluate_v2(dataset, preds.predictions, preds.null_odds)
    return evaluate_v1(dataset, preds.predictions)


def answer(
    model: nn.Module, es: EvalSet, cfg: SquadModelConfig, tokenizer: WordPieceTokenizer, env: dist.DistEnv,
    batch_size: int, write: bool, say: Callable[[str], None],
) -> dict | None:  # fmt: skip
    """Run the model on the windows; on rank 0 write all_results.npy and (with a json) the prediction files, and
    return the metrics when the json holds answers."""
    start, end = predict_logits(model, es.input_ids, es.input_mask, es.segment_ids, batch_size, env, cfg.precision,
                                progress=env.is_main and write)  # fmt: skip
    if not env.is_main:
        return None
    results = RawResults(es.unique_id, start, end)
    out = Path(cfg.output_dir)
    if write:
        out.mkdir(parents=True, exist_ok=True)
        results.save(out / "all_results.npy")
        say(f"{len(es.unique_id)} results saved to {out / 'all_results.npy'}")
    if es.examples is None:
        return None
    preds = predict_answers(es.examples, es.features, results, tokenizer, cfg.n_best_size, cfg.max_answer_length,
                            cfg.version_2_with_negative, cfg.null_score_diff_threshold, cfg.verbose_logging)  # fmt: skip
    if write:
        say(f"wrote {', '.join(str(p) for p in preds.write(out))}")
    metrics = score(es.dataset, preds)
    if metrics is not None and write:
        say(json.dumps(metrics))
    return metrics


def check_outputs(paths: list[Path], overwrite: bool) -> None:
    """Refuse, before any work, to replace a user's files unless asked to (the one overwrite rule)."""
    refuse_existing(paths, "--overwrite_output_dir", overwrite=overwrite)


def prediction_outputs(cfg: SquadFlags, with_json: bool, with_npy: bool = True) -> list[Path]:
    names = ["all_results.npy"] if with_npy else []
    if with_json:
        names += list(PREDICTION_FILES[: 3 if cfg.version_2_with_negative else 2])
    return [Path(cfg.output_dir) / name for name in names]


def _printer(env: dist.DistEnv) -> Callable[[str], None]:
    return print if env.is_main else (lambda *a, **k: None)


# --- the commands ---------------------------------------------------------------------------------------------


def run_npy2json(cfg: Npy2JsonConfig) -> SquadPredictions:
    """all_results.npy + the SQuAD json it was predicted on -> predictions.json, nbest_predictions.json (+ v2.0
    null_odds.json) in --output_dir; prints exact match and F1 when the json holds answers."""
    check_outputs(prediction_outputs(cfg, with_json=True, with_npy=False), cfg.overwrite_output_dir)
    tokenizer, _ = cfg.tokenizer()
    results = RawResults.load(cfg.all_results_file)
    examples, features, _ = json_windows(cfg.predict_file, cfg, tokenizer, training=False)
    preds = predict_answers(examples, features, results, tokenizer, cfg.n_best_size, cfg.max_answer_length,
                            cfg.version_2_with_negative, cfg.null_score_diff_threshold, cfg.verbose_logging)  # fmt: skip
    print(f"wrote {', '.join(str(p) for p in preds.write(cfg.output_dir))}")
    metrics = score(load_squad(cfg.predict_file), preds)
    if metrics is not None:
        print(json.dumps(metrics))
    return preds


def check_predict(cfg: SquadPredictConfig) -> None:
    """Every user error before any worker starts: inputs there, outputs not about to be replaced."""
    check_inputs(cfg)
    check_tokenizer(cfg)
    check_outputs(prediction_outputs(cfg, with_json=bool(cfg.predict_file)), cfg.overwrite_output_dir)


def run_predict(cfg: SquadPredictConfig) -> dict | None:
    return runner.run(cfg, _run_predict, check_predict)


def _run_predict(cfg: SquadPredictConfig, env: dist.DistEnv) -> dict | None:
    say = _printer(env)
    say(runner.banner(cfg))
    model, bert_cfg, _ = build_model(cfg, env, say)
    model = quantize(model, cfg.quantize)
    tokenizer, _ = cfg.tokenizer(model_checkpoint(cfg), bert_cfg.vocab_size, say, record_data(cfg))
    limit = cfg.iter_num * cfg.batch_size_per_device * env.world_size
    es = eval_set(cfg, tokenizer, cfg.data_dir, cfg.data_part_num, limit, say, env.is_main)
    return answer(model, es, cfg, tokenizer, env, cfg.batch_size_per_device, write=True, say=say)


def check_inputs(cfg: SquadModelConfig) -> None:
    """The files the flags name exist (json, records, checkpoint, config), before any worker starts."""
    for flag in ("train_file", "predict_file", "model_load_dir", "bert_config_file", "vocab_file", "resume"):
        value = getattr(cfg, flag, None)
        if value and value != "latest" and not Path(value).exists():
            name = cfg.checkpoint_flag if flag == "model_load_dir" else f"--{flag}"
            raise ValueError(f"{name} {value}: no such file or directory")
    typed = "--data_dir" if cfg.data_dir else None  # the tutorial's name, set alongside the longer ones
    for flag in ("train_data_dir", "eval_data_dir"):
        if getattr(cfg, flag, None):
            name = typed if getattr(cfg, flag) == cfg.data_dir else f"--{flag}"
            resolve_inputs(getattr(cfg, flag), data_part_num=0, flag=name)


def check_tokenizer(cfg: SquadModelConfig) -> None:
    """The vocabulary and casing against the model's and the data's, before any work (data/vocab.py); after
    `--resume latest` is resolved."""
    own = Path(cfg.resume or "") / "bert_config.json"
    model_cfg = BertConfig.from_json_file(own) if cfg.resume and own.is_file() else cfg.model_config()[0]
    cfg.tokenizer_setup(model_checkpoint(cfg), model_cfg.vocab_size, record_data(cfg))


def check(cfg: SquadConfig) -> None:
    """Every user error before any worker starts; nothing of the user's is replaced unless asked."""
    check_inputs(cfg)
    outputs = prediction_outputs(cfg, with_json=bool(cfg.predict_file)) if cfg.do_predict else []
    if cfg.do_train and not cfg.resume and not cfg.overwrite_output_dir:
        runner.beside_other_tasks(cfg, "squad")  # the tutorial's run into its pretraining folder keeps what is there
    save_dir = Path(cfg.model_save_dir)
    if cfg.do_train and not cfg.resume:
        outputs += existing_snapshots(save_dir)
    check_outputs(outputs, cfg.overwrite_output_dir)
    if cfg.do_train:
        check_writable(cfg.model_save_dir)
        runner.check_resume(cfg)
    check_tokenizer(cfg)


def run(cfg: SquadConfig) -> dict | None:
    return runner.run(cfg, _run, check)


def _run(cfg: SquadConfig, env: dist.DistEnv) -> dict:
    say = _printer(env)
    say(runner.banner(cfg))
    model, bert_cfg, resume_state = build_model(cfg, env, say)
    tokenizer, choice = cfg.tokenizer(model_checkpoint(cfg), bert_cfg.vocab_size, say, record_data(cfg))
    notes, summary, metrics = [], None, None
    es = None
    if cfg.do_predict:  # built first, so that a bad eval file fails before training, not after
        es = eval_set(cfg, tokenizer, cfg.eval_data_dir, cfg.eval_data_part_num, None, say, env.is_main)
        if cfg.eval_example_num is not None and cfg.eval_example_num != len(es.unique_id):
            say(f"note: --eval_example_num is {cfg.eval_example_num}; the data holds {len(es.unique_id)} windows")
    if cfg.do_train:
        if cfg.train_file:
            # in a folder this run writes anyway: no squad_output/ left behind by a run that predicts nothing
            cache = cfg.features_cache_dir or Path(cfg.output_dir if cfg.do_predict else cfg.log_dir) / "cache"
            examples, feats, notes = json_windows(cfg.train_file, cfg, tokenizer, True, cache, env)
            arrays = {"input_ids": feats.input_ids, "input_mask": feats.input_mask, "segment_ids": feats.segment_ids,
                      "start_positions": feats.start_position, "end_positions": feats.end_position}  # fmt: skip
            say(f"{len(feats)} training windows from {len(examples)} questions of {cfg.train_file}")
            questions = len(examples)
            del examples, feats
        else:
            arrays = record_windows(cfg.train_data_dir, cfg.train_data_part_num, cfg.seq_length, True, env.is_main)
            questions = None
        n = len(arrays["input_ids"])
        if cfg.train_example_num is not None and cfg.train_example_num != n:
            say(f"note: --train_example_num is {cfg.train_example_num}; the data holds {n} windows, all used")
        global_batch = cfg.batch_size_per_device * env.world_size * cfg.num_accumulation_steps
        rule = "--iter_num"
        if cfg.iter_num is None:
            cfg.iter_num, rule = train_steps(cfg, n, questions, global_batch)
        if cfg.warmup_batches is None:
            cfg.warmup_batches = int(cfg.iter_num * cfg.warmup_proportion)
        cfg.validate()
        say(f"training: {n} windows, global batch {global_batch}, iter_num {cfg.iter_num} ({rule}), "
            f"warmup_batches {cfg.warmup_batches}")  # fmt: skip
        loader = SquadLoader(arrays, cfg.batch_size_per_device, rank=env.rank, world_size=env.world_size,
                             seed=cfg.seed, limits=id_limits(bert_cfg.vocab_size, bert_cfg.type_vocab_size))  # fmt: skip

        def eval_fn(m: nn.Module) -> dict[str, float]:
            return answer(m, es, cfg, tokenizer, env, cfg.eval_batch_size_per_device, write=False, say=say) or {}

        extras = {"vocab_file": choice.path, "do_lower_case": choice.do_lower_case,
                  "run_config": dataclasses.asdict(cfg)}  # fmt: skip
        summary = fit(model, bert_cfg, squad_loss, loader, cfg, env, eval_fn if es else None, resume_state, say,
                      snapshot_extras=extras)  # fmt: skip
        if not cfg.save_last_snapshot and summary["step"] % cfg.model_save_every_n_iter:
            say("note: the fine-tuned model is not kept (--save_last_snapshot False)")
    if es is not None:
        metrics = answer(model, es, cfg, tokenizer, env, cfg.eval_batch_size_per_device, write=True, say=say)
        if metrics is not None and summary is not None:  # trained in this run: its log ends with this evaluation
            log_final_eval(cfg.log_dir, summary["step"], metrics)
    for note in notes:  # training questions Google's reader skips: their answer is not at answer_start
        say(f"note: {note}")
    return {"train": summary, "eval": metrics}
