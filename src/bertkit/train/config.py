"""The sections every training command shares (runtime/config.py composes them): the model, the optimizer, the
training steps and the run's outputs. Names and defaults are the seed's run_pretraining.py flags; a fine-tuning
command gives its own defaults in its config's DEFAULTS. The processes' section is runtime/dist.py's DistFlags.

What a resumed run may change is declared on each field, metadata["resume"] (checkpoint/snapshot.py reads it):
"refused" (the model's sizes, batch, seed, optimizer), "warned" (this command line's value wins) or "snapshot"
(the snapshot's value wins: dropout, from its bert_config.json); "size": True marks the size flags.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from bertkit.checkpoint import formats as checkpoint
from bertkit.model.config import BertConfig
from bertkit.runtime.config import Composed, Section, one_of, positive
from bertkit.train.optim import OPTIMIZERS


@dataclass(frozen=True)
class ModelFlags(Section):
    """The model: Google's bert_config.json or the seed's size flags, and a checkpoint to start from."""

    model_load_dir: str | None = field(default=None, metadata={"help": "initialise weights from this checkpoint"})
    init_checkpoint: str | None = field(
        default=None, metadata={"help": "Google's name for --model_load_dir: bertkit, HF, Google TF or OneFlow"}
    )
    bert_config_file: str | None = field(
        default=None, metadata={"help": "Google bert_config.json (instead of size flags)"}
    )
    num_hidden_layers: int = field(default=24, metadata={"resume": "refused", "size": True, "help": "encoder layers"})
    num_attention_heads: int = field(
        default=16, metadata={"resume": "refused", "size": True, "help": "attention heads per layer"}
    )
    max_position_embeddings: int = field(
        default=512, metadata={"resume": "refused", "size": True, "help": "longest sequence the model takes"}
    )
    type_vocab_size: int = field(
        default=2, metadata={"resume": "refused", "size": True, "help": "token types (segments)"}
    )
    vocab_size: int = field(
        default=30522, metadata={"resume": "refused", "size": True, "help": "WordPiece vocabulary size"}
    )
    attention_probs_dropout_prob: float = field(
        default=0.1, metadata={"resume": "snapshot", "size": True, "help": "dropout on attention weights"}
    )
    hidden_dropout_prob: float = field(
        default=0.1, metadata={"resume": "snapshot", "size": True, "help": "dropout on embeddings and layer outputs"}
    )
    hidden_size_per_head: int = field(
        default=64, metadata={"resume": "refused", "size": True, "help": "hidden size = heads x this; FFN = 4 x hidden"}
    )

    @staticmethod
    def resolve(values: dict) -> dict:
        """--init_checkpoint (Google's) and --model_load_dir (the seed's): one value, in --model_load_dir;
        --init_checkpoint keeps what was typed, so that errors name the flag the user gave (`checkpoint_flag`)."""
        given = values["model_load_dir"], values["init_checkpoint"]
        return values | {"model_load_dir": one_of(("model_load_dir", "init_checkpoint"), *given)}

    @property
    def checkpoint_flag(self) -> str:
        """The name the user gave the checkpoint: --init_checkpoint or --model_load_dir."""
        return "--init_checkpoint" if self.init_checkpoint else "--model_load_dir"

    def __post_init__(self) -> None:
        positive(self, "num_hidden_layers", "num_attention_heads", "max_position_embeddings", "type_vocab_size",
                 "vocab_size", "hidden_size_per_head")  # fmt: skip

    def model_config(self) -> tuple[BertConfig, str]:
        """The model's config: --bert_config_file, else the config the checkpoint at --model_load_dir carries
        (Hugging Face's config.json, a snapshot's, OneFlow's), else the seed's size flags; and which of the three
        it was (for `model_source`)."""
        if self.bert_config_file:
            return BertConfig.from_json_file(self.bert_config_file), "--bert_config_file"
        if self.model_load_dir:
            path = Path(self.model_load_dir)
            own = checkpoint.own_config(path, checkpoint.detect_format(path))
            if own is not None:
                return own, "the checkpoint's config"
        sizes = BertConfig.from_head_size(
            self.num_attention_heads,
            self.hidden_size_per_head,
            num_hidden_layers=self.num_hidden_layers,
            max_position_embeddings=self.max_position_embeddings,
            type_vocab_size=self.type_vocab_size,
            vocab_size=self.vocab_size,
            attention_probs_dropout_prob=self.attention_probs_dropout_prob,
            hidden_dropout_prob=self.hidden_dropout_prob,
        )
        return sizes, SIZE_FLAGS


SIZE_FLAGS = "the size flags"


def model_source(source: str) -> str:
    """`model from <source>` for the log, saying when the size flags printed in the banner are not the model's."""
    return f"model from {source}" + ("" if source == SIZE_FLAGS else "; the size flags above are not used")


@dataclass(frozen=True)
class OptimizerFlags(Section):
    """The optimizer and its schedule: linear warmup, then linear decay to 0 at --iter_num (train/optim.py)."""

    optimizer: str = field(
        default="adam_weight_decay",
        metadata={
            "resume": "refused",
            "help": "adam_weight_decay (Google's, no bias correction), adamw (torch, fused) or lamb",
            "choices": list(OPTIMIZERS),
        },
    )
    learning_rate: float = field(default=1e-4, metadata={"resume": "warned", "help": "peak learning rate"})
    weight_decay_rate: float = field(
        default=0.01, metadata={"resume": "warned", "help": "decoupled weight decay (not on LayerNorm/bias)"}
    )
    warmup_batches: int | None = field(
        default=10000, metadata={"resume": "warned", "help": "linear warmup steps, then linear decay to 0"}
    )
    max_grad_norm: float = field(
        default=1.0, metadata={"resume": "warned", "help": "global-norm gradient clipping (0 = off)"}
    )

    def __post_init__(self) -> None:
        positive(self, "learning_rate", "weight_decay_rate", "warmup_batches", "max_grad_norm", zero=True)


@dataclass(frozen=True)
class TrainingFlags(Section):
    """The steps: batch, count, precision, seed, and where they run."""

    batch_size_per_device: int | None = field(
        default=64, metadata={"resume": "refused", "help": "sequences per process per micro-step"}
    )
    iter_num: int | None = field(default=1144000, metadata={"resume": "warned", "help": "total optimizer steps to run"})
    num_accumulation_steps: int = field(
        default=1, metadata={"resume": "warned", "help": "micro-steps per optimizer step"}
    )
    precision: str = field(
        default="fp32",
        metadata={
            "resume": "warned",
            "help": "fp32, bf16 autocast (prediction on a CPU with AMX: the fastest), or fp16 autocast with loss "
            "scaling (CUDA)",
            "choices": ["fp32", "bf16", "fp16"],
        },
    )
    use_fp16: bool | None = field(default=None, metadata={"help": "the seed's flag: same as --precision fp16"})
    seed: int = field(default=12345, metadata={"resume": "refused", "help": "seed for init, dropout and data order"})
    compile: bool = field(default=False, metadata={"help": "torch.compile the model"})
    unpad: bool = field(
        default=False,
        metadata={
            "resume": "warned",
            "help": "for speed when batches carry padding: compute only real tokens (padding dropped before the "
            "encoder, attention within each sequence). Same results as the default padded path without dropout; "
            "with dropout the random masks differ, so the padded path stays the default and the reference for "
            "accuracy comparisons. A SQuAD step measured 2.4x, an SST-2 step 1.45x faster on a CPU (README); no "
            "gain when sequences are full. Evaluation and prediction take this path by default (not with --compile)",
        },
    )
    device: str = field(default="auto", metadata={"help": "auto, cpu or cuda", "choices": ["auto", "cpu", "cuda"]})

    @staticmethod
    def resolve(values: dict) -> dict:
        """The seed's --use_fp16 True is --precision fp16 (ValueError with another --precision)."""
        if not values["use_fp16"]:
            return values
        if values["precision"] not in ("fp32", "fp16"):
            raise ValueError(f"--use_fp16 True and --precision {values['precision']} disagree: give one")
        return values | {"precision": "fp16"}

    def __post_init__(self) -> None:
        positive(self, "batch_size_per_device", "iter_num", "num_accumulation_steps")
        if self.compile and self.unpad:
            raise ValueError("--compile and --unpad True do not combine (the unpadded path's shapes change with "
                             "every batch, so the compiled graph would be rebuilt); give one")  # fmt: skip


@dataclass(frozen=True)
class RunFlags(Section):
    """The run's outputs and cadences: the loss line, metrics, evaluation, snapshots, resuming, stopping."""

    log_every_n_iter: int = field(default=1, metadata={"help": "write metrics to log_dir every N steps"})
    loss_print_every_n_iter: int = field(
        default=10, metadata={"help": "print the loss line every N steps: that step's losses, as the seed's line "
                              "(every step's are in log_dir/metrics.jsonl)"}
    )  # fmt: skip
    model_save_every_n_iter: int = field(default=10000, metadata={"help": "write snapshot_{iter} every N steps"})
    model_save_dir: str | None = field(default="./output/model_save", metadata={"help": "directory for snapshots"})
    save_last_snapshot: bool = field(default=False, metadata={"help": "write model_save_dir/last_snapshot at the end"})
    log_dir: str | None = field(default="./output", metadata={"help": "metrics.jsonl (and TensorBoard events) go here"})
    resume: str | None = field(default=None, metadata={"help": "continue exactly from this snapshot directory"})
    eval_every_n_iter: int = field(default=0, metadata={"help": "evaluate on eval data every N steps (0 = never)"})
    stop_check_every_n_iter: int = field(
        default=10,
        metadata={
            "help": "with several processes, the ranks agree every N steps whether a SIGTERM/SIGINT asked them to "
            "stop (one tiny all-reduce); the longest delay before the snapshot is N steps (one process: every step)"
        },
    )
    keep_last_n: int = field(default=0, metadata={"help": "keep only the newest N snapshot_N directories (0 = all)"})

    def __post_init__(self) -> None:
        positive(self, "log_every_n_iter", "loss_print_every_n_iter", "model_save_every_n_iter",
                 "stop_check_every_n_iter")  # fmt: skip
        positive(self, "eval_every_n_iter", "keep_last_n", zero=True)


def with_schedule(cfg, steps: int, warmup_proportion: float):
    """`cfg` with --iter_num `steps` counted from the data and, when not given, --warmup_batches =
    int(steps x warmup_proportion) (Google's run_squad.py and run_classifier.py): a new config, for the loop and
    the snapshots' run_config.json."""
    warmup = cfg.optimizer.warmup_batches
    return cfg.replace(iter_num=steps, warmup_batches=int(steps * warmup_proportion) if warmup is None else warmup)


@dataclass(frozen=True)
class TrainConfig(Composed):
    """What the loop (`fit`) reads: the optimizer, the steps and the run's outputs. A command's config holds these
    sections among its others; tests and benchmarks that call `fit` directly build this one."""

    optimizer: OptimizerFlags = OptimizerFlags()
    training: TrainingFlags = TrainingFlags()
    run: RunFlags = RunFlags()
