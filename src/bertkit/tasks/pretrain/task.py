"""The pretraining task: masked-LM + next-sentence-prediction losses.

Reference: google-research/bert `run_pretraining.py` (get_masked_lm_output, get_next_sentence_output) and
OneFlow-Benchmark's BERT `pretrain.py`, which compute the same quantities:
    MLM = sum(weight * cross_entropy) / (sum(weight) + 1e-5) over the P masked slots (pad slots weigh 0),
    NSP = mean cross-entropy over the batch, total = MLM + NSP.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bertkit.checkpoint.snapshot import check_writable, load_snapshot
from bertkit.data.loader import PretrainingLoader, prefetch, resolve_inputs
from bertkit.data.vocab import Tokenization, choose_tokenizer
from bertkit.model.bert import BertForPreTraining
from bertkit.runtime import dist
from bertkit.runtime.config import Composed, Section, positive
from bertkit.train import runner
from bertkit.train.build import build_model, checkpoint_path, model_config, set_unpad
from bertkit.train.config import ModelFlags, OptimizerFlags, RunFlags, TrainingFlags
from bertkit.train.loop import Task, fit


def pretraining_loss(
    mlm_logits: Tensor,
    nsp_logits: Tensor,
    masked_lm_ids: Tensor,
    masked_lm_weights: Tensor,
    next_sentence_labels: Tensor,
    mlm_norm: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """mlm_logits (B, P, V), nsp_logits (B, 2), ids/weights (B, P), labels (B,) -> (total, mlm, nsp).

    mlm_norm: the MLM denominator. None: Google's sum(weight) + 1e-5 of this batch. The training loop passes the
    global batch's (sum(weight) + 1e-5) / (micro-steps x ranks), so that its mean over micro-steps and ranks is
    sum(weight x CE) / sum(weight) over the global batch (equal to Google's in one process with one micro-step).
    """
    # Cross-entropy in fp32 whatever the autocast dtype: log-softmax over 30k logits loses digits in bf16.
    ce = F.cross_entropy(mlm_logits.float().flatten(0, 1), masked_lm_ids.long().flatten(), reduction="none")  # (B*P,)
    w = masked_lm_weights.float().flatten()
    mlm = (ce * w).sum() / (w.sum() + 1e-5 if mlm_norm is None else mlm_norm)
    nsp = F.cross_entropy(nsp_logits.float(), next_sentence_labels.long().flatten())
    return mlm + nsp, mlm, nsp


def random_batch(
    batch_size: int,
    seq_length: int,
    max_predictions_per_seq: int,
    vocab_size: int,
    masked_lm_prob: float = 0.15,
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """A synthetic pretraining batch shaped like the seed's records (for smoke runs and benchmarks).

    Every sequence is full length; round(masked_lm_prob * seq_length), at most max_predictions_per_seq,
    distinct positions (never position 0, the [CLS] slot) are masked; unused slots have weight 0.
    """
    g = generator
    B, T, P = batch_size, seq_length, max_predictions_per_seq
    n_mask = max(1, min(P, round(masked_lm_prob * T)))
    input_ids = torch.randint(5, vocab_size, (B, T), generator=g)
    segment_ids = (torch.arange(T)[None, :] >= torch.randint(1, T, (B, 1), generator=g)).long()
    positions = torch.zeros(B, P, dtype=torch.long)
    positions[:, :n_mask] = torch.stack([torch.randperm(T - 1, generator=g)[:n_mask] + 1 for _ in range(B)])
    positions[:, :n_mask] = positions[:, :n_mask].sort(dim=1).values
    weights = torch.zeros(B, P)
    weights[:, :n_mask] = 1.0
    return {
        "input_ids": input_ids,
        "input_mask": torch.ones(B, T, dtype=torch.long),
        "segment_ids": segment_ids,
        "masked_lm_positions": positions,
        "masked_lm_ids": torch.randint(5, vocab_size, (B, P), generator=g) * (weights > 0),
        "masked_lm_weights": weights,
        "next_sentence_labels": torch.randint(0, 2, (B,), generator=g),
    }


class SyntheticData:
    """Endless synthetic pretraining batches (random_batch), batch i drawn from seed + i mod num_batches.

    The loader protocol of `train.fit`: iterate for batches; state_dict()/load_state_dict() save the position.
    """

    def __init__(self, batch_size: int, seq_length: int, max_predictions_per_seq: int, vocab_size: int,
                 seed: int = 0, num_batches: int = 1 << 30):  # fmt: skip
        self.args = (batch_size, seq_length, max_predictions_per_seq, vocab_size)
        self.seed, self.num_batches, self.pos = seed, num_batches, 0

    def __iter__(self):
        while True:
            g = torch.Generator().manual_seed(self.seed + self.pos % self.num_batches)
            batch = random_batch(*self.args, generator=g)
            self.pos += 1  # before yielding, so state_dict() after k batches says k
            yield batch

    def state_dict(self) -> dict:
        return {"pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.pos = state["pos"]


# --- the `bertkit pretrain` command: the seed's run_pretraining.py ------------------------------------


@dataclass(frozen=True)
class PretrainDataFlags(Section):
    """Pretraining records: where they are, their shape, and the vocabulary they were made with."""

    data_dir: str | None = field(
        default=None, metadata={"resume": "warned", "help": "OFRecord dir (part-N), TFRecord file(s)/glob, or shards"}
    )
    data_part_num: int = field(
        default=32, metadata={"resume": "warned", "help": "number of part-N files used from an OFRecord data_dir"}
    )
    eval_data_dir: str | None = field(default=None, metadata={"help": "held-out data for MLM/NSP accuracy"})
    seq_length: int = field(default=512, metadata={"resume": "refused", "help": "tokens per sequence in the records"})
    max_predictions_per_seq: int = field(
        default=80, metadata={"resume": "refused", "help": "masked slots per sequence in the records"}
    )
    vocab_file: str | None = field(
        default=None,
        metadata={
            "resume": "warned",
            "help": "vocab.txt the data was made with, carried into snapshots (default: the one "
            "create-pretraining-data recorded beside --data_dir)",
        },
    )
    use_boxing_v2: bool | None = field(
        default=None, metadata={"help": "accepted for the seed's command lines; no effect"}
    )

    def __post_init__(self) -> None:
        if not self.data_dir:
            raise ValueError("--data_dir is required (an OFRecord directory, TFRecord files or shards)")
        positive(self, "data_part_num", "seq_length", "max_predictions_per_seq")


@dataclass(frozen=True)
class PretrainTaskFlags(Section):
    """The pretraining task's own flags: its loss's normalisation and a second phase."""

    phase1_snapshot: str | None = field(
        default=None,
        metadata={
            "help": "phase 2 of two-phase pretraining (e.g. seq 512 / 80 predictions after seq 128 / 20): start "
            "from this phase-1 snapshot as NVIDIA DeepLearningExamples' BERT --phase2 does: weights and optimizer "
            "moments carried, the step count, bias correction and schedule restarted at 0 with this run's "
            "--learning_rate, --warmup_batches and --iter_num, --data_dir read from its start"
        },
    )
    mlm_loss_normalization: str = field(
        default="global_batch",
        metadata={
            "help": "global_batch: sum(weight x CE) / sum(weight) over the whole global batch (every micro-step and "
            "rank), so the loss does not depend on how the batch is cut; per_micro_batch: Google's per-core form",
            "choices": ["global_batch", "per_micro_batch"],
        },
    )


@dataclass(frozen=True)
class PretrainConfig(Composed):
    """Pretrain BERT (masked LM + next sentence) on OFRecord / TFRecord / shard data: the seed's run_pretraining.py."""

    model: ModelFlags
    data: PretrainDataFlags
    task: PretrainTaskFlags
    optimizer: OptimizerFlags
    training: TrainingFlags
    run: RunFlags
    dist: dist.DistFlags

    @classmethod
    def resolve(cls, values: dict) -> dict:
        if values["phase1_snapshot"] and values["model_load_dir"]:
            raise ValueError("--phase1_snapshot and --model_load_dir both say where the weights come from: pass one")
        return values


def pretrain_step_loss(
    model: nn.Module, b: dict[str, Tensor], mlm_norm: Tensor | None = None
) -> tuple[Tensor, dict[str, Tensor]]:
    """The step loss of a batch; mlm_norm: the MLM denominator (see pretraining_loss), None for Google's per batch."""
    mlm_logits, nsp_logits = model(b["input_ids"], b["segment_ids"], b["input_mask"], b["masked_lm_positions"])
    total, mlm, nsp = pretraining_loss(
        mlm_logits, nsp_logits, b["masked_lm_ids"], b["masked_lm_weights"], b["next_sentence_labels"], mlm_norm
    )
    return total, {"total_loss": total, "mlm_loss": mlm, "nsp_loss": nsp}


def masked_count(b: dict[str, Tensor]) -> Tensor:
    """sum(masked_lm_weights) of a batch: what the global MLM normalisation adds up over micro-steps and ranks."""
    return b["masked_lm_weights"].float().sum()


@torch.no_grad()
def pretrain_accuracy_counts(model: nn.Module, batches, device: torch.device) -> Tensor:
    """(masked-LM hits weighted by masked_lm_weights, total weight, NSP hits, sequences) over `batches`."""
    counts = torch.zeros(4, dtype=torch.float64)
    for b in batches:
        b = {k: v.to(device) for k, v in b.items()}
        mlm, nsp = model(b["input_ids"], b["segment_ids"], b["input_mask"], b["masked_lm_positions"])
        w = b["masked_lm_weights"].float()
        counts += torch.tensor([
            ((mlm.argmax(-1) == b["masked_lm_ids"]).float() * w).sum().item(), w.sum().item(),
            (nsp.argmax(-1) == b["next_sentence_labels"].flatten()).sum().item(), nsp.shape[0],
        ], dtype=torch.float64)  # fmt: skip
    return counts


def choose_vocab(cfg: PretrainConfig, vocab_size: int) -> Tokenization:
    """What snapshots carry, by the one policy (data/vocab.py): --vocab_file, else the checkpoint continued
    (--resume, --model_load_dir), else the one the data recorded; refused when the data was made with another
    vocabulary than the model's. None known is a warning (the snapshots then carry none)."""
    data = (("--data_dir", cfg.data.data_dir), ("--eval_data_dir", cfg.data.eval_data_dir))
    return choose_tokenizer(cfg.data.vocab_file, None, checkpoint_path(cfg), vocab_size, data=data, fallback=False)


def check(cfg: PretrainConfig) -> PretrainConfig:
    """Every user error before any worker starts (runs once, in the launching process)."""
    resolve_inputs(cfg.data.data_dir, data_part_num=cfg.data.data_part_num, flag="--data_dir")
    if cfg.data.eval_data_dir:
        resolve_inputs(cfg.data.eval_data_dir, data_part_num=cfg.data.data_part_num, flag="--eval_data_dir")
    if cfg.model.model_load_dir and not Path(cfg.model.model_load_dir).exists():
        raise ValueError(f"{cfg.model.checkpoint_flag} {cfg.model.model_load_dir}: no such file or directory")
    cfg.model.model_config()  # reads --bert_config_file or the checkpoint's config: errors now, not later
    check_writable(cfg.run.model_save_dir)
    if cfg.task.phase1_snapshot and not cfg.run.resume:
        _check_phase1(cfg)
    cfg = runner.check_resume(cfg)
    if not cfg.run.resume:
        runner.check_fresh_save_dir(cfg)
    choice = choose_vocab(cfg, model_config(cfg).vocab_size)
    print(choice.line())
    if choice.note:
        print(choice.note)
    return cfg


def _check_phase1(cfg: PretrainConfig) -> None:
    """The phase-1 snapshot exists, is whole, was trained with this --optimizer and takes --seq_length tokens."""
    from bertkit.checkpoint.snapshot import snapshot_extras, verify_snapshot

    d = Path(cfg.task.phase1_snapshot)
    if not (d / "train_state.pt").is_file():
        raise ValueError(f"--phase1_snapshot {d}: not a bertkit snapshot (train_state.pt is missing)")
    verify_snapshot(d)
    saved = snapshot_extras(d)[2] or {}
    if saved.get("optimizer", cfg.optimizer.optimizer) != cfg.optimizer.optimizer:
        raise ValueError(
            f"--phase1_snapshot {d} was trained with --optimizer {saved['optimizer']}; phase 2 carries its moments: "
            f"pass --optimizer {saved['optimizer']}"
        )
    from bertkit.model.config import BertConfig

    positions = BertConfig.from_json_file(d / "bert_config.json").max_position_embeddings
    if cfg.data.seq_length > positions:
        raise ValueError(f"--seq_length {cfg.data.seq_length}: the phase-1 model takes at most {positions} tokens")


def run(cfg: PretrainConfig) -> dict | None:
    return runner.run(cfg, _run, check)


def _run(cfg: PretrainConfig, env: dist.DistEnv) -> dict:
    say = print if env.is_main else (lambda *a, **k: None)
    say(runner.banner(cfg))
    phase1_state = None
    if cfg.task.phase1_snapshot and not cfg.run.resume:  # a second phase: the first's weights (fit: its moments)
        weights, bert_cfg, phase1_state = load_snapshot(cfg.task.phase1_snapshot, verify=False)  # verified by check()
        torch.manual_seed(cfg.training.seed)
        model = set_unpad(BertForPreTraining(bert_cfg), cfg)
        model.load_state_dict(weights)
        model.to(env.device)
        resume_state = None
        say(f"Phase 2 from {cfg.task.phase1_snapshot} (its iter {phase1_state['step']}): weights and optimizer moments "
            f"carried, iter and schedule from 0.")  # fmt: skip
    else:  # --resume, --model_load_dir (the checkpoint's own config), or the size flags: the one builder
        model, bert_cfg, resume_state = build_model(cfg, BertForPreTraining, env, say)

    def open_data(path: str, shuffle: bool) -> PretrainingLoader:
        return PretrainingLoader(
            path, cfg.training.batch_size_per_device, cfg.data.seq_length, cfg.data.max_predictions_per_seq,
            data_part_num=cfg.data.data_part_num, rank=env.rank, world_size=env.world_size, seed=cfg.training.seed,
            shuffle=shuffle, progress=env.is_main, vocab_size=bert_cfg.vocab_size,
            type_vocab_size=bert_cfg.type_vocab_size, cache_dir=Path(cfg.run.log_dir) / "data_cache",
        )  # fmt: skip

    # Record files become memory-mapped shards once (one process per machine builds them, under --log_dir), so
    # each rank's private memory does not grow with the data set.
    loader = prefetch(open_data(cfg.data.data_dir, shuffle=True), env.device)
    eval_fn = None
    if cfg.data.eval_data_dir:
        eval_data = open_data(cfg.data.eval_data_dir, shuffle=False)
        n_batches = max(1, eval_data.num_samples // (cfg.training.batch_size_per_device * env.world_size))

        def eval_fn(m: nn.Module) -> dict[str, float]:
            eval_data.batches = 0  # the same held-out samples every time
            counts = pretrain_accuracy_counts(m, (eval_data.next_batch() for _ in range(n_batches)), env.device)
            hits_mlm, n_mlm, hits_nsp, n_nsp = dist.all_reduce_sum(counts, env).tolist()
            return {"mlm_accuracy": hits_mlm / max(n_mlm, 1.0), "nsp_accuracy": hits_nsp / max(n_nsp, 1.0)}

    global_norm = cfg.task.mlm_loss_normalization == "global_batch"
    choice = choose_vocab(cfg, bert_cfg.vocab_size)
    extras = {"vocab_file": choice.vocab_file, "do_lower_case": choice.do_lower_case,
              "run_config": cfg.flat()}  # fmt: skip
    try:
        task = Task(pretrain_step_loss, loader, masked_count if global_norm else None, eval_fn, extras)
        summary = fit(model, bert_cfg, task, cfg, env, resume_state, print_fn=say,
                      optimizer_state=phase1_state["optimizer"] if phase1_state else None)  # fmt: skip
    finally:
        getattr(loader, "close", lambda: None)()  # the prefetch thread, on a GPU
    return summary
