"""A resumable index stream and the training DataLoader (SPEC 5).

`ClipDataset` is index-deterministic (sample i depends on (seed, i) only), so the whole state
of the data pipeline is one integer: the global index of the next sample. The ranks of a
world_size-process run deal the stream out in blocks of `block` consecutive indices, round
robin: rank r reads blocks r, r + world_size, ... of start, start + 1, ...; together the ranks
read every index exactly once, whatever world_size is. With block = the batch size each batch
is one run of consecutive clips, so a step of W processes x A accumulated micro-batches reads
the same batches as any other split of W x A (train.py relies on it).

Resuming: the DataLoader prefetches, so the sampler cannot know how many samples were
*consumed*. The engine does: after `steps` optimiser steps since `start`, the next global index
is start + steps x (the clips of one step, all processes); store that and `set_start` it.
"""

from __future__ import annotations

import functools
import random
import signal
from collections.abc import Iterator

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler


class ResumableSampler(Sampler[int]):
    """Yields this rank's global sample indices: start + (k x world_size + rank) x block + j
    for k = 0, 1, ... and j < block. block=1: start + rank, start + rank + world_size, ...

    total: stop before this global index (None: an endless stream, and len() is undefined).
    """

    def __init__(self, start: int = 0, rank: int = 0, world_size: int = 1,
                 total: int | None = None, block: int = 1):
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank ({rank}) < world_size ({world_size})")
        if start < 0 or block < 1:
            raise ValueError(f"need start >= 0 and block >= 1, got {start} and {block}")
        self.start, self.rank, self.world_size, self.total = int(start), rank, world_size, total
        self.block = block

    def set_start(self, n: int) -> None:
        """Next iteration starts at global sample index n (takes effect on the next iter())."""
        if n < 0:
            raise ValueError(f"start must be >= 0, got {n}")
        self.start = int(n)

    def __iter__(self) -> Iterator[int]:
        first = self.start + self.rank * self.block
        stride = self.world_size * self.block
        while self.total is None or first < self.total:
            end = first + self.block if self.total is None else min(first + self.block, self.total)
            yield from range(first, end)
            first += stride

    def __len__(self) -> int:
        if self.total is None:
            raise TypeError("an endless ResumableSampler (total=None) has no length")
        span = max(0, self.total - self.start)
        rounds, rest = divmod(span, self.world_size * self.block)
        return rounds * self.block + min(max(rest - self.rank * self.block, 0), self.block)

    def state_dict(self) -> dict:
        """{"start": global index}: rank and world size are not state (a resume may change
        them; the stream is the same)."""
        return {"start": self.start}

    def load_state_dict(self, state: dict) -> None:
        self.set_start(int(state["start"]))


def seed_worker(seed: int, rank: int, worker_id: int) -> None:
    """DataLoader worker_init_fn: seed torch, numpy and random from (seed, rank, worker_id),
    and ignore the stop signals.

    ClipDataset does not use these generators (its samples are seeded by index); this is for
    anything else a worker runs. (OpenCV's threads are set in `make_loader`, not here.)
    A scheduler may signal the whole process group (SLURM does): the training process then
    finishes its step and saves (engine/signals.py), which needs its workers alive. Workers
    still end with the loader, or when the training process dies (DataLoader's watchdog).
    """
    for sig in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, signal.SIG_IGN)
    # A forked worker inherits the training process's signal wakeup socket (engine/signals.py):
    # its own signals must not be read there as the training process's.
    signal.set_wakeup_fd(-1)
    state = np.random.SeedSequence([seed, rank, worker_id]).generate_state(2)
    torch.manual_seed(int(state[0]))
    np.random.seed(int(state[1]))
    random.seed(int(state[1]))


def make_loader(
    dataset: Dataset,
    batch_size: int,
    workers: int,
    start_index: int = 0,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    pin_memory: bool | None = None,
    total: int | None = None,
    prefetch_factor: int = 4,
    block: int = 1,
) -> DataLoader:
    """A DataLoader over `dataset` reading global indices from `start_index` on (this rank's
    share, dealt in blocks of `block`: see `ResumableSampler`), in batches of `batch_size`.

    Workers persist across iterations and prefetch `prefetch_factor` batches each; memory is
    pinned when CUDA is available (pin_memory=None). The sampler is `loader.sampler`
    (a ResumableSampler). Batches are incomplete only at the end of a finite `total`; the last
    one is dropped so every batch has `batch_size` samples.
    """
    sampler = ResumableSampler(start_index, rank, world_size, total, block)
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    extra = {}
    if workers > 0:
        extra = {"persistent_workers": True, "prefetch_factor": prefetch_factor}
        # Workers are the parallelism: OpenCV single-threaded, set here in the parent so that
        # forked workers inherit it. Calling cv2.setNumThreads inside a forked worker deadlocks
        # once the parent has used OpenCV's thread pool (it waits on the pool's condition
        # variables, whose threads did not survive the fork).
        cv2.setNumThreads(1)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        pin_memory=pin_memory,
        drop_last=True,
        worker_init_fn=functools.partial(seed_worker, seed, rank),
        **extra,
    )
