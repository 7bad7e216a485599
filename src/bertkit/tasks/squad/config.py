"""The flags of `bertkit squad`, `squad-predict` and `npy2json`: Google's run_squad.py and the seed's scripts.

Each flag is declared once; where the seed and Google name one thing twice (--data_dir / --train_data_dir,
--num_epochs / --num_train_epochs, --train_batch_size / --batch_size_per_device), both are accepted and must agree.
The commands themselves are in `task.py`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

from bertkit.data.tokenizer import WordPieceTokenizer
from bertkit.data.vocab import CHECK_CASING_HELP, DO_LOWER_CASE_HELP, Tokenization, choose_tokenizer
from bertkit.runtime.precision import QUANTIZE
from bertkit.tasks.squad.data import squad_tokenizer
from bertkit.train import runner

# --- configs: each flag declared once; where the seed and Google name one thing twice, both are accepted --------


@dataclass
class SquadFlags:
    """Google's run_squad.py flags for windows and answers, shared by squad, squad-predict and npy2json."""

    vocab_file: str | None = field(
        default=None,
        metadata={
            "resume": "warned",
            "help": "vocab.txt of the model (default: the checkpoint's, else bert-base-uncased)",
        },
    )
    do_lower_case: bool | None = field(default=None, metadata={"resume": "refused", "help": DO_LOWER_CASE_HELP})
    check_casing: bool = field(default=True, metadata={"help": CHECK_CASING_HELP})
    max_seq_length: int = field(
        default=384, metadata={"resume": "refused", "help": "tokens per window: [CLS] question [SEP] context [SEP]"}
    )
    doc_stride: int = field(
        default=128, metadata={"resume": "refused", "help": "tokens between the starts of a paragraph's windows"}
    )
    max_query_length: int = field(
        default=64, metadata={"resume": "refused", "help": "questions are cut to this many tokens"}
    )
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
    train_file: str | None = field(
        default=None, metadata={"resume": "warned", "help": "SQuAD json to train on (train-v1.1.json)"}
    )
    train_data_dir: str | None = field(
        default=None,
        metadata={
            "resume": "warned",
            "help": "record windows to train on (input_ids, ..., start_positions, end_positions)",
        },
    )
    train_data_part_num: int | None = field(
        default=None,
        metadata={"resume": "warned", "help": "part-N files read from --train_data_dir (default: all; --data_dir: 32)"},
    )
    train_example_num: int | None = field(
        default=None,
        metadata={
            "help": "the seed's count of training windows (a note when the data holds another count: all of it is used)"
        },
    )
    num_epochs: float | None = field(
        default=None,
        metadata={"resume": "warned", "help": "passes over the training windows: the seed's step count (default 3)"},
    )
    num_train_epochs: float | None = field(
        default=None,
        metadata={
            "resume": "warned",
            "help": "Google's --num_epochs; with --train_file, steps = int(questions / train_batch_size x it)",
        },
    )
    warmup_proportion: float = field(
        default=0.1, metadata={"resume": "warned", "help": "warmup steps as a fraction of --iter_num"}
    )
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


def model_checkpoint(cfg: SquadModelConfig) -> str | None:
    """The checkpoint whose vocabulary and casing count: the snapshot resumed, else --model_load_dir."""
    return cfg.resume if cfg.resume and cfg.resume != "latest" else cfg.model_load_dir or cfg.init_checkpoint


def record_data(cfg: SquadModelConfig) -> tuple[tuple[str, str | None], ...]:
    """(flag, path) of the record windows read, whose recorded vocabulary must be the model's."""
    return tuple((f"--{name}", getattr(cfg, name, None)) for name in ("train_data_dir", "eval_data_dir", "data_dir"))
