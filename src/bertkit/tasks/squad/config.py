"""The flags of `bertkit squad`, `squad-predict` and `npy2json`: Google's run_squad.py and the seed's scripts, as
sections (runtime/config.py): the tokenizer (data/vocab.py), windows, answers, records, the model, optimizer,
training, run and processes (train/config.py, runtime/dist.py), and each command's own.

Each flag is declared once; where the seed and Google name one thing twice (--data_dir / --train_data_dir,
--num_epochs / --num_train_epochs, --train_batch_size / --batch_size_per_device), both are accepted and must agree
(`resolve`). The commands themselves are in `task.py`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bertkit.data.tokenizer import WordPieceTokenizer
from bertkit.data.vocab import Tokenization, TokenizerFlags
from bertkit.runtime.config import Composed, Section, one_of, positive
from bertkit.runtime.dist import DistFlags
from bertkit.runtime.precision import QUANTIZE
from bertkit.tasks.squad.data import squad_tokenizer
from bertkit.tasks.squad.records import WindowFlags
from bertkit.train.config import ModelFlags, OptimizerFlags, RunFlags, TrainingFlags

# --- sections -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AnswerFlags(Section):
    """Google's answers: the file to answer, where predictions go, and the answer rules."""

    predict_file: str | None = field(
        default=None, metadata={"help": "SQuAD json to answer (dev-v1.1.json); scored when it holds answers"}
    )
    output_dir: str = field(
        default=".",
        metadata={"help": "folder for predictions.json, nbest_predictions.json, null_odds.json (v2.0) and "
                          "all_results.npy (default: squad_output for squad, the working folder otherwise)"},
    )  # fmt: skip
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

    def __post_init__(self) -> None:
        positive(self, "n_best_size", "max_answer_length")


@dataclass(frozen=True)
class SquadRecordFlags(Section):
    """The seed's record windows (OFRecord part files, or Google's eval.tf_record) and its data flags."""

    data_dir: str | None = field(
        default=None, metadata={"resume": "warned", "help": "OFRecord dir (part-N), TFRecord file(s)/glob, or shards"}
    )
    data_part_num: int = field(
        default=32, metadata={"resume": "warned", "help": "number of part-N files used from an OFRecord data_dir"}
    )
    eval_data_dir: str | None = field(
        default=None, metadata={"help": "record windows to answer (input_ids, ..., unique_ids), e.g. the seed's dev"}
    )
    seq_length: int | None = field(
        default=None,
        metadata={"resume": "refused", "help": "tokens per window in record files (default: --max_seq_length)"},
    )
    max_predictions_per_seq: int = field(
        default=80, metadata={"resume": "refused", "help": "accepted for the seed's command lines; unused by SQuAD"}
    )
    use_boxing_v2: bool | None = field(
        default=None, metadata={"help": "accepted for the seed's command lines; no effect"}
    )


@dataclass(frozen=True)
class SquadDataFlags(SquadRecordFlags):
    """squad's training data (a SQuAD json or record windows) besides the records to answer."""

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
    eval_data_part_num: int = field(default=0, metadata={"help": "part-N files read from --eval_data_dir (0: all)"})
    eval_example_num: int | None = field(
        default=None,
        metadata={
            "help": "the seed's count of evaluation windows (a note when the data holds another count: all of it is used)"
        },
    )
    features_cache_dir: str | None = field(
        default=None,
        metadata={
            "help": "cache of windows built from json, by file hash (default: OUTPUT_DIR/cache with --do_predict, else "
            "LOG_DIR/cache)"
        },
    )


@dataclass(frozen=True)
class SquadTaskFlags(Section):
    """squad's own flags: what to do, epochs, Google's global batches, and the seed's names for shared ones."""

    do_train: bool | None = field(default=None, metadata={"help": "fine-tune (default: when training data is given)"})
    do_predict: bool = field(default=False, metadata={"help": "answer --predict_file / --eval_data_dir and score"})
    do_eval: bool = field(default=False, metadata={"help": "the seed's name for --do_predict"})
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
    eval_batch_size_per_device: int = field(default=64, metadata={"help": "windows per process per prediction batch"})
    predict_batch_size: int | None = field(
        default=None, metadata={"help": "Google's global prediction batch: sets --eval_batch_size_per_device"}
    )
    model: str = field(default="SQuAD", metadata={"help": "the seed's run name, printed in the banner"})

    def __post_init__(self) -> None:
        if not 0 <= self.warmup_proportion <= 1:
            raise ValueError(f"--warmup_proportion must be in [0, 1], got {self.warmup_proportion}")
        positive(self, "num_epochs", "eval_batch_size_per_device")


@dataclass(frozen=True)
class PredictFlags(Section):
    """squad-predict's own flags."""

    quantize: str = field(
        default="none",
        metadata={"help": "int8: the Linear layers in dynamic int8 on the CPU (faster, not exact; on a CPU with "
                          "AMX --precision bf16 is faster still); none: exact",
                  "choices": QUANTIZE},
    )  # fmt: skip


