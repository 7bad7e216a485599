"""Process-group helpers that can be checked on one machine: node rank discovery, single-process setup."""

from __future__ import annotations

import pytest
import torch

from bertkit.runtime import dist


def test_single_process_needs_no_process_group(monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    env = dist.setup("cpu")
    assert (env.rank, env.world_size, env.is_main) == (0, 1, True)
    t = torch.tensor([1.0, 2.0])
    assert torch.equal(dist.all_reduce_mean(t, env), t) and torch.equal(dist.all_reduce_sum(t, env), t)


def test_num_threads_sets_the_threads_of_a_process(monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    before = torch.get_num_threads()
    try:
        dist.setup("cpu", num_threads=1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ValueError, match="--num_threads"):
        dist.DistFlags(num_threads=-1)


def test_node_rank_is_found_from_local_addresses():
    assert dist.find_node_rank(["198.51.100.1", "127.0.0.1"]) == 1  # 198.51.100.0/24 is reserved for documentation
    assert dist.find_node_rank(["localhost", "198.51.100.7"]) == 0


def test_node_rank_not_found_is_a_clear_error():
    with pytest.raises(ValueError, match="--node_rank"):
        dist.find_node_rank(["198.51.100.1", "198.51.100.2"])


def test_launch_checks_node_list():
    with pytest.raises(ValueError, match="--node_list with 2 hosts"):
        dist.launch(print, [], nproc_per_node=1, node_num=2, node_list=["127.0.0.1"])


def test_cuda_requested_without_gpu():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ValueError, match="no CUDA GPU"):
        dist.pick_device("cuda", 0)
