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

import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as tdist


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

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


def setup(device: str = "auto") -> DistEnv:
    """Join the process group when launched with several workers; otherwise a single process."""
    if not is_launched_worker() or int(os.environ["WORLD_SIZE"]) == 1:
        return DistEnv(device=pick_device(device, 0))
    rank, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
    dev = pick_device(device, local)
    if dev.type == "cpu":
        # Share the cores among the workers of this machine instead of oversubscribing them.
        per_node = int(os.environ.get("LOCAL_WORLD_SIZE", world))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // per_node))
    if not tdist.is_initialized():
        tdist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return DistEnv(rank=rank, world_size=world, local_rank=local, device=dev)


def teardown() -> None:
    if tdist.is_initialized():
        tdist.destroy_process_group()


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


def local_addresses() -> set[str]:
    names = {"localhost", "127.0.0.1", socket.gethostname(), socket.getfqdn()}
    addrs = set(names)
    for name in names:
        try:
            addrs.update(info[4][0] for info in socket.getaddrinfo(name, None))
        except OSError:
            pass
    return addrs


def find_node_rank(node_list: list[str]) -> int:
    """This machine's index in --node_list, by name or address; an error when it is not there exactly once."""
    mine = local_addresses()
    hits = []
    for i, host in enumerate(node_list):
        try:
            resolved = {info[4][0] for info in socket.getaddrinfo(host, None)}
        except OSError:
            resolved = set()
        if host in mine or resolved & mine:
            hits.append(i)
    if len(hits) != 1:
        raise ValueError(
            f"cannot tell this machine's place in --node_list {','.join(node_list)} "
            f"(matches: {hits or 'none'}); pass --node_rank"
        )
    return hits[0]


def launch(
    entrypoint,
    args: list[str],
    nproc_per_node: int,
    node_num: int = 1,
    node_list: list[str] | None = None,
    node_rank: int | None = None,
    master_port: int = 29500,
) -> None:
    """Start nproc_per_node workers here (and join node_num machines) running entrypoint(args)."""
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
    )
    elastic_launch(config, entrypoint)(args)