@dataclass(frozen=True)
class Npy2JsonFlags(Section):
    """npy2json's own flags."""

    all_results_file: str = field(
        default="all_results.npy", metadata={"help": "logits per window, from squad-predict (or the seed's script)"}
    )
    bert_config_file: str | None = field(
        default=None, metadata={"help": "accepted for the seed's command lines; unused"}
    )
    do_train: bool = field(default=False, metadata={"help": "accepted for the seed's command lines; unused"})
    do_predict: bool = field(default=True, metadata={"help": "accepted for the seed's command lines; unused"})


# --- the commands' configs --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Npy2JsonConfig(Composed):
    """Write predictions.json (and nbest_predictions.json, null_odds.json) from all_results.npy: the seed's npy2json.py."""

    tokenizer: TokenizerFlags
    windows: WindowFlags
    answers: AnswerFlags
    task: Npy2JsonFlags

    @classmethod
    def resolve(cls, values: dict) -> dict:
        if not values["predict_file"]:
            raise ValueError("--predict_file is required: the SQuAD json the logits were predicted on")
        return values


@dataclass(frozen=True)
class SquadPredictConfig(Composed):
    """Answer SQuAD questions with a fine-tuned model: the seed's run_squad_predict.py.

    Windows come from --predict_file (a SQuAD json, windows built here) or from --data_dir (the seed's OFRecord
    windows, or Google's eval.tf_record). all_results.npy is written to --output_dir (default: the working folder),
    and predictions.json etc. when a json is given. --iter_num x --batch_size_per_device limits the record windows.
    """

    tokenizer: TokenizerFlags
    windows: WindowFlags
    answers: AnswerFlags
    data: SquadRecordFlags
    model: ModelFlags
    task: PredictFlags
    optimizer: OptimizerFlags
    training: TrainingFlags
    run: RunFlags
    dist: DistFlags

    HELP = {"eval_data_dir": "same as --data_dir"}
    # Flags that only training uses: accepted (the seed's predict command lines carry them), hidden from --help.
    cli_hidden = frozenset(
        "learning_rate weight_decay_rate warmup_batches log_every_n_iter loss_print_every_n_iter "
        "model_save_every_n_iter model_save_dir save_last_snapshot log_dir optimizer num_accumulation_steps "
        "max_grad_norm resume eval_every_n_iter stop_check_every_n_iter keep_last_n use_boxing_v2 "
        "max_predictions_per_seq hidden_dropout_prob attention_probs_dropout_prob".split()
    )

    @classmethod
    def resolve(cls, values: dict) -> dict:
        values["seq_length"] = values["seq_length"] or values["max_seq_length"]
        data = one_of(("data_dir", "eval_data_dir"), values["data_dir"], values["eval_data_dir"])
        values |= {"data_dir": data, "eval_data_dir": data}
        if not data and not values["predict_file"]:
            raise ValueError("give --predict_file (a SQuAD json) or --data_dir (record windows) to predict on")
        if values["quantize"] != "none" and values["device"] == "cuda":
            raise ValueError("--quantize int8 runs on the CPU only: pass --device cpu")
        return values


