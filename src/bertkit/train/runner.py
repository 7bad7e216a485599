"""The one way every task runs: check, then one process or many, then one exit status.

    bertkit <task> ...  ->  run(cfg, body, check)
        check(cfg)                    once, in the launching process, before any worker starts: every user error
                                      (a flag, a file, an existing output) is a ValueError here, printed once, exit 2
        one process:  body(cfg, env)  in this process
        many:         dist.launch -> each worker: dist.setup, body(cfg, env), dist.teardown
                      (the workers receive the typed config object, never a re-parsed command line)

Exit status, the same for one process and many: 0 done; 2 a user error (printed once); 128 + signal when a
SIGTERM/SIGINT stopped training after a snapshot (143 / 130); 1 when a rank crashed or was killed, with one line
naming the rank. Under `torchrun` the environment is already set and each process just runs its rank's part.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import tempfile
import traceback
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import torch

from bertkit.checkpoint import snapshot
from bertkit.runtime import dist
from bertkit.train.loop import check_world_size

# `cfg` below: a training command's config (runtime/config.py), with the sections run, training, model and dist.
Body = Callable[[object, dist.DistEnv], object]


class Failed(Exception):
    """Some rank failed; the message has been printed, the command exits with exit_code."""

    def __init__(self, exit_code: int, message: str = ""):
        super().__init__(message)
        self.exit_code = exit_code


# The seed prints its arguments in this order; bertkit's additions follow.
SEED_ORDER = (
    "gpu_num_per_node node_num node_list learning_rate weight_decay_rate batch_size_per_device iter_num "
    "warmup_batches log_every_n_iter data_dir data_part_num use_fp16 use_boxing_v2 loss_print_every_n_iter "
    "model_save_every_n_iter model_save_dir save_last_snapshot model_load_dir log_dir seq_length "
    "max_predictions_per_seq num_hidden_layers num_attention_heads max_position_embeddings type_vocab_size "
    "vocab_size attention_probs_dropout_prob hidden_dropout_prob hidden_size_per_head"
).split()


def banner(cfg) -> str:
    """The seed's banner: every argument as `name = value`, the seed's first, then a time stamp. Flags a command
    accepts only so that the seed's command lines parse (its `cli_hidden`) are left out."""
    values = {n: v for n, v in cfg.flat().items() if n not in cfg.cli_hidden}
    ordered = [n for n in SEED_ORDER if n in values] + [n for n in values if n not in SEED_ORDER]
    lines = [
        "=" * 66,
        f"Running bert: num_gpu_per_node = {cfg.dist.gpu_num_per_node}, num_nodes = {cfg.dist.node_num}.",
        "=" * 66,
    ]
    lines += [f"{n} = {values[n]}" for n in ordered]
    lines += ["-" * 66, f"Time stamp: {datetime.now().strftime('%Y-%m-%d-%H:%M:%S')}"]
    return "\n".join(lines)


class Finished(Exception):
    """`--resume latest` found the run already finished: nothing to train; the message says so (exit 0)."""


def snapshot_step(path: Path) -> int | None:
    """The step a complete bertkit snapshot was written at (its train_state.pt), or None when `path` is not one."""
    if not snapshot.is_snapshot(path):
        return None
    try:
        return int(torch.load(path / "train_state.pt", mmap=True, weights_only=True, map_location="cpu")["step"])
    except Exception:  # unreadable: check_resume's own checks say why if it is chosen
        return None


def finished_run(cfg) -> tuple[Path, int, int] | None:
    """(last_snapshot, its step, the run's iter_num) when model_save_dir's last_snapshot ends the run: written at
    or past --iter_num (or, while --iter_num is still to be derived from the data, the iter_num it was run with)."""
    last = Path(cfg.run.model_save_dir) / "last_snapshot"
    step = snapshot_step(last)
    if step is None:
        return None
    target = cfg.training.iter_num
    if target is None:
        target = (snapshot.snapshot_extras(last)[2] or {}).get("iter_num")
    return (last, step, target) if target is not None and step >= target else None


