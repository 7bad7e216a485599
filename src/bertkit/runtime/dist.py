"""Everything about processes and process groups, on PyTorch's own stack (torch.distributed, its elastic
launcher, DDP). The model and the loop never call torch.distributed directly.

The seed's flags map onto torchrun's notions: `--gpu_num_per_node N` is nproc_per_node, `--node_num M` is
nnodes, the first host of `--node_list` is the rendezvous (master) address, and this machine's node rank
is `--node_rank` or found by matching the machine's own addresses against the list. One command starts
everything: when N * M > 1 and we are not already a launched worker, `launch` re-runs the same command line
under `torch.distributed.launcher.elastic_launch`. Under `torchrun` the environment is already set
(RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, ...) and we just join.
On a machine without GPUs, gpu_num_per_node means CPU processes (gloo): that is how multi-process runs are
tested here.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.distributed as tdist

from bertkit.runtime.config import Section, one_of


@dataclass(frozen=True)
class DistFlags(Section):
    """Where the processes run: the seed's flags for torchrun's nproc_per_node, nnodes, node rank and master.

    The processes' section of every training command's config (runtime/config.py)."""

    gpu_num_per_node: int = field(
        default=1, metadata={"help": "processes per machine (GPUs; CPU processes without GPUs)"}
    )
    node_num: int = field(default=1, metadata={"help": "number of machines"})
    node_list: str | None = field(default=None, metadata={"help": "comma-separated hosts; the first is the rendezvous"})
    node_rank: int | None = field(default=None, metadata={"help": "this machine's index in node_list (default: found)"})
    master_port: int = field(default=29500, metadata={"help": "rendezvous port on the first host of node_list"})
    num_threads: int = field(
        default=0,
        metadata={
            "help": "CPU threads per process (0: this machine's cores / its processes). On a machine other jobs keep "
            "busy give 1: OpenMP threads that wait for a descheduled sibling made a step up to 50x slower"
        },
    )
    num_nodes: int | None = field(default=None, metadata={"help": "the fine-tuning scripts' later name for --node_num"})
    node_ips: str | None = field(default=None, metadata={"help": "the fine-tuning scripts' later name for --node_list"})
    shutdown_timeout: int = field(
        default=60,
        metadata={
            "help": "seconds the launcher gives its workers to snapshot and exit after a SIGTERM/SIGINT before it "
            "SIGKILLs them; a scheduler must allow at least this much grace"
        },
    )

    @staticmethod
    def resolve(values: dict) -> dict:
        """--num_nodes / --node_ips (the fine-tuning scripts' names) and --node_num / --node_list: one value each,
        both names set to it; given twice, they must agree."""
        num_nodes, node_num = values["num_nodes"], values["node_num"]
        if num_nodes is not None:  # --node_num has a default (1), so only a different value disagrees
            node_num = one_of(("node_num", "num_nodes"), None if node_num == 1 else node_num, num_nodes)
        node_list = one_of(("node_list", "node_ips"), values["node_list"], values["node_ips"])
        return values | {"node_num": node_num, "num_nodes": node_num, "node_list": node_list, "node_ips": node_list}

    def __post_init__(self) -> None:
        if self.gpu_num_per_node <= 0 or self.node_num <= 0:
            raise ValueError("--gpu_num_per_node and --node_num must be positive")
        if self.node_num > 1 and not self.node_list:
            raise ValueError(f"--node_num {self.node_num} needs --node_list host1,host2,...")
        if self.node_list and len(self.node_list.split(",")) != self.node_num:
            raise ValueError(f"--node_num {self.node_num} needs --node_list with {self.node_num} hosts, "
                             f"got {self.node_list}")  # fmt: skip
        if self.node_rank is not None and not 0 <= self.node_rank < self.node_num:
            raise ValueError(f"--node_rank must be in [0, {self.node_num}), got {self.node_rank}")
        if self.num_threads < 0:
            raise ValueError(f"--num_threads must not be negative, got {self.num_threads}")
        if self.shutdown_timeout < 0:
            raise ValueError(f"--shutdown_timeout must not be negative, got {self.shutdown_timeout}")

    @property
    def world_size(self) -> int:
        return self.gpu_num_per_node * self.node_num


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    stop: StopRequest | None = None  # the signal handler the runner installed for the command (the loop reads it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def is_launched_worker() -> bool:
    """True inside a process started by torchrun / elastic_launch (they set these variables)."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def pick_device(requested: str, local_rank: int) -> torch.device:
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("--device cuda was requested but no CUDA GPU is visible")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    if requested != "cpu":
        raise ValueError(f"--device must be auto, cpu or cuda, got {requested!r}")
    return torch.device("cpu")


def setup(device: str = "auto", num_threads: int = 0, stop: StopRequest | None = None) -> DistEnv:
    """Join the process group when launched with several workers; otherwise a single process. CPU threads:
    `num_threads` when positive, else the cores shared among this machine's workers (one process: torch's own).
    `stop`: the installed signal handler, carried in the DistEnv for the training loop."""
    if not is_launched_worker() or int(os.environ["WORLD_SIZE"]) == 1:
        if num_threads:
            torch.set_num_threads(num_threads)
        return DistEnv(device=pick_device(device, 0), stop=stop)
    rank, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
    dev = pick_device(device, local)
    if dev.type == "cpu":
        # Share the cores among the workers of this machine instead of oversubscribing them.
        per_node = int(os.environ.get("LOCAL_WORLD_SIZE", world))
        torch.set_num_threads(num_threads or max(1, (os.cpu_count() or 1) // per_node))
    if not tdist.is_initialized():
        tdist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return DistEnv(rank=rank, world_size=world, local_rank=local, device=dev, stop=stop)


def teardown() -> None:
    if tdist.is_initialized():
        tdist.destroy_process_group()


def rank_seed(seed: int, rank: int) -> int:
    """The torch seed of `rank` after model init: rank 0 keeps the run's stream (a one-process run is unchanged),
    every other rank gets its own, so that ranks draw different dropout masks on their different samples."""
    return seed if rank == 0 else (seed * 1_000_003 + rank * 7_919) % (2**63 - 1)


def all_gather_object(obj, env: DistEnv) -> list:
    """Every rank's `obj`, in rank order, on every rank (RNG states and data positions for snapshots)."""
    if env.world_size == 1:
        return [obj]
    out = [None] * env.world_size
    tdist.all_gather_object(out, obj)
    return out


def all_reduce_mean(values: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Mean over ranks (for logging the global batch's losses); identity in one process."""
    if env.world_size > 1:
        values = values.clone()
        tdist.all_reduce(values)
        values /= env.world_size
    return values


def all_reduce_sum(values: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Sum over ranks (evaluation counts); identity in one process."""
    if env.world_size > 1:
        values = values.clone()
        tdist.all_reduce(values)
    return values


def all_reduce_max(value: int, env: DistEnv) -> int:
    """The largest of every rank's integer (a decision all ranks take together); no collective in one process."""
    if env.world_size == 1:
        return value
    t = torch.tensor([value], dtype=torch.int64, device=env.device)
    tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
    return int(t.item())


# --- stopping together -------------------------------------------------------------------------------------


class Stopped(Exception):
    """Training stopped on a signal after writing a snapshot; the process exits with 128 + signal."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class StopRequest:
    """SIGTERM/SIGINT set a flag that the loop reads at its stop checks; every rank agrees on it there.

    The first signal only asks for a stop (a snapshot is written, then the process exits with 128 + signal).
    Signals again within `repeat_window` seconds count as the same request: Ctrl-C reaches every worker and the
    elastic agent then forwards it once more. A signal after that window, or `shutdown_timeout` seconds after the
    first with the process still alive, ends the process at once (exit 128 + signal, no snapshot; the previous
    snapshot is whole because snapshots are written atomically).
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, repeat_window: float = 2.0, hard_timeout: float | None = None):
        self.signum = 0
        self.first_at = 0.0
        self.repeat_window = repeat_window
        self.hard_timeout = hard_timeout
        self.previous: dict = {}

    def install(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def uninstall(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous = {}

    def _handle(self, signum: int, frame) -> None:
        now = time.monotonic()
        if not self.signum:
            self.signum, self.first_at = signum, now
            if self.hard_timeout:  # the agent SIGKILLs after its grace anyway; exit first, with our code
                timer = threading.Timer(self.hard_timeout, self._exit_now, (signum, "no snapshot in time"))
                timer.daemon = True
                timer.start()
            return
        if now - self.first_at > self.repeat_window:
            self._exit_now(signum, "signal repeated")

    @staticmethod
    def _exit_now(signum: int, why: str) -> None:
        with contextlib.suppress(Exception):
            print(f"bertkit: {why}: exiting at once (signal {signum})", file=sys.stderr, flush=True)
        os._exit(128 + signum)

    def agreed(self, env: DistEnv) -> int:
        """The signal some rank received (0: none). A collective in several processes: call it on every rank at
        the same step."""
        return all_reduce_max(self.signum, env)


class SharedBatches:
    """The starts of this rank's batches of n rows (rank r: r * B, r * B + W * B, ...), None on a turn where its
    share has ended: every rank takes the same number of turns, len() = ceil(n / (W * B)). Before each turn the
    ranks agree on a stop (`StopRequest.agreed`, a collective with several ranks), so a SIGTERM/SIGINT any rank
    received raises Stopped on every rank at the same turn: "stopped by signal S while {what}: no predictions
    written"."""

    def __init__(self, n: int, batch_size: int, env: DistEnv, what: str):
        self.n, self.batch_size, self.env, self.what = n, batch_size, env, what
        self.stride = batch_size * env.world_size

    def __len__(self) -> int:
        return -(-self.n // self.stride)

    def __iter__(self) -> Iterator[int | None]:
        env = self.env
        for turn in range(len(self)):
            if env.stop is not None and (signum := env.stop.agreed(env)):
                raise Stopped(signum, f"stopped by signal {signum} while {self.what}: no predictions written")
            i = turn * self.stride + env.rank * self.batch_size
            yield i if i < self.n else None


def can_bind(address: str) -> bool:
    """Whether this machine owns `address` (binding a socket to an address not ours fails: EADDRNOTAVAIL)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.bind((address, 0))
        return True
    except OSError:
        return False


def find_node_rank(node_list: list[str]) -> int:
    """This machine's index in --node_list: the host whose address this machine can bind; an error unless exactly
    one matches (e.g. the same machine listed twice, or names that resolve elsewhere)."""
    hits = []
    for i, host in enumerate(node_list):
        try:
            resolved = {info[4][0] for info in socket.getaddrinfo(host, None)}
        except OSError:
            resolved = set()
        if any(can_bind(a) for a in resolved):
            hits.append(i)
    if len(hits) != 1:
        raise ValueError(
            f"cannot tell this machine's place in --node_list {','.join(node_list)} "
            f"(matches: {hits or 'none'}); pass --node_rank"
        )
    return hits[0]


def launch(
    entrypoint,
    args: tuple,
    nproc_per_node: int,
    node_num: int = 1,
    node_list: list[str] | None = None,
    node_rank: int | None = None,
    master_port: int = 29500,
    shutdown_timeout: int = 60,
) -> dict[int, object]:
    """Start nproc_per_node workers here (and join node_num machines) running entrypoint(*args).

    Returns the workers' return values by local rank. Raises torch's ChildFailedError when a worker exits
    non-zero and SignalException when this process gets SIGTERM/SIGINT (after the agent has forwarded the
    signal to the workers and waited up to shutdown_timeout seconds for them).
    """
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if node_num > 1:
        if not node_list or len(node_list) != node_num:
            raise ValueError(f"--node_num {node_num} needs --node_list with {node_num} hosts, got {node_list}")
        rank = find_node_rank(node_list) if node_rank is None else node_rank
        master = node_list[0]
    else:
        rank, master = 0, "127.0.0.1"
    config = LaunchConfig(
        min_nodes=node_num,
        max_nodes=node_num,
        nproc_per_node=nproc_per_node,
        run_id="bertkit",
        rdzv_backend="static",
        rdzv_endpoint=f"{master}:{master_port}",
        rdzv_configs={"rank": rank},
        max_restarts=0,
        monitor_interval=0.5,
        start_method="spawn",
        shutdown_timeout=shutdown_timeout,
    )
    # The agent's own warnings ("Sending process N closing signal ...") would bury the one line that matters.
    # Its errors repeat, as tracebacks, what the runner says in one line.
    # torch gives its modules' loggers their own levels, so each one is set, not just the parent.
    for name in [*logging.root.manager.loggerDict, "torch.distributed.elastic", "torch.multiprocessing"]:
        if name.startswith(("torch.distributed.elastic", "torch.multiprocessing")):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    # Workers that stop by os._exit leave the agent's queues to multiprocessing's resource tracker, which would
    # warn about "leaked semaphore objects" at exit: nothing leaks (the processes are gone); keep the log clean.
    os.environ.setdefault("PYTHONWARNINGS", "ignore:resource_tracker:UserWarning")
    return elastic_launch(config, entrypoint)(*args)
