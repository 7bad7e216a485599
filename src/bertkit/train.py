"""The one training loop (pretraining and fine-tuning plug in a loss function) and its snapshots.

Follows nanoGPT/nanochat's single loop in labelled blocks: learning rate, micro-steps under autocast
(DDP `no_sync` on all but the last), unscale + clip, step, log on rank 0, evaluate and snapshot every N steps.
Everything a resumed run needs (step, optimizer, loss scale, RNG states, data position) is saved with the
weights, so a resumed run equals an uninterrupted one bit for bit on CPU.

A snapshot is a bertkit model directory (model.safetensors + bert_config.json) plus train_state.pt; it is
written under a temporary name and renamed, so a crash during a save never damages the previous one.
"""

from __future__ import annotations

import contextlib
import json
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm import tqdm

from bertkit.config import BertConfig
from bertkit.dist import DistEnv, all_reduce_mean
from bertkit.optim import build_optimizer, learning_rate, set_lr
from bertkit.snapshot import save_snapshot

LossFn = Callable[[nn.Module, dict[str, Tensor]], tuple[Tensor, dict[str, Tensor]]]


@dataclass
class TrainConfig:
    """Flags every training command shares (names and defaults from the seed's run_pretraining.py)."""

    learning_rate: float = field(default=1e-4, metadata={"help": "peak learning rate"})
    weight_decay_rate: float = field(default=0.01, metadata={"help": "decoupled weight decay (not on LayerNorm/bias)"})
    batch_size_per_device: int = field(default=64, metadata={"help": "sequences per process per micro-step"})
    iter_num: int = field(default=1144000, metadata={"help": "total optimizer steps to run"})
    warmup_batches: int = field(default=10000, metadata={"help": "linear warmup steps, then linear decay to 0"})
    log_every_n_iter: int = field(default=1, metadata={"help": "write metrics to log_dir every N steps"})
    loss_print_every_n_iter: int = field(default=10, metadata={"help": "print the loss line every N steps"})
    model_save_every_n_iter: int = field(default=10000, metadata={"help": "write snapshot_{iter} every N steps"})
    model_save_dir: str = field(default="./output/model_save", metadata={"help": "directory for snapshots"})
    save_last_snapshot: bool = field(default=False, metadata={"help": "write model_save_dir/last_snapshot at the end"})
    model_load_dir: str | None = field(default=None, metadata={"help": "initialise weights from this checkpoint"})
    log_dir: str = field(default="./output", metadata={"help": "metrics.jsonl (and TensorBoard events) go here"})
    use_fp16: bool | None = field(default=None, metadata={"help": "the seed's flag: same as --precision fp16"})
    optimizer: str = field(
        default="adam_weight_decay",
        metadata={
            "help": "adam_weight_decay (Google's, no bias correction), adamw (torch, fused) or lamb",
            "choices": ["adam_weight_decay", "adamw", "lamb"],
        },
    )
    num_accumulation_steps: int = field(default=1, metadata={"help": "micro-steps per optimizer step"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "global-norm gradient clipping (0 = off)"})
    precision: str = field(
        default="fp32",
        metadata={
            "help": "fp32, bf16 autocast, or fp16 autocast with loss scaling (CUDA)",
            "choices": ["fp32", "bf16", "fp16"],
        },
    )
    seed: int = field(default=12345, metadata={"help": "seed for init, dropout and data order"})
    resume: str | None = field(default=None, metadata={"help": "continue exactly from this snapshot directory"})
    eval_every_n_iter: int = field(default=0, metadata={"help": "evaluate on eval data every N steps (0 = never)"})
    compile: bool = field(default=False, metadata={"help": "torch.compile the model"})
    device: str = field(default="auto", metadata={"help": "auto, cpu or cuda", "choices": ["auto", "cpu", "cuda"]})

    def validate(self) -> None:
        for name in ("batch_size_per_device", "iter_num", "num_accumulation_steps", "loss_print_every_n_iter",
                     "model_save_every_n_iter", "log_every_n_iter"):  # fmt: skip
            if getattr(self, name) <= 0:
                raise ValueError(f"--{name} must be positive, got {getattr(self, name)}")
        for name in ("learning_rate", "weight_decay_rate", "warmup_batches", "max_grad_norm", "eval_every_n_iter"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name} must not be negative, got {getattr(self, name)}")
        if self.use_fp16:
            self.precision = "fp16"