def check_resume(cfg):
    """The config with `--resume latest` resolved (a new config: configs are never changed); refuses a snapshot
    written by another number of processes or with flags a resumed run cannot change, before launch.

    `latest` is the newest complete snapshot (snapshot_N or last_snapshot, by step); Finished when last_snapshot
    already ends the run, so a finished run is said to be finished instead of trained again."""
    resume, save_dir = cfg.run.resume, cfg.run.model_save_dir
    if not resume:
        return cfg
    if resume == "latest":
        done = finished_run(cfg)
        if done is not None:
            last, step, target = done
            raise Finished(f"--resume latest: the run in {save_dir} is finished ({last} at iter {step} "
                           f"of {target}); nothing to train. To train further give a larger --iter_num; to start "
                           f"again, another --model_save_dir")  # fmt: skip
        found = []
        with contextlib.suppress(ValueError):
            found.append(snapshot.latest_snapshot(save_dir))
        last = Path(save_dir) / "last_snapshot"
        if snapshot_step(last) is not None:
            found.append(last)
        if not found:
            print(f"--resume latest: no snapshot in {save_dir} yet; starting from the beginning")
            return cfg.replace(resume=None)
        resume = str(max(found, key=lambda p: snapshot_step(p) or 0))
        cfg = cfg.replace(resume=resume)
        print(f"--resume latest: {resume}")
    state_file = Path(resume) / "train_state.pt"
    if not state_file.is_file():
        raise ValueError(f"--resume {resume}: not a bertkit snapshot (train_state.pt is missing)")
    snapshot.verify_snapshot(resume)  # every file against the manifest, once, before any worker loads it
    try:
        state = torch.load(state_file, mmap=True, weights_only=True, map_location="cpu")
    except Exception as e:
        raise ValueError(f"--resume {resume}: train_state.pt cannot be read ({type(e).__name__}: {e})") from None
    check_world_size(state, cfg.dist.world_size, resume)
    saved = snapshot.snapshot_extras(resume)[2]
    if saved:  # flags that differ from the run that wrote it: refused (sizes, ...) or said which value wins
        for line in snapshot.compare_flags(saved, cfg.flat(), snapshot.resume_rules(cfg)):
            print(line)
    return cfg


def check_fresh_save_dir(cfg) -> None:
    """A run without --resume must not silently train over snapshots of another run (a scheduler's re-launch
    passes --resume latest)."""
    d = Path(cfg.run.model_save_dir)
    found = [p.name for p in snapshot.existing_snapshots(d)]
    if not found:
        return
    done = finished_run(cfg)
    if done is not None:  # --resume latest would only say so: name what does something
        raise ValueError(f"--model_save_dir {d} already holds a finished run ({done[0].name} at iter {done[1]}): "
                         f"give another --model_save_dir, or --resume latest with a larger --iter_num to train "
                         f"further")  # fmt: skip
    raise ValueError(
        f"--model_save_dir {d} already holds {', '.join(found[:3])}{' ...' if len(found) > 3 else ''} of an "
        f"earlier, unfinished run: continue it with --resume latest, or give another --model_save_dir"
    )


def same_task(run_config: dict | None, cfg) -> bool:
    """Whether a snapshot's run_config.json was written by a run of cfg's command (the same flags)."""
    return run_config is not None and set(run_config) == set(cfg.flat())


def beside_other_tasks(cfg, task: str):
    """When --model_save_dir holds another command's snapshots (the tutorial runs SQuAD into its pretraining folder),
    this run's snapshots and log go beside them, in <dir>/<task> (or <task>-2, ... when that is taken): what is
    there is kept, and the line printed says where the new ones go. Returns the config (a new one when moved)."""
    d = Path(cfg.run.model_save_dir)
    found = snapshot.existing_snapshots(d)
    if not found or any(same_task(snapshot.snapshot_extras(p)[2], cfg) for p in found):
        return cfg  # empty, or this command's own snapshots: the usual refusal / --resume applies
    n, sub = 1, d / task
    while snapshot.existing_snapshots(sub):
        n += 1
        sub = d / f"{task}-{n}"
    moved = {"model_save_dir": str(sub)}
    if Path(cfg.run.log_dir) == d:
        moved["log_dir"] = str(sub)
    print(f"{' and '.join('--' + k for k in moved)} {d} hold{'s' if len(moved) == 1 else ''} another run's "
          f"{', '.join(p.name for p in found[:3])}, kept; this run's snapshots go beside them, in {sub}")  # fmt: skip
    return cfg.replace(**moved)


def run(cfg, body: Body, check: Callable | None = None):
    """Check, then run body(cfg, env) here or in the processes --gpu_num_per_node x --node_num asks for; returns
    body's result (None when launched). `check(cfg)` returns the config the workers get (`--resume latest`
    resolved, ...): built once here, in the launching process, and sent to them as it is.

    Raises ValueError (user error), dist.Stopped (signal; snapshot written) or Failed (a rank failed).
    """
    if check is not None:  # under torchrun every rank checks alike (reads only), so every rank fails alike
        try:
            cfg = check(cfg)
        except Finished as e:
            print(e)
            return None
    world = cfg.dist.world_size
    if world > 1 and not dist.is_launched_worker() and no_gpu(cfg):
        print(f"--gpu_num_per_node {cfg.dist.gpu_num_per_node}: no GPU on this machine; {world} CPU processes "
              f"are used instead")  # fmt: skip
    if world > 1 and not dist.is_launched_worker():
        _launch(cfg, body)
        return None
    return _in_process(cfg, body)


def no_gpu(cfg) -> bool:
    """Whether GPUs were asked for (--device auto, the seed's --gpu_num_per_node) on a machine without one."""
    return cfg.training.device == "auto" and not torch.cuda.is_available()


