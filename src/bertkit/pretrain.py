"""The pretraining task: masked-LM + next-sentence-prediction losses.

Reference: google-research/bert `run_pretraining.py` (get_masked_lm_output, get_next_sentence_output) and
OneFlow-Benchmark's BERT `pretrain.py`, which compute the same quantities:
    MLM = sum(weight * cross_entropy) / (sum(weight) + 1e-5) over the P masked slots (pad slots weigh 0),
    NSP = mean cross-entropy over the batch, total = MLM + NSP.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bertkit import dist
from bertkit.config import BertConfig
from bertkit.loader import PretrainingLoader
from bertkit.model import BertForPreTraining
from bertkit.snapshot import check_writable, load_snapshot
from bertkit.train import TrainConfig, fit


def pretraining_loss(
    mlm_logits: Tensor,
    nsp_logits: Tensor,
    masked_lm_ids: Tensor,
    masked_lm_weights: Tensor,
    next_sentence_labels: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    """mlm_logits (B, P, V), nsp_logits (B, 2), ids/weights (B, P), labels (B,) -> (total, mlm, nsp)."""
    # Cross-entropy in fp32 whatever the autocast dtype: log-softmax over 30k logits loses digits in bf16.
    ce = F.cross_entropy(mlm_logits.float().flatten(0, 1), masked_lm_ids.long().flatten(), reduction="none")  # (B*P,)
    w = masked_lm_weights.float().flatten()
    mlm = (ce * w).sum() / (w.sum() + 1e-5)
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


@dataclass
class PretrainConfig(TrainConfig):
    """Pretrain BERT (masked LM + next sentence) on OFRecord / TFRecord / shard data: the seed's run_pretraining.py."""

    gpu_num_per_node: int = field(
        default=1, metadata={"help": "processes per machine (GPUs; CPU processes without GPUs)"}
    )
    node_num: int = field(default=1, metadata={"help": "number of machines"})
    node_list: str | None = field(default=None, metadata={"help": "comma-separated hosts; the first is the rendezvous"})
    node_rank: int | None = field(default=None, metadata={"help": "this machine's index in node_list (default: found)"})
    master_port: int = field(default=29500, metadata={"help": "rendezvous port on the first host of node_list"})
    data_dir: str | None = field(
        default=None, metadata={"help": "OFRecord dir (part-N), TFRecord file(s)/glob, or shards"}
    )
    data_part_num: int = field(default=32, metadata={"help": "number of part-N files used from an OFRecord data_dir"})
    eval_data_dir: str | None = field(default=None, metadata={"help": "held-out data for MLM/NSP accuracy"})
    use_boxing_v2: bool | None = field(
        default=None, metadata={"help": "accepted for the seed's command lines; no effect"}
    )
    bert_config_file: str | None = field(
        default=None, metadata={"help": "Google bert_config.json (instead of size flags)"}
    )
    seq_length: int = field(default=512, metadata={"help": "tokens per sequence in the records"})
    max_predictions_per_seq: int = field(default=80, metadata={"help": "masked slots per sequence in the records"})
    num_hidden_layers: int = field(default=24, metadata={"help": "encoder layers"})
    num_attention_heads: int = field(default=16, metadata={"help": "attention heads per layer"})
    max_position_embeddings: int = field(default=512, metadata={"help": "longest sequence the model takes"})
    type_vocab_size: int = field(default=2, metadata={"help": "token types (segments)"})
    vocab_size: int = field(default=30522, metadata={"help": "WordPiece vocabulary size"})
    attention_probs_dropout_prob: float = field(default=0.1, metadata={"help": "dropout on attention weights"})
    hidden_dropout_prob: float = field(default=0.1, metadata={"help": "dropout on embeddings and layer outputs"})
    hidden_size_per_head: int = field(default=64, metadata={"help": "hidden size = heads x this; FFN = 4 x hidden"})

    def __post_init__(self) -> None:
        self.validate()
        if self.gpu_num_per_node <= 0 or self.node_num <= 0:
            raise ValueError("--gpu_num_per_node and --node_num must be positive")
        if self.node_num > 1 and not self.node_list:
            raise ValueError(f"--node_num {self.node_num} needs --node_list host1,host2,...")
        if not self.data_dir:
            raise ValueError("--data_dir is required (an OFRecord directory, TFRecord files or shards)")

    def bert_config(self) -> BertConfig:
        if self.bert_config_file:
            return BertConfig.from_json_file(self.bert_config_file)
        return BertConfig.from_head_size(
            self.num_attention_heads,
            self.hidden_size_per_head,
            num_hidden_layers=self.num_hidden_layers,
            max_position_embeddings=self.max_position_embeddings,
            type_vocab_size=self.type_vocab_size,
            vocab_size=self.vocab_size,
            attention_probs_dropout_prob=self.attention_probs_dropout_prob,
            hidden_dropout_prob=self.hidden_dropout_prob,
        )