@dataclass(frozen=True)
class SquadConfig(Composed):
    """Fine-tune BERT on SQuAD, then answer and score: the seed's run_squad.py and Google's run_squad.py.

    Training windows come from --train_file (a SQuAD json; windows built and cached) or --train_data_dir /
    --data_dir (the seed's OFRecord windows, or Google's train.tf_record). --do_predict (or the seed's --do_eval)
    answers --predict_file / --eval_data_dir after training, writes predictions.json etc. to --output_dir, and
    prints exact match and F1 when the json holds answers. --iter_num defaults to `train_steps` (Google's count of
    questions for --num_train_epochs with --train_file, else the seed's count of windows), --warmup_batches to
    --warmup_proportion of it.
    """

    tokenizer: TokenizerFlags
    windows: WindowFlags
    answers: AnswerFlags
    data: SquadDataFlags
    model: ModelFlags
    task: SquadTaskFlags
    optimizer: OptimizerFlags
    training: TrainingFlags
    run: RunFlags
    dist: DistFlags

    # Fine-tuning defaults that differ from pretraining's (Google's README and the seed's run_squad.sh); Google's
    # run_squad keeps everything in --output_dir, the fine-tuned model included: so do these defaults.
    DEFAULTS = {"output_dir": "squad_output", "model_save_dir": None, "log_dir": None, "save_last_snapshot": True,
                "learning_rate": 3e-5, "batch_size_per_device": 32, "iter_num": None, "warmup_batches": None}  # fmt: skip
    HELP = {
        "model_save_dir": "directory for snapshots (default: --output_dir)",
        "log_dir": "metrics.jsonl goes here (default: --output_dir)",
        "save_last_snapshot": "keep the fine-tuned model: model_save_dir/last_snapshot at the end",
        "batch_size_per_device": "windows per process per micro-step",
        "iter_num": "optimizer steps (default: Google's int(questions / train_batch_size x num_train_epochs) with "
        "--train_file and --num_train_epochs, else the seed's epochs x windows / global batch, rounded up)",
        "warmup_batches": "linear warmup steps (default: --warmup_proportion x --iter_num)",
    }

    @classmethod
    def resolve(cls, v: dict) -> dict:
        v["seq_length"] = v["seq_length"] or v["max_seq_length"]
        v["model_save_dir"] = v["model_save_dir"] or v["output_dir"]
        v["log_dir"] = v["log_dir"] or v["output_dir"]
        # num_train_epochs stays as given: it selects Google's step count (train_steps)
        v["num_epochs"] = one_of(("num_epochs", "num_train_epochs"), v["num_epochs"], v["num_train_epochs"], 3.0)
        if v["data_dir"]:  # the tutorial's run_squad.py: --data_dir holds the training windows
            v["train_data_dir"] = one_of(("data_dir", "train_data_dir"), v["data_dir"], v["train_data_dir"])
            v["train_data_part_num"] = v["train_data_part_num"] or v["data_part_num"]
        processes = v["gpu_num_per_node"] * v["node_num"]
        for google, ours in (("train_batch_size", "batch_size_per_device"),
                             ("predict_batch_size", "eval_batch_size_per_device")):  # fmt: skip
            total = v[google]
            if total is not None:
                if total <= 0 or total % processes:
                    raise ValueError(f"--{google} {total} must be a positive multiple of the {processes} processes")
                v[ours] = total // processes
        v["do_predict"] = v["do_eval"] = v["do_predict"] or v["do_eval"]
        train_said = v["do_train"] is not None
        if v["do_train"] is None:
            v["do_train"] = bool(v["train_file"] or v["train_data_dir"])
        if v["train_file"] and v["train_data_dir"]:
            given = "--data_dir" if v["data_dir"] else "--train_data_dir"
            raise ValueError(f"--train_file and {given} both name training data: give one")
        if v["do_train"] and not (v["train_file"] or v["train_data_dir"]):
            raise ValueError("--do_train needs one of --train_file (SQuAD json) or --train_data_dir (record windows)")
        if v["model"] != "SQuAD" and Path(v["model"]).exists():
            raise ValueError(f"--model {v['model']}: in squad, --model is the seed's run name (printed in the banner); "
                             f"the model to start from is --init_checkpoint {v['model']}")  # fmt: skip
        if v["do_predict"] and not (v["predict_file"] or v["eval_data_dir"]):
            raise ValueError("--do_predict needs --predict_file (SQuAD json) or --eval_data_dir (record windows)")
        if v["do_predict"] and not v["do_train"] and not (v["model_load_dir"] or v["resume"] or train_said):
            raise ValueError("--do_predict without --do_train answers with the model at --init_checkpoint: give the "
                             "fine-tuned model (e.g. --init_checkpoint squad_output/last_snapshot), or --do_train "
                             "False to answer with a random one, as a baseline")  # fmt: skip
        if not (v["do_train"] or v["do_predict"]):
            raise ValueError(
                "nothing to do: pass --do_train with --train_file, and/or --do_predict with --predict_file"
            )
        return v


def make_tokenizer(
    cfg,
    checkpoint: str | None = None,
    vocab_size: int | None = None,
    say: Callable[[str], None] = print,
    data: tuple = (),
) -> tuple[WordPieceTokenizer, Tokenization]:
    """Google's SQuAD tokenizer with what the one policy chooses (`cfg.tokenizer.choose`: data/vocab.py) for the
    model at `checkpoint` and the record `data` ((flag, path) pairs), the decision printed with `say`."""
    choice = cfg.tokenizer.choose(checkpoint, vocab_size, data)
    say(choice.line())
    if choice.note:
        say(choice.note)
    return squad_tokenizer(choice.vocab_file, choice.do_lower_case), choice


def train_steps(cfg: SquadConfig, windows: int, questions: int | None, global_batch: int) -> tuple[int, str]:
    """(optimizer steps, the rule that gave them) when --iter_num is not given.

    Google's run_squad.py counts questions: int(questions / train_batch_size * num_train_epochs), used for
    --num_train_epochs with --train_file. The seed's run_squad.py counts windows (a question has one or more):
    ceil(num_epochs * windows / global batch), used for --num_epochs, neither flag, or record windows (whose
    questions are not known). At least 1 step either way.
    """
    epochs, google_epochs = cfg.task.num_epochs, cfg.task.num_train_epochs
    if google_epochs is not None and questions is not None:
        steps = int(questions / global_batch * google_epochs)  # Google's expression, in Google's order
        rule = f"int({questions} questions / batch {global_batch} x {google_epochs:g} epochs): Google's count"
    else:
        steps = math.ceil(epochs * windows / global_batch)
        rule = f"ceil({epochs:g} epochs x {windows} windows / batch {global_batch}): the seed's count"
    return max(1, steps), rule


def record_data(cfg: SquadConfig | SquadPredictConfig) -> tuple[tuple[str, str | None], ...]:
    """(flag, path) of the record windows read, whose recorded vocabulary must be the model's."""
    names = ("train_data_dir", "eval_data_dir", "data_dir")
    return tuple((f"--{name}", getattr(cfg.data, name, None)) for name in names)
