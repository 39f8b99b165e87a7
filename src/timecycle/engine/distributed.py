"""Distributed state of a training run: one process per GPU (or CPU process), as torchrun
starts them.

The contract is torchrun's environment: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and
MASTER_PORT (torchrun sets them on every node; a SLURM script maps SLURM_PROCID, SLURM_NTASKS
and SLURM_LOCALID onto them, see the README). Without WORLD_SIZE, or with WORLD_SIZE=1, the
run is one process and nothing here touches torch.distributed.

Every function that communicates is a collective: all ranks call it at the same point of the
run, in the same order, or the run hangs. The engine keeps them at fixed places (the DDP
wrapper, once per step `agree_any` and the loss average, around each save).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from timecycle.engine.runtime import resolve_device as _resolve_device
from timecycle.errors import UserError

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    """This process's place in the run (rank 0 of 1 when not distributed)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0  # the process's index on its node: its GPU

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 alone logs and writes files."""
        return self.rank == 0


def world_from_env(environ: dict[str, str] | None = None) -> World:
    """The World that torchrun's variables describe (RANK, WORLD_SIZE, LOCAL_RANK)."""
    env = os.environ if environ is None else environ
    try:
        size = int(env.get("WORLD_SIZE", "1"))
        rank = int(env.get("RANK", "0"))
        local = int(env.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise UserError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (as torchrun sets "
                        "them)") from None
    if size < 1 or not 0 <= rank < size or local < 0:
        raise UserError(f"need 0 <= RANK ({rank}) < WORLD_SIZE ({size}) and LOCAL_RANK >= 0")
    if size > 1 and ("MASTER_ADDR" not in env or "MASTER_PORT" not in env):
        raise UserError("WORLD_SIZE > 1 but MASTER_ADDR / MASTER_PORT are not set: launch "
                        "with torchrun, or export them (see the README's SLURM script)")
    return World(rank, size, local)


def resolve_device(name: str, world: World) -> torch.device:
    """The process's device: `name` as usual; several processes on CUDA use cuda:LOCAL_RANK."""
    device = _resolve_device(name)
    if not world.distributed or device.type != "cuda":
        return device
    if name not in ("auto", "cuda"):
        raise UserError(f"--device {name} names one GPU, but this is process {world.rank} of "
                        f"{world.size}: each process uses the GPU of its LOCAL_RANK; pass "
                        "--device cuda (or nothing), and CUDA_VISIBLE_DEVICES to pick GPUs")
    visible = torch.cuda.device_count()
    if visible == 1 and os.environ.get("CUDA_VISIBLE_DEVICES", "").strip():
        # A scheduler that binds one GPU to each task (SLURM --gpus-per-task=1) sets
        # CUDA_VISIBLE_DEVICES to it: each process sees its own GPU alone, as cuda:0,
        # whatever its LOCAL_RANK. (Unset, one GPU means one machine's only GPU.)
        index = 0
    elif world.local_rank >= visible:
        raise UserError(f"LOCAL_RANK {world.local_rank} but only {visible} GPUs are visible: "
                        "start at most one process per GPU")
    else:
        index = world.local_rank
    device = torch.device("cuda", index)
    torch.cuda.set_device(device)
    return device


@contextlib.contextmanager
def process_group(world: World, device: torch.device,
                  timeout_minutes: float = 30.0) -> Iterator[None]:
    """The default process group for the duration of a run: NCCL on CUDA, Gloo on the CPU.

    A group that is already initialised (the caller's) is used as it is and left alone; one
    made here is destroyed after. timeout: how long a collective waits for a missing rank
    before failing (a checkpoint save on rank 0 must fit in it).
    """
    if not world.distributed:
        yield
        return
    if dist.is_initialized():
        if (dist.get_rank(), dist.get_world_size()) != (world.rank, world.size):
            raise RuntimeError(f"the initialised process group is rank {dist.get_rank()} of "
                               f"{dist.get_world_size()}, the environment says {world}")
        yield
        return
    # The rendezvous init_process_group("env://") makes, kept: shared_stop reads and writes
    # it without a collective. Its "default_pg" prefix is the one init_process_group adds.
    timeout = datetime.timedelta(minutes=timeout_minutes)
    store, _, _ = next(dist.rendezvous("env://", world.rank, world.size, timeout=timeout))
    store.set_timeout(timeout)
    # NCCL uses the current device, which `resolve_device` set to cuda:LOCAL_RANK.
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=world.rank,
                            world_size=world.size, timeout=timeout,
                            store=dist.PrefixStore("default_pg", store))
    global _STORE
    # torchrun's agent keeps its store across restarts of the workers: a fresh prefix each time
    _STORE = dist.PrefixStore(f"timecycle/{os.environ.get('TORCHELASTIC_RESTART_COUNT', 0)}",
                              store)
    try:
        yield
    finally:
        _STORE = None
        dist.destroy_process_group()


_STORE: dist.Store | None = None  # this run's rendezvous store, while `process_group` made it
_STOP_KEY = "stop"


