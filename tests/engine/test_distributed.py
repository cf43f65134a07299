"""The chunk sampler: reproducible epochs, exact shards, mid-epoch positioning; where a process
stands, and the session that sets the process group up."""

from __future__ import annotations

import pytest
import torch.distributed as dist

from yolo_prune.engine.distributed import (
    ChunkSampler,
    all_reduce_mean,
    dist_info,
    distributed_session,
)
from yolo_prune.errors import ConfigError


def test_ranks_see_the_chunks_one_process_sees():
    one = ChunkSampler(23, batch_size=2, accumulate=2, seed=3)
    ranks = [ChunkSampler(23, batch_size=2, rank=r, world_size=2, seed=3) for r in range(2)]
    for s in (one, *ranks):
        s.set_epoch(4)
    flat = list(one)
    assert one.steps_per_epoch == ranks[0].steps_per_epoch == 5
    # micro-batch 2j of the single process is rank 0's batch j, micro-batch 2j+1 rank 1's
    chunks = [flat[i : i + 2] for i in range(0, len(flat), 2)]
    r0, r1 = list(ranks[0]), list(ranks[1])
    assert chunks[0::2] == [r0[i : i + 2] for i in range(0, len(r0), 2)]
    assert chunks[1::2] == [r1[i : i + 2] for i in range(0, len(r1), 2)]
    assert len(set(flat)) == len(flat) == 20


def test_epochs_differ_and_reproduce_and_skip():
    s = ChunkSampler(16, batch_size=4, seed=0)
    s.set_epoch(0)
    e0 = list(s)
    s.set_epoch(1)
    assert list(s) != e0
    s.set_epoch(0, skip_steps=2)
    assert list(s) == e0[8:] and len(s) == 8


def test_single_process_defaults(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    info = dist_info("cpu")
    assert (info.rank, info.world_size, info.is_main, info.device) == (0, 1, True, "cpu")
    assert all_reduce_mean({"a": 2.0}) == {"a": 2.0}
    with distributed_session("cpu") as inside:  # one process: nothing to set up
        assert inside == info
        assert not dist.is_initialized()


def test_several_processes_without_a_group_are_refused(monkeypatch):
    # torchrun started several processes, but nobody set the group up: library code must not
    # (it is process-wide state), and training on alone would silently train each rank apart.
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match=r"^WORLD_SIZE=2 \(torchrun\) but no process group .*"
                       "distributed_session"):  # fmt: skip
        dist_info("cpu")