# The seed prints its arguments in this order; bertkit's additions follow.
SEED_ORDER = (
    "gpu_num_per_node node_num node_list learning_rate weight_decay_rate batch_size_per_device iter_num "
    "warmup_batches log_every_n_iter data_dir data_part_num use_fp16 use_boxing_v2 loss_print_every_n_iter "
    "model_save_every_n_iter model_save_dir save_last_snapshot model_load_dir log_dir seq_length "
    "max_predictions_per_seq num_hidden_layers num_attention_heads max_position_embeddings type_vocab_size "
    "vocab_size attention_probs_dropout_prob hidden_dropout_prob hidden_size_per_head"
).split()


def banner(cfg) -> str:
    names = [f.name for f in dataclasses.fields(cfg)]
    ordered = [n for n in SEED_ORDER if n in names] + [n for n in names if n not in SEED_ORDER]
    lines = [
        "=" * 66,
        f"Running bert: num_gpu_per_node = {cfg.gpu_num_per_node}, num_nodes = {cfg.node_num}.",
        "=" * 66,
    ]
    lines += [f"{n} = {getattr(cfg, n)}" for n in ordered]
    lines += ["-" * 66, f"Time stamp: {datetime.now().strftime('%Y-%m-%d-%H:%M:%S')}"]
    return "\n".join(lines)


def to_argv(command: str, cfg) -> list[str]:
    """The command line that rebuilds `cfg` (what the launched workers run)."""
    argv = [command]
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if value is not None:
            argv.append(f"--{f.name}={value}")
    return argv


def pretrain_step_loss(model: nn.Module, b: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
    mlm_logits, nsp_logits = model(b["input_ids"], b["segment_ids"], b["input_mask"], b["masked_lm_positions"])
    total, mlm, nsp = pretraining_loss(
        mlm_logits, nsp_logits, b["masked_lm_ids"], b["masked_lm_weights"], b["next_sentence_labels"]
    )
    return total, {"total_loss": total, "mlm_loss": mlm, "nsp_loss": nsp}


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


def launch_or_run(command: str, cfg: PretrainConfig, body: Callable[[PretrainConfig, dist.DistEnv], dict]):
    """Several processes: re-run this command line in each under dist.launch (returns None here). One: run body."""
    if cfg.gpu_num_per_node * cfg.node_num > 1 and not dist.is_launched_worker():
        from bertkit.cli import main as cli_main

        node_list = cfg.node_list.split(",") if cfg.node_list else None
        dist.launch(cli_main, to_argv(command, cfg), cfg.gpu_num_per_node, cfg.node_num, node_list,
                    cfg.node_rank, cfg.master_port)  # fmt: skip
        return None
    env = dist.setup(cfg.device)
    try:
        return body(cfg, env)
    finally:
        dist.teardown()


def run(cfg: PretrainConfig) -> dict | None:
    return launch_or_run("pretrain", cfg, _run)


def _run(cfg: PretrainConfig, env: dist.DistEnv) -> dict:
    say = print if env.is_main else (lambda *a, **k: None)
    bert_cfg = cfg.bert_config()
    resume_state = None
    if cfg.resume:
        weights, bert_cfg, resume_state = load_snapshot(cfg.resume)
    say(banner(cfg))
    if env.is_main:
        check_writable(cfg.model_save_dir)
    torch.manual_seed(cfg.seed)
    model = BertForPreTraining(bert_cfg)
    if resume_state is not None:
        model.load_state_dict(weights)
        say(f"Resuming from {cfg.resume} at iter {resume_state['step']}.")
    elif cfg.model_load_dir:
        from bertkit.checkpoint import load_into

        report = load_into(model, cfg.model_load_dir)
        say(f"Restoring model from {cfg.model_load_dir}. {report}")
    else:
        say("Init model on demand")
    model.to(env.device)

    def open_data(path: str, shuffle: bool) -> PretrainingLoader:
        return PretrainingLoader(
            path, cfg.batch_size_per_device, cfg.seq_length, cfg.max_predictions_per_seq,
            data_part_num=cfg.data_part_num, rank=env.rank, world_size=env.world_size, seed=cfg.seed,
            shuffle=shuffle, progress=env.is_main,
        )  # fmt: skip

    loader = open_data(cfg.data_dir, shuffle=True)
    eval_fn = None
    if cfg.eval_data_dir:
        eval_data = open_data(cfg.eval_data_dir, shuffle=False)
        n_batches = max(1, eval_data.num_samples // (cfg.batch_size_per_device * env.world_size))

        def eval_fn(m: nn.Module) -> dict[str, float]:
            eval_data.batches = 0  # the same held-out samples every time
            counts = pretrain_accuracy_counts(m, (eval_data.next_batch() for _ in range(n_batches)), env.device)
            hits_mlm, n_mlm, hits_nsp, n_nsp = dist.all_reduce_sum(counts, env).tolist()
            return {"mlm_accuracy": hits_mlm / max(n_mlm, 1.0), "nsp_accuracy": hits_nsp / max(n_nsp, 1.0)}

    summary = fit(model, bert_cfg, pretrain_step_loss, loader, cfg, env, eval_fn, resume_state, print_fn=say)
    return summary