@contextlib.contextmanager
def shared_stop(stop: threading.Event | None, world: World) -> Iterator[Callable[[], bool]]:
    """A check whether any rank has been asked to stop, usable by one rank alone: between
    collectives, where `agree_any` cannot be called (rank 0's evaluation, while the others
    wait for it in the next collective).

    A thread publishes this rank's request in the rendezvous store as soon as it is set (the
    request is set even while this rank waits in a collective, engine/signals.py); the check
    reads the store. Without a store of our own (one process, or a process group the caller
    made) it is this rank's request alone.
    """
    store = _STORE if world.distributed else None
    if stop is None or store is None:
        yield (lambda: False) if stop is None else stop.is_set
        return
    done = threading.Event()

    def publish() -> None:
        while not done.is_set():
            if stop.wait(timeout=0.5):
                with contextlib.suppress(RuntimeError):  # a store gone at exit: nothing to tell
                    store.set(_STOP_KEY, str(world.rank))
                return

    thread = threading.Thread(target=publish, name="timecycle-stop", daemon=True)
    thread.start()

    def requested() -> bool:
        if stop.is_set():
            return True
        try:
            return store.check([_STOP_KEY])
        except RuntimeError:  # a store that cannot answer (DistStoreError) knows of none
            return False

    try:
        yield requested
    finally:
        done.set()
        thread.join(timeout=5)


def wrap(model: nn.Module, world: World, device: torch.device) -> nn.Module:
    """`model` in DistributedDataParallel, or `model` itself in a one-process run.

    DDP registers the parameters that require gradients *now*; the engine wraps again when the
    warm-up freezes or unfreezes the encoder. Every registered parameter gets a gradient in
    every step (all loss terms reach the encoder and the localizer), so
    find_unused_parameters stays off: it would walk the autograd graph after each forward.
    Construction broadcasts rank 0's parameters and buffers, so all replicas start equal.
    """
    if not world.distributed:
        return model
    return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)


def convert_sync_batchnorm(model: nn.Module, world: World, device: torch.device) -> nn.Module:
    """BatchNorm layers as SyncBatchNorm (statistics over all processes' clips).

    torch implements SyncBatchNorm for GPUs only; on the CPU (Gloo) it is refused.
    """
    if not world.distributed:
        return model
    if device.type != "cuda":
        raise UserError("sync_bn needs CUDA: torch's SyncBatchNorm has no CPU implementation")
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def agree_any(flags: list[bool], world: World, device: torch.device) -> list[bool]:
    """Each flag true if it is true on any rank (one all-reduce; every rank must call it)."""
    if not world.distributed:
        return list(flags)
    t = torch.tensor([int(f) for f in flags], dtype=torch.int32, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [bool(x) for x in t.tolist()]


def mean_across(t: torch.Tensor, world: World) -> torch.Tensor:
    """The mean of `t` over the ranks (a new tensor; `t` itself in a one-process run). A
    non-finite value on any rank makes the mean non-finite on all."""
    if not world.distributed:
        return t
    t = t.clone()
    dist.all_reduce(t)
    return t / world.size


def barrier(world: World, device: torch.device) -> None:
    if world.distributed:
        dist.barrier(device_ids=[device.index] if device.type == "cuda" else None)


def gather_objects(obj: T, world: World) -> list[T]:
    """Every rank's `obj` (picklable), in rank order, on every rank."""
    if not world.distributed:
        return [obj]
    out: list = [None] * world.size
    dist.all_gather_object(out, obj)
    return out


def on_main(fn: Callable[[], T], world: World) -> T:
    """Run `fn` on rank 0 and hand its result to every rank (pickled). Whatever it raises is
    raised on every rank (a UserError as itself, anything else on the others as a
    RuntimeError naming it), so none waits in a collective for a rank 0 that has left."""
    if not world.distributed:
        return fn()
    box: list = [None]
    failure: BaseException | None = None
    if world.is_main:
        try:
            box[0] = ("ok", fn())
        except UserError as err:
            box[0] = ("error", str(err))
        except Exception as err:
            failure = err
            box[0] = ("crash", f"{type(err).__name__}: {err}")
    dist.broadcast_object_list(box, src=0)
    if failure is not None:
        raise failure
    status, value = box[0]
    if status == "error":
        raise UserError(value)
    if status == "crash":
        raise RuntimeError(f"rank 0 failed before this rank could go on: {value}")
    return value


def check_replicas(model: nn.Module, world: World) -> None:
    """Raise if the processes' parameters differ (a rank-dependent code path, a missed
    all-reduce). DDP keeps them bitwise equal, so the per-tensor float64 sums must match."""
    if not world.distributed:
        return
    with torch.no_grad():
        sums = torch.stack([p.double().sum() for p in model.parameters()]).cpu()
    everyone = gather_objects(sums, world)
    names = [n for n, _ in model.named_parameters()]
    for rank, other in enumerate(everyone[1:], start=1):
        if not torch.equal(other, everyone[0]):
            first = names[int((other != everyone[0]).nonzero()[0])]
            raise RuntimeError(f"the parameters of rank {rank} differ from rank 0's "
                               f"(first: {first}): the replicas went out of step")