def _in_process(cfg, body: Body):
    stop, threads = dist.StopRequest().install(), torch.get_num_threads()
    try:  # the handler and torch's thread count are this command's: an in-process caller (a test) gets its own back
        result = body(cfg, dist.setup(cfg.training.device, cfg.dist.num_threads, stop))
    finally:
        stop.uninstall()
        torch.set_num_threads(threads)
        dist.teardown()
    if stop.signum:  # a signal after training (while predicting, say): the work is done, but say it was stopped
        raise dist.Stopped(stop.signum, f"stopped by signal {stop.signum} after the work was done")
    return result


def _launch(cfg, body: Body) -> None:
    d = cfg.dist
    node_list = d.node_list.split(",") if d.node_list else None
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    with tempfile.TemporaryDirectory(prefix="bertkit-ranks-") as err_dir:
        try:
            dist.launch(_worker, (cfg, body, err_dir), d.gpu_num_per_node, d.node_num, node_list, d.node_rank,
                        d.master_port, d.shutdown_timeout)  # fmt: skip
        except SignalException as e:  # the agent forwarded it and waited for the workers' snapshot
            signum = int(e.sigval)
            raise dist.Stopped(signum, "") from None
        except ChildFailedError as e:
            raise _failure(e, Path(err_dir)) from None


def _failure(e, err_dir: Path) -> Exception:
    """One exception for the launcher from the workers' exit codes and the lines they left in err_dir.

    The root cause comes first: a rank killed by a signal, else the earliest failure. A Python error's traceback
    (saved by the worker) is printed for the root cause only; the ranks that merely lost their peer say nothing.
    """
    order = sorted(e.failures.items(), key=lambda kv: (kv[1].exitcode >= 0, kv[1].timestamp, kv[0]))
    codes = {rank: f.exitcode for rank, f in order}
    if all(c > 128 for c in codes.values()):  # every rank stopped on the signal; rank 0 printed where to resume
        return dist.Stopped(max(codes.values()) - 128, "")
    lines = {int(p.stem[5:]): p.read_text(encoding="utf-8").strip() for p in err_dir.glob("rank-*.txt")}
    if all(c == 2 for c in codes.values()) and lines:
        return Failed(2, "\n".join(sorted(set(lines.values()))))  # a user error on every rank alike: said once
    # torch reports the first failure it sees, which may be a rank that only lost its peer; a rank that started
    # and left neither an error nor a finish mark was killed from outside (SIGKILL, the out-of-memory killer).
    started = {int(p.name[5:].split(".")[0]) for p in err_dir.glob("rank-*.started")}
    ended = set(lines) | {int(p.name[5:].split(".")[0]) for p in err_dir.glob("rank-*.done")}
    killed = sorted(r for r in started - ended if codes.get(r, -1) < 0)
    root = killed[0] if killed else order[0][0]
    code = codes.get(root, -int(signal.SIGKILL))
    if root in killed and root not in codes:
        head = f"rank {root} was killed (it ended without an error of its own: SIGKILL or the out-of-memory killer)"
    elif code < 0:
        head = f"rank {root} was killed by {signal.Signals(-code).name}"
    elif root in lines:
        head = f"rank {root} failed: {lines[root]}"
    else:
        head = f"rank {root} exited with status {code}"
    trace = err_dir / f"rank-{root}.trace"
    if code >= 0 and trace.is_file():
        print(trace.read_text(encoding="utf-8"), file=sys.stderr, end="")
    others = len(started | set(codes)) - 1
    return Failed(2 if code == 2 else 1, head + (f" ({others} other rank(s) stopped with it)" if others else ""))


def _worker(cfg, body: Body, err_dir: str):
    """One launched process: join, run, and leave an exit status the launcher can read (never a traceback page)."""
    stop = dist.StopRequest(hard_timeout=max(1, cfg.dist.shutdown_timeout - 5)).install()
    rank = int(os.environ.get("RANK", "0"))
    Path(err_dir, f"rank-{rank}.started").touch()
    code, line = 0, None
    try:
        env = dist.setup(cfg.training.device, cfg.dist.num_threads, stop)
        body(cfg, env)
        code = 128 + stop.signum if stop.signum else 0  # signalled after training: done, but stopped
    except dist.Stopped as e:
        code = e.exit_code
        if str(e) and rank == 0:  # every rank stopped together; the launcher has no line of its own to print
            print(f"bertkit: {e}", file=sys.stderr, flush=True)
    except ValueError as e:
        code, line = 2, str(e)
    except Exception as e:  # a bug or a lost peer: the launcher prints the root cause's traceback and one line
        Path(err_dir, f"rank-{rank}.trace").write_text(traceback.format_exc(), encoding="utf-8")
        code, line = 1, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    finally:
        stop.uninstall()
        if code == 0:
            dist.teardown()
    if line is not None:
        Path(err_dir, f"rank-{rank}.txt").write_text(line, encoding="utf-8")
    else:
        Path(err_dir, f"rank-{rank}.done").touch()
    sys.stdout.flush()
    sys.stderr.flush()
    if code:
        os._exit(code)  # no destroy_process_group with peers gone: it could wait on them
    return None