# --- metrics -------------------------------------------------------------------------------------------


class MetricsLog:
    """metrics.jsonl in log_dir, plus TensorBoard events when tensorboard is installed. Rank 0 only."""

    def __init__(self, log_dir: str, enabled: bool):
        self.file = self.tb = None
        if not enabled:
            return
        Path(log_dir).mkdir(parents=True, exist_ok=True)
        self.file = open(Path(log_dir) / "metrics.jsonl", "a", encoding="utf-8")
        with contextlib.suppress(ImportError):
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(log_dir)

    def write(self, record: dict) -> None:
        if self.file is None:
            return
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.tb is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, int | float):
                    self.tb.add_scalar(k, v, record["step"])

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        if self.tb is not None:
            self.tb.close()


# --- the loop ------------------------------------------------------------------------------------------


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def autocast(precision: str, device: torch.device):
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def fit(
    model: nn.Module,
    bert_cfg: BertConfig,
    loss_fn: LossFn,
    loader,
    cfg: TrainConfig,
    env: DistEnv,
    eval_fn: Callable[[nn.Module], dict[str, float]] | None = None,
    resume_state: dict | None = None,
    print_fn: Callable[[str], None] = print,
) -> dict:
    """Train for cfg.iter_num steps. `loader` yields dict batches and has state_dict()/load_state_dict().

    Returns a summary: per-logged-step losses, average sentences/s, and the final step.
    """
    raw = model
    if cfg.compile:
        model = torch.compile(model)
    if env.world_size > 1:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[env.device.index] if env.device.type == "cuda" else None
        )
    opt = build_optimizer(cfg.optimizer, raw, cfg.learning_rate, cfg.weight_decay_rate)
    use_scaler = cfg.precision == "fp16" and env.device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
    start = 0
    if resume_state is not None:
        opt.load_state_dict(resume_state["optimizer"])
        scaler.load_state_dict(resume_state["scaler"]) if use_scaler and resume_state.get("scaler") else None
        loader.load_state_dict(resume_state["loader"])
        set_rng_state(resume_state["rng"])
        start = resume_state["step"]
    params = [p for p in raw.parameters() if p.requires_grad]
    global_batch = cfg.batch_size_per_device * env.world_size * cfg.num_accumulation_steps
    log = MetricsLog(cfg.log_dir, env.is_main)
    if cfg.precision == "fp16" and not use_scaler and env.is_main:
        print_fn("warning: fp16 without a GPU runs without loss scaling; --precision bf16 is the CPU's mixed precision")
    if cfg.warmup_batches > cfg.iter_num and env.is_main:
        print_fn(
            f"warning: warmup_batches ({cfg.warmup_batches}) > iter_num ({cfg.iter_num}): the peak rate is never reached"
        )

    def snapshot(name: str, step: int) -> None:
        if env.is_main:
            path = Path(cfg.model_save_dir) / name
            print_fn(f"Saving model to {path}")
            state = {"step": step, "optimizer": opt.state_dict(), "scaler": scaler.state_dict() if use_scaler else None,
                     "loader": loader.state_dict(), "rng": rng_state()}  # fmt: skip
            save_snapshot(path, raw, bert_cfg, state)

    # SIGTERM/SIGINT: finish the current step, snapshot, exit cleanly.
    stop = {"signal": None}
    handlers = {}
    if env.is_main or env.world_size == 1:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(ValueError):  # not the main thread
                handlers[sig] = signal.signal(sig, lambda s, f: stop.__setitem__("signal", s))

    history, skipped = [], 0
    model.train()
    it = iter(loader)
    # A progress bar on stderr (rank 0); the seed's log lines go through tqdm.write so they do not tear it.
    bar = tqdm(total=cfg.iter_num, initial=start, desc="train", unit="iter", disable=not env.is_main, leave=False)
    if print_fn is print:
        print_fn = tqdm.write
    t_start = t_window = time.perf_counter()
    step = start
    try:
        for step in range(start, cfg.iter_num):
            # -- learning rate
            lr = learning_rate(step, cfg.learning_rate, cfg.warmup_batches, cfg.iter_num)
            set_lr(opt, lr)
            # -- micro-steps: gradients add up; DDP syncs only on the last one
            sums = None
            for micro in range(cfg.num_accumulation_steps):
                batch = {k: v.to(env.device, non_blocking=True) for k, v in next(it).items()}
                last = micro == cfg.num_accumulation_steps - 1
                sync = contextlib.nullcontext() if last or env.world_size == 1 else model.no_sync()
                with sync:
                    with autocast(cfg.precision, env.device):
                        loss, parts = loss_fn(model, batch)
                    scaler.scale(loss / cfg.num_accumulation_steps).backward()
                names = list(parts)  # e.g. total_loss, mlm_loss, nsp_loss: the seed's order
                stacked = torch.stack([p.detach().float() for p in parts.values()])
                sums = stacked if sums is None else sums + stacked
            # -- unscale, clip, step (fp16: a step with inf/nan gradients is skipped and the scale lowered)
            scaler.unscale_(opt)
            max_norm = cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf")
            grad_norm = nn.utils.clip_grad_norm_(params, max_norm, foreach=True)
            scale_before = scaler.get_scale() if use_scaler else 1.0
            scaler.step(opt)
            scaler.update()
            if use_scaler and scaler.get_scale() < scale_before:
                skipped += 1
            opt.zero_grad(set_to_none=True)
            done = step + 1
            bar.update(1)
            # -- log (rank 0); the losses are the global batch's mean
            if done % cfg.loss_print_every_n_iter == 0 or done % cfg.log_every_n_iter == 0 or done == cfg.iter_num:
                means = all_reduce_mean(sums / cfg.num_accumulation_steps, env).tolist()
                values = dict(zip(names, means, strict=True))
                now = time.perf_counter()
                record = {"step": done, **values, "lr": lr, "grad_norm": float(grad_norm)}
                if use_scaler:
                    record |= {"loss_scale": scaler.get_scale(), "skipped_steps": skipped}
                history.append(record)
                if done % cfg.loss_print_every_n_iter == 0 and env.is_main:
                    dt = (now - t_window) / cfg.loss_print_every_n_iter
                    t_window = now
                    record["sentences_per_sec"] = global_batch / dt
                    losses = ", ".join(f"{k}: {v:.3f}" for k, v in values.items())
                    print_fn(
                        f"iter {step}, {losses}, speed: {dt:.3f}(sec/batch), {global_batch / dt:.3f}(sentences/sec)"
                    )
                if done % cfg.log_every_n_iter == 0:
                    log.write(record)
            # -- evaluate and snapshot
            if eval_fn is not None and cfg.eval_every_n_iter and done % cfg.eval_every_n_iter == 0:
                model.eval()
                metrics = eval_fn(raw)
                model.train()
                if env.is_main:
                    log.write({"step": done, **{f"eval_{k}": v for k, v in metrics.items()}})
                    print_fn(f"eval at iter {step}: " + ", ".join(f"{k}: {v:.4f}" for k, v in metrics.items()))
            if done % cfg.model_save_every_n_iter == 0:
                snapshot(f"snapshot_{done}", done)
            if stop["signal"] is not None:
                snapshot(f"snapshot_{done}", done)
                print_fn(f"stopped by signal {stop['signal']} after iter {step}; resume with --resume")
                break
        else:
            done = cfg.iter_num
        elapsed = time.perf_counter() - t_start
        steps_run = max(1, done - start)
        speed = global_batch * steps_run / elapsed
        if env.is_main:
            print_fn("-" * 66)
            print_fn(f"average speed: {speed:.3f}(sentences/sec)")
            print_fn("-" * 66)
        if cfg.save_last_snapshot and stop["signal"] is None:
            snapshot("last_snapshot", done)
    finally:
        bar.close()
        log.close()
        for sig, h in handlers.items():
            signal.signal(sig, h)
    return {"history": history, "sentences_per_sec": speed, "step": done, "interrupted": stop["signal"] is not None}
