"""Distributed data parallel as ``torchrun`` sets it up, and a sampler that shards exactly.

Launch with ``torchrun --nproc_per_node=N`` (multi-node: ``--nnodes``, ``--node_rank`` and a
``--rdzv_endpoint``, as torchrun documents); :func:`init_distributed` reads the environment it
sets. Gloo on CPU, NCCL on GPU. Only rank 0 writes files; figures are averaged over ranks.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in a (possibly one-process) run."""

    rank: int  # global rank, 0..world_size-1
    world_size: int  # number of processes
    local_rank: int  # rank on this machine (picks the GPU)
    device: str  # torch device of this process

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str = "cpu") -> DistInfo:
    """Join the process group ``torchrun`` describes in the environment, if any.

    Args:
        device: ``"cpu"`` (gloo) or ``"cuda"`` (NCCL, one GPU per local rank).

    Returns:
        The process's place; a single process (no ``WORLD_SIZE``) gets rank 0 of 1.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(0, 1, 0, device)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    logger.info("rank %d of %d on %s", rank, world, device)
    return DistInfo(rank, world, local, device)


def finish_distributed() -> None:
    """Wait for every rank, then leave the process group (a no-op in a single process).

    Ranks that exit while another still talks to them can abort inside gloo (seen as SIGABRT of
    one rank at the end of a run); leaving together avoids it.
    """
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def all_reduce_mean(values: dict[str, float]) -> dict[str, float]:
    """The mean of each figure over all ranks (unchanged in a single process)."""
    if not (dist.is_available() and dist.is_initialized()) or not values:
        return dict(values)
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    dist.all_reduce(t)
    t /= dist.get_world_size()
    return dict(zip(keys, t.tolist(), strict=True))


class ChunkSampler(Sampler[int]):
    """Shuffled, sharded indices in whole micro-batches, reproducible from ``(seed, epoch)``.

    Each epoch draws one permutation of the dataset and cuts it into chunks of ``batch_size``;
    chunk ``c`` goes to rank ``c % world_size``. So ``N`` ranks with ``accumulate`` ``k`` see,
    micro-batch by micro-batch, exactly the chunks one process with ``accumulate`` ``N * k``
    sees, and the gradients agree. Only whole optimizer steps are yielded (the remainder of an
    epoch is left out), and :meth:`set_position` skips the steps already taken when a run
    resumes in mid-epoch.

    Args:
        length: dataset size.
        batch_size: images per micro-batch per process.
        accumulate: micro-batches per optimizer step.
        rank: this process's rank.
        world_size: number of processes.
        seed: base seed of the shuffle.
        shuffle: draw a permutation (else dataset order).
    """

    def __init__(
        self,
        length: int,
        *,
        batch_size: int,
        accumulate: int = 1,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        shuffle: bool = True,
    ):
        if batch_size < 1 or accumulate < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise ValueError("batch_size, accumulate, world_size must be >= 1 and rank in range")
        self.length, self.batch_size, self.accumulate = length, batch_size, accumulate
        self.rank, self.world_size, self.seed, self.shuffle = rank, world_size, seed, shuffle
        self.epoch, self.skip_steps = 0, 0

    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps in one epoch."""
        return self.length // (self.batch_size * self.accumulate * self.world_size)

    def set_epoch(self, epoch: int, *, skip_steps: int = 0) -> None:
        """Draw ``epoch``'s order, leaving out its first ``skip_steps`` optimizer steps."""
        self.epoch, self.skip_steps = epoch, skip_steps

    def _chunks(self) -> list[int]:
        steps = self.steps_per_epoch
        per_rank = steps * self.accumulate  # micro-batches per rank
        return [r * self.world_size + self.rank for r in range(per_rank)][
            self.skip_steps * self.accumulate :
        ]

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.length, generator=g).tolist()
        else:
            order = list(range(self.length))
        b = self.batch_size
        for c in self._chunks():
            yield from order[c * b : (c + 1) * b]

    def __len__(self) -> int:
        return len(self._chunks()) * self.batch_size
