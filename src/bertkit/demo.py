"""`bertkit demo`: a smoke run that trains a tiny BERT on synthetic batches and prints throughput.

Until the data and pretraining pipeline land (see the README's table), this is the README's first command:
it exercises the model, the pretraining loss and an optimizer step end to end, prints the seed's log line
(`iter N, total_loss: ..., mlm_loss: ..., nsp_loss: ..., speed: ...(sec/batch), ...(sentences/sec)`) and
shows the loss falling as the model memorises a small pool of random batches.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

import torch
from tqdm import tqdm

from bertkit.config import BertConfig
from bertkit.model import BertForPreTraining, num_parameters
from bertkit.pretrain import pretraining_loss, random_batch


@dataclass
class DemoConfig:
    """Train a tiny BERT for a few steps on synthetic batches; print the seed's loss lines and throughput."""

    iter_num: int = field(default=60, metadata={"help": "training iterations"})
    batch_size_per_device: int = field(default=16, metadata={"help": "sequences per batch"})
    seq_length: int = field(default=64, metadata={"help": "tokens per sequence"})
    max_predictions_per_seq: int = field(default=10, metadata={"help": "masked slots per sequence"})
    num_hidden_layers: int = field(default=2, metadata={"help": "encoder layers"})
    num_attention_heads: int = field(default=2, metadata={"help": "attention heads"})
    hidden_size_per_head: int = field(default=32, metadata={"help": "hidden size = heads x this"})
    vocab_size: int = field(default=1000, metadata={"help": "vocabulary size of the synthetic data"})
    num_batches: int = field(default=4, metadata={"help": "distinct synthetic batches, cycled"})
    learning_rate: float = field(default=1e-3, metadata={"help": "AdamW learning rate"})
    loss_print_every_n_iter: int = field(default=10, metadata={"help": "print the loss line every N iterations"})
    precision: str = field(
        default="fp32", metadata={"help": "fp32, or bf16 autocast (fp32 master weights)", "choices": ["fp32", "bf16"]}
    )
    seed: int = field(default=12345, metadata={"help": "random seed"})

    def __post_init__(self) -> None:
        for name in ("iter_num", "batch_size_per_device", "seq_length", "num_batches", "loss_print_every_n_iter"):
            if getattr(self, name) <= 0:
                raise ValueError(f"--{name} must be positive, got {getattr(self, name)}")
        if self.max_predictions_per_seq <= 0 or self.max_predictions_per_seq >= self.seq_length:
            raise ValueError("--max_predictions_per_seq must be in [1, seq_length)")


def run(cfg: DemoConfig) -> dict:
    torch.manual_seed(cfg.seed)
    bert_cfg = BertConfig.from_head_size(
        cfg.num_attention_heads,
        cfg.hidden_size_per_head,
        vocab_size=cfg.vocab_size,
        num_hidden_layers=cfg.num_hidden_layers,
        max_position_embeddings=max(512, cfg.seq_length),
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    model = BertForPreTraining(bert_cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=0.01, fused=True)
    g = torch.Generator().manual_seed(cfg.seed)
    batches = [
        random_batch(
            cfg.batch_size_per_device, cfg.seq_length, cfg.max_predictions_per_seq, cfg.vocab_size, generator=g
        )
        for _ in range(cfg.num_batches)
    ]
    amp = torch.autocast("cpu", dtype=torch.bfloat16) if cfg.precision == "bf16" else contextlib.nullcontext()
    print(
        f"bertkit demo: BERT L{bert_cfg.num_hidden_layers}/H{bert_cfg.hidden_size}/A{bert_cfg.num_attention_heads}, "
        f"{num_parameters(model):,} parameters, {cfg.precision}, {torch.get_num_threads()} threads"
    )
    losses, t_start, t_last = [], time.perf_counter(), time.perf_counter()
    for it in tqdm(range(cfg.iter_num), desc="demo", unit="iter", leave=False):
        b = batches[it % len(batches)]
        with amp:
            mlm_logits, nsp_logits = model(b["input_ids"], b["segment_ids"], b["input_mask"], b["masked_lm_positions"])
        total, mlm, nsp = pretraining_loss(
            mlm_logits, nsp_logits, b["masked_lm_ids"], b["masked_lm_weights"], b["next_sentence_labels"]
        )
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        losses.append((total.item(), mlm.item(), nsp.item()))
        if (it + 1) % cfg.loss_print_every_n_iter == 0:
            now = time.perf_counter()
            sec = (now - t_last) / cfg.loss_print_every_n_iter
            t_last = now
            tqdm.write(
                f"iter {it}, total_loss: {losses[-1][0]:.3f}, mlm_loss: {losses[-1][1]:.3f}, "
                f"nsp_loss: {losses[-1][2]:.3f}, speed: {sec:.3f}(sec/batch), "
                f"{cfg.batch_size_per_device / sec:.3f}(sentences/sec)"
            )
    elapsed = time.perf_counter() - t_start
    speed = cfg.iter_num * cfg.batch_size_per_device / elapsed
    print(f"average speed: {speed:.3f}(sentences/sec)")
    print(f"mlm_loss {losses[0][1]:.3f} -> {losses[-1][1]:.3f} over {cfg.iter_num} iterations")
    return {"losses": losses, "sentences_per_sec": speed}
