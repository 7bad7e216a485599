"""The one training loop (pretraining and fine-tuning plug in a loss function) and its snapshots.

Follows nanoGPT/nanochat's single loop in labelled blocks: learning rate, micro-steps under autocast
(DDP `no_sync` on all but the last), unscale + clip, step, log on rank 0, evaluate and snapshot every N steps.
Everything a resumed run needs (step, optimizer, loss scale, every rank's RNG state and data position) is saved
with the weights (snapshot.py), so a resumed run equals an uninterrupted one bit for bit on CPU, at any world size
equal to the one that wrote the snapshot.

Sync points, for the GPU: none inside a step (fp16 loss scaling aside). The losses and gradient norm stay on the
device and are reduced once per print window; the ranks agree on a stop every stop_check_every_n_iter steps; a
snapshot gathers every rank's state; evaluation reduces its counts.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm import tqdm

from bertkit.checkpoint.snapshot import prune_snapshots, save_snapshot
from bertkit.model.config import BertConfig
from bertkit.runtime import dist
from bertkit.runtime.dist import DistEnv
from bertkit.runtime.precision import autocast, no_autocast
from bertkit.train.config import TrainConfig
from bertkit.train.metrics import MetricsLog
from bertkit.train.optim import build_optimizer, learning_rate, set_lr

LossFn = Callable[..., tuple[Tensor, dict[str, Tensor]]]


@dataclass(frozen=True)
class Task:
    """What a task plugs into `fit`: its loss, its batches, and (optional) a count, an evaluation, snapshot extras.

    loss(model, batch) -> (loss, named parts); the loop averages it over micro-steps and DDP over ranks.
    batches: endless dict batches (CPU tensors), with state_dict()/load_state_dict() for the data position.
    count (a loss normalised by a count over the global batch, e.g. MLM's sum of masked_lm_weights): the loop sums
    count(batch) over the step's micro-batches and ranks (one all-reduce per step, no host sync) and calls
    loss(model, batch, norm) with norm = that count / (micro-steps x ranks): a loss of sum(weight * CE) / norm
    then averages to sum over the global batch / global count, however the batch is cut.
    evaluate(model) -> metrics, every --eval_every_n_iter steps.
    snapshot_extras: what snapshots carry besides the weights (snapshot.save_snapshot's vocab_file,
    do_lower_case, run_config), so that a fine-tuned snapshot tokenizes as its training did.
    """

    loss: LossFn
    batches: object
    count: Callable[[dict[str, Tensor]], Tensor] | None = None
    evaluate: Callable[[nn.Module], dict[str, float]] | None = None
    snapshot_extras: dict | None = None


# --- the loop ------------------------------------------------------------------------------------------


def rng_state(device: torch.device) -> dict:
    """This process's random state: the CPU generator and, on a GPU, its own device's."""
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and device.type == "cuda":
        cuda = state["cuda"]
        if isinstance(cuda, list | tuple):  # snapshots before per-rank states held every device's
            cuda = cuda[device.index or 0]
        torch.cuda.set_rng_state(cuda, device)


def resume_ranks(resume_state: dict) -> list[dict]:
    """Each rank's {rng, loader} from a snapshot's train state (one entry in snapshots before per-rank states)."""
    if "ranks" in resume_state:
        return resume_state["ranks"]
    return [{"rng": resume_state["rng"], "loader": resume_state["loader"]}]


def check_world_size(resume_state: dict, world_size: int, path: str) -> None:
    """A snapshot continues exactly only with the number of processes that wrote it (each rank's RNG and data)."""
    n = len(resume_ranks(resume_state))
    if n != world_size:
        raise ValueError(
            f"--resume {path} was written by {n} process(es); resume it with {n} (--gpu_num_per_node x "
            f"--node_num), not {world_size}: each rank's random state and data position continue exactly"
        )


def fit(
    model: nn.Module,
    bert_cfg: BertConfig,
    task: Task,
    cfg: TrainConfig,
    env: DistEnv,
    resume_state: dict | None = None,
    print_fn: Callable[[str], None] = print,
    on_log: Callable[[dict], None] | None = None,
    optimizer_state: dict | None = None,
) -> dict:
    """Train `model` (its config `bert_cfg`, for snapshots) on `task` (see Task) for cfg.training.iter_num steps.

    `cfg`: the sections optimizer, training and run (train/config.py): a TrainConfig, or any command's config,
    which holds them among its others.

    on_log(record) receives every step's record (losses are reduced once per print window, not per step). The
    model's encoder path (`unpad`) is the model's own, set where it is built (train/build.py), never here.
    optimizer_state: without resume_state, another run's optimizer state to start from (a second pretraining
    phase): its moments are loaded and every step count set to 0, so bias correction and the schedule restart.

    Returns {"step", "sentences_per_sec", "first", "last"} (first and last logged records). Raises dist.Stopped
    after writing a snapshot when a SIGTERM/SIGINT asked every rank to stop (see dist.StopRequest), and
    ValueError when a snapshot cannot be written (on every rank alike).
    """
    raw, loader, loss_fn, count_fn, eval_fn = model, task.batches, task.loss, task.count, task.evaluate
    if env.rank:  # each rank its own dropout masks (rank 0 keeps the run's stream: one process is unchanged)
        torch.manual_seed(dist.rank_seed(cfg.training.seed, env.rank))
    if cfg.training.compile:
        model = torch.compile(model)
    if env.world_size > 1:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[env.device.index] if env.device.type == "cuda" else None
        )
    opt = build_optimizer(cfg.optimizer.optimizer, raw, cfg.optimizer.learning_rate, cfg.optimizer.weight_decay_rate)
    use_scaler = cfg.training.precision == "fp16" and env.device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
    start = 0
    if resume_state is not None:
        check_world_size(resume_state, env.world_size, "the snapshot")
        mine = resume_ranks(resume_state)[env.rank]
        opt.load_state_dict(resume_state["optimizer"])
        scaler.load_state_dict(resume_state["scaler"]) if use_scaler and resume_state.get("scaler") else None
        loader.load_state_dict(mine["loader"])
        set_rng_state(mine["rng"], env.device)
        start = resume_state["step"]
    elif optimizer_state is not None:  # a second phase (NVIDIA's --phase2): moments carried, step counts from 0
        opt.load_state_dict(optimizer_state)
        for st in opt.state.values():
            if "step" in st:
                st["step"] = st["step"] * 0  # an int or a tensor, kept as it is
    params = [p for p in raw.parameters() if p.requires_grad]
    accum = cfg.training.num_accumulation_steps
    global_batch = cfg.training.batch_size_per_device * env.world_size * accum
    log = MetricsLog(cfg.run.log_dir, env.is_main, start)  # a fresh run replaces an old log: each step once
    if cfg.training.precision == "fp16" and not use_scaler and env.is_main:
        print_fn("warning: fp16 without a GPU runs without loss scaling; --precision bf16 is the CPU's mixed precision")
    if cfg.optimizer.warmup_batches > cfg.training.iter_num and env.is_main:
        print_fn(
            f"warning: warmup_batches ({cfg.optimizer.warmup_batches}) > iter_num ({cfg.training.iter_num}): the peak rate is never reached"
        )
    saved_at: dict[str, int] = {}
    extras = dict(task.snapshot_extras or {})
    if extras.get("vocab_file") is not None:  # read now: a resumed run's vocab.txt sits in a snapshot it may prune
        extras["vocab_file"] = Path(extras["vocab_file"]).read_bytes()

    def snapshot(name: str, step: int) -> None:
        """Every rank takes part (its RNG state and data position); rank 0 writes; a failure fails all ranks."""
        per_rank = dist.all_gather_object({"rng": rng_state(env.device), "loader": loader.state_dict()}, env)
        error = None
        if env.is_main:
            path = Path(cfg.run.model_save_dir) / name
            print_fn(f"Saving model to {path}")
            state = {"step": step, "world_size": env.world_size, "optimizer": opt.state_dict(),
                     "scaler": scaler.state_dict() if use_scaler else None, "ranks": per_rank}  # fmt: skip
            try:
                save_snapshot(path, raw, bert_cfg, state, **extras)
                prune_snapshots(cfg.run.model_save_dir, cfg.run.keep_last_n)
            except (OSError, ValueError) as e:
                error = str(e) if isinstance(e, ValueError) else f"cannot write the snapshot {path}: {e}"
        if env.world_size > 1:
            error = dist.all_gather_object(error, env)[0]
        if error:
            raise ValueError(error)
        saved_at[name] = step

    # SIGTERM/SIGINT: the runner installed the handler for the whole command (env.stop); a bare fit() installs its own.
    stop = env.stop
    own_stop = stop is None
    if own_stop:
        stop = dist.StopRequest().install()

    model.train()
    it = iter(loader)
    # A progress bar only where stderr is a terminal (rank 0); redirected output gets the seed's plain lines.
    show_bar = env.is_main and sys.stderr.isatty()
    bar = tqdm(total=cfg.training.iter_num, initial=start, desc="train", unit="iter", disable=not show_bar, leave=False)
    if print_fn is print and show_bar:
        print_fn = tqdm.write
    window: list[Tensor] = []  # per step: the loss parts and the gradient norm, on the device
    lrs: list[float] = []
    names: list[str] = []
    summary = {"first": None, "last": None}
    t_start = t_window = time.perf_counter()
    done = start

    def flush(print_line: bool) -> None:
        """One all-reduce and one host sync for the whole window: records to metrics.jsonl, the seed's line."""
        nonlocal t_window
        rows = dist.all_reduce_mean(torch.stack(window), env).tolist()  # (steps, parts + 1)
        now = time.perf_counter()
        for i, (row, lr_i) in enumerate(zip(rows, lrs, strict=True)):
            s = done - len(rows) + 1 + i
            record = {"step": s, **dict(zip(names, row[:-1], strict=True)), "lr": lr_i, "grad_norm": row[-1]}
            if i == len(rows) - 1:
                if use_scaler:
                    record |= {"loss_scale": scaler.get_scale(), "skipped_steps": skipped}
                if print_line:
                    dt = (now - t_window) / len(rows)
                    record["sentences_per_sec"] = global_batch / dt
                    losses = ", ".join(f"{k}: {v:.3f}" for k, v in zip(names, row[:-1], strict=True))
                    if env.is_main:
                        print_fn(f"iter {s - 1}, {losses}, speed: {dt:.3f}(sec/batch), "
                                 f"{global_batch / dt:.3f}(sentences/sec)")  # fmt: skip
                    t_window = now
            if s % cfg.run.log_every_n_iter == 0:
                log.write(record)
            summary["first"] = summary["first"] or record
            summary["last"] = record
            if on_log is not None:
                on_log(record)
        window.clear()
        lrs.clear()

    skipped = 0
    try:
        for step in range(start, cfg.training.iter_num):
            # -- learning rate
            lr = learning_rate(step, cfg.optimizer.learning_rate, cfg.optimizer.warmup_batches, cfg.training.iter_num)
            set_lr(opt, lr)
            # -- the step's micro-batches; a global count for losses normalised over the whole global batch
            batches = [{k: v.to(env.device, non_blocking=True) for k, v in next(it).items()} for _ in range(accum)]
            norm = None
            if count_fn is not None:
                local = torch.stack([count_fn(b).float() for b in batches]).sum()
                norm = dist.all_reduce_sum(local, env) / (accum * env.world_size)
            # -- micro-steps: gradients add up; DDP syncs only on the last one
            sums = None
            with autocast(cfg.training.precision, env.device):  # one context: the weights cast once for all micro-steps
                for micro, batch in enumerate(batches):
                    sync = contextlib.nullcontext() if micro == accum - 1 or env.world_size == 1 else model.no_sync()
                    with sync:
                        loss, parts = loss_fn(model, batch) if norm is None else loss_fn(model, batch, norm)
                        with no_autocast(cfg.training.precision, env.device):
                            scaler.scale(loss / accum).backward()
                    names = list(parts)  # e.g. total_loss, mlm_loss, nsp_loss: the seed's order
                    stacked = torch.stack([p.detach().float() for p in parts.values()])
                    sums = stacked if sums is None else sums + stacked
            # -- unscale, clip, step (fp16: a step with inf/nan gradients is skipped and the scale lowered)
            scaler.unscale_(opt)
            max_norm = cfg.optimizer.max_grad_norm if cfg.optimizer.max_grad_norm > 0 else float("inf")
            grad_norm = nn.utils.clip_grad_norm_(params, max_norm, foreach=True)
            scale_before = scaler.get_scale() if use_scaler else 1.0
            scaler.step(opt)
            scaler.update()
            if use_scaler and scaler.get_scale() < scale_before:  # a host sync, fp16 loss scaling only
                skipped += 1
            opt.zero_grad(set_to_none=True)
            done = step + 1
            bar.update(1)
            window.append(torch.cat([sums / accum, grad_norm.detach().float().reshape(1).to(sums.device)]))
            lrs.append(lr)
            # -- log: losses stay on the device until the print cadence
            at_print = done % cfg.run.loss_print_every_n_iter == 0
            if at_print or done == cfg.training.iter_num:
                flush(print_line=at_print)
            # -- evaluate and snapshot
            if eval_fn is not None and cfg.run.eval_every_n_iter and done % cfg.run.eval_every_n_iter == 0:
                model.eval()
                metrics = eval_fn(raw)
                model.train()
                if env.is_main:
                    log.write({"step": done, **{f"eval_{k}": v for k, v in metrics.items()}})
                    print_fn(f"eval at iter {step}: " + ", ".join(f"{k}: {v:.4f}" for k, v in metrics.items()))
            if done % cfg.run.model_save_every_n_iter == 0:
                snapshot(f"snapshot_{done}", done)
            # -- stop together: every rank learns at the same step whether any rank was signalled
            if env.world_size == 1 or done % cfg.run.stop_check_every_n_iter == 0:
                signum = stop.agreed(env)
                if signum:
                    if window:
                        flush(print_line=False)
                    name = f"snapshot_{done}"
                    if saved_at.get(name) != done:
                        snapshot(name, done)
                    path = Path(cfg.run.model_save_dir) / name
                    if env.is_main:
                        print_fn(f"stopped by signal {signum} ({signal.Signals(signum).name}) after iter {step} "
                                 f"({done} steps done): "
                                 f"snapshot {path}; resume with the same command and --resume {path} "
                                 f"(or --resume latest)")  # fmt: skip
                    raise dist.Stopped(signum, "")
        elapsed = time.perf_counter() - t_start
        speed = global_batch * max(1, done - start) / elapsed
        if env.is_main:
            print_fn("-" * 66)
            print_fn(f"average speed: {speed:.3f}(sentences/sec)")
            print_fn("-" * 66)
        if cfg.run.save_last_snapshot:
            snapshot("last_snapshot", done)
        elif env.is_main and done % cfg.run.model_save_every_n_iter:  # the seed's default keeps nothing: say so
            print_fn(f"note: the model after iter {done} is not saved (--save_last_snapshot False); pass "
                     "--save_last_snapshot True to keep it")  # fmt: skip
    finally:
        bar.close()
        log.close()
        if own_stop:
            stop.uninstall()
    return {"step": done, "sentences_per_sec": speed, **summary}
