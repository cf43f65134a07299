"""Distributed data parallel as ``torchrun`` sets it up, and a sampler that shards exactly.

Launch with ``torchrun --nproc_per_node=N`` (multi-node: ``--nnodes``, ``--node_rank`` and a
``--rdzv_endpoint``, as torchrun documents). The entry point joins the process group once per
process with :func:`distributed_session` (gloo on CPU, NCCL on GPU) and leaves it at the end;
library code only reads its place with :func:`dist_info`. Only rank 0 writes files and prints;
every rank takes the same decisions (the same weights, the same full evaluation data); figures
are averaged over ranks.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Sampler

from yolo_prune.errors import ConfigError

logger = logging.getLogger(__name__)

SESSION_TIMEOUT = timedelta(hours=2)  # a collective's wait for the other ranks (see below)
ERROR_WAIT = timedelta(seconds=60)  # after an error: how long a rank waits for the others


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


def dist_info(device: str = "cpu") -> DistInfo:
    """Where this process stands in the process group that :func:`distributed_session` set up.

    Library code reads its place here and never sets the group up or tears it down: that is
    process-wide state, and it belongs to the entry point (a group set up and destroyed per call
    breaks the next call's rendezvous: gloo's ``connectFullMesh`` then fails).

    Args:
        device: ``"cpu"``, or ``"cuda"`` (becomes this process's ``cuda:<local rank>``).

    Returns:
        The process's place; a single process (no ``WORLD_SIZE`` > 1) gets rank 0 of 1.

    Raises:
        ConfigError: ``torchrun`` started several processes (``WORLD_SIZE`` > 1) but no
            process group was set up.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if not (dist.is_available() and dist.is_initialized()):
        if world > 1:
            raise ConfigError(
                f"WORLD_SIZE={world} (torchrun) but no process group is set up; wrap the whole "
                "run, once per process, in `with yolo_prune.engine.distributed."
                "distributed_session(device):` (the yolo-prune CLI does)"
            )
        return DistInfo(0, 1, 0, device)
    rank, world = dist.get_rank(), dist.get_world_size()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda") and world > 1:
        device = f"cuda:{local}"
    return DistInfo(rank, world, local, device)


@contextmanager
def distributed_session(
    device: str = "cpu", *, timeout: timedelta = SESSION_TIMEOUT
) -> Iterator[DistInfo]:
    """Join the process group ``torchrun`` describes for the body, and leave it together after.

    Call it once per process, around everything the process does (detectron2's ``launch()``);
    library calls inside read their place with :func:`dist_info`. Without ``WORLD_SIZE`` > 1
    it does nothing, and a group that is already set up is used and left as it is (its owner
    tears it down).

    On the way out the ranks wait for each other and then destroy the group: a rank that exits
    while another still talks to it can abort inside gloo (seen as SIGABRT of one rank at the
    end of a run). After an error the wait is cut to ``ERROR_WAIT``: ranks that all raised the
    same error meet at once, and a rank left waiting on a peer that never comes must not hang;
    after Ctrl-C (which reaches the ranks in the middle of any collective) nobody waits.

    Args:
        device: ``"cpu"`` (gloo) or ``"cuda"`` (NCCL, one GPU per local rank).
        timeout: how long a collective waits for the other ranks. Rank 0 alone does the
            reporting (evaluating the pruned, shrunk and INT8 models, timing them, writing the
            files) while the other ranks wait at the next collective, so it is hours, not the
            30 (gloo) or 10 (NCCL) minutes of torch's default.

    Yields:
        This process's place (:func:`dist_info`).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or (dist.is_available() and dist.is_initialized()):
        yield dist_info(device)
        return
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        torch.cuda.set_device(local)
        dist.init_process_group("nccl", timeout=timeout, device_id=torch.device("cuda", local))
    else:
        dist.init_process_group("gloo", timeout=timeout)
    info = dist_info(device)
    logger.info("rank %d of %d on %s", info.rank, info.world_size, info.device)
    try:
        yield info
    except Exception:  # not after Ctrl-C: it reaches the ranks anywhere, maybe in a collective
        _leave(wait=ERROR_WAIT)
        raise
    _leave(wait=None)


def _leave(*, wait: timedelta | None) -> None:
    """Wait for every rank (at most ``wait``; None: the group's timeout), then destroy the
    group; a rank that waited in vain leaves it to the process's exit."""
    work = dist.barrier(async_op=True)
    try:
        if wait is None:
            work.wait()
        else:
            work.wait(timeout=wait)
    except RuntimeError as exc:  # the others did not come: do not touch the group again
        logger.warning("the other ranks did not reach the end of the run: %s", exc)
        return
    dist.destroy_process_group()


def synchronize() -> None:
    """Wait until every rank gets here (a no-op in a single process): e.g. before reading
    files that rank 0 writes, so that every rank sees the same ones."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


@torch.no_grad()
def broadcast_buffers_(module: nn.Module, *, src: int = 0) -> None:
    """Overwrite every rank's buffers of ``module`` with rank ``src``'s (a no-op in one process).

    DDP keeps the parameters equal (every rank steps with the same all-reduced gradients) and
    copies rank 0's buffers to the others before each forward, but each rank's last forward
    then updates its own batch-norm statistics from its own images: after training they
    differ, and so would each rank's evaluation and every decision taken from it.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return
    for buffer in module.buffers():
        dist.broadcast(buffer, src)


def _device() -> torch.device:
    """Where the group's collectives take their tensors: NCCL reduces CUDA tensors only."""
    return torch.device("cuda") if dist.get_backend() == "nccl" else torch.device("cpu")


def all_reduce_mean(values: dict[str, float]) -> dict[str, float]:
    """The mean of each figure over all ranks (unchanged in a single process)."""
    if not (dist.is_available() and dist.is_initialized()) or not values:
        return dict(values)
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=_device())
    dist.all_reduce(t)
    t /= dist.get_world_size()
    return dict(zip(keys, t.tolist(), strict=True))


def all_reduce_sum(counts: Sequence[int]) -> list[int]:
    """Each count summed over all ranks (unchanged in a single process): exact integers, so
    that every rank takes the same decision from a figure it measured on its part of the data."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return [int(c) for c in counts]
    t = torch.tensor([int(c) for c in counts], dtype=torch.int64, device=_device())
    dist.all_reduce(t)
    return [int(c) for c in t.tolist()]


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
