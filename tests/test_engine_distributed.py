"""Distributed training on the CPU: two Gloo processes against one process with the same clips,
a stop request on one rank, resume; the block layout of the clip stream.

The two-process runs use torch.multiprocessing (spawn) with torchrun's variables set by hand,
so that each process can report its own parameters; `timecycle train` under torchrun runs the
same `run_training`.
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from timecycle.data.sampler import ResumableSampler
from timecycle.engine.checkpoint import load_checkpoint
from timecycle.engine.config import TrainConfig, make_config
from timecycle.engine.distributed import World, world_from_env
from timecycle.engine.logging import read_metrics
from timecycle.engine.train import train
from timecycle.errors import UserError

pytestmark = pytest.mark.usefixtures("one_thread")




def tiny(data, out, **overrides):
    base = dict(data=[str(data)], out=str(out), short_side=64, crop=64, patch=56, batch_size=2,
                steps=3, workers=0, log_every=1, fps=None, progress=False, tensorboard=False,
                deterministic=True, threads=1)
    return make_config("small", **{**base, **overrides})


# The clip stream -----------------------------------------------------------------------------


@pytest.mark.parametrize("start,world,block,total", [(0, 3, 2, 20), (5, 2, 3, 23), (4, 1, 2, 11)])
def test_ranks_read_every_index_once_in_blocks(start, world, block, total):
    shares = [list(ResumableSampler(start, r, world, total, block)) for r in range(world)]
    assert sorted(itertools.chain(*shares)) == list(range(start, total))
    for r, share in enumerate(shares):
        assert len(ResumableSampler(start, r, world, total, block)) == len(share)
        assert share[:block] == list(range(start + r * block, min(start + (r + 1) * block, total)))


def test_processes_and_accumulation_read_the_same_batches():
    """W processes x A micro-batches: any split of W x A reads the same batches (what makes a
    two-process run comparable with one process accumulating two micro-batches)."""
    b = 2

    def batches(world, accum, steps=3):
        out = []
        streams = [iter(ResumableSampler(6, r, world, None, block=b)) for r in range(world)]
        for _ in range(steps):
            step = []
            for _ in range(accum):
                step += [tuple(itertools.islice(s, b)) for s in streams]
            out.append(sorted(step))
        return out

    assert batches(2, 1) == batches(1, 2) and batches(4, 1) == batches(2, 2) == batches(1, 4)


def test_world_comes_from_torchruns_variables():
    assert world_from_env({}) == World(0, 1, 0)
    env = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "h",
           "MASTER_PORT": "1"}
    world = world_from_env(env)
    assert (world.rank, world.size, world.local_rank, world.is_main) == (3, 4, 1, False)
    with pytest.raises(UserError, match="MASTER_ADDR"):
        world_from_env({"RANK": "0", "WORLD_SIZE": "2"})
    with pytest.raises(UserError, match="RANK"):
        world_from_env({"RANK": "2", "WORLD_SIZE": "2"})



def test_a_numbered_gpu_becomes_the_current_device(monkeypatch):
    # Streams, events and CUDA graphs that name no device use the current one: --device
    # cuda:1 must make cuda:1 current, and a GPU the machine lacks is the user's mistake.
    from timecycle.engine.runtime import resolve_device

    current = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", current.append)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert current == [torch.device("cuda", 1)]
    assert resolve_device("cuda") == torch.device("cuda") and len(current) == 1
    with pytest.raises(UserError, match=r"--device cuda:2: this machine has 2 CUDA devices "
                                        r"\(cuda:0..cuda:1\)"):
        resolve_device("cuda:2")
    assert len(current) == 1


def test_what_rank_0_raises_alone_reaches_every_rank(monkeypatch):
    # on_main: rank 0 runs the function and broadcasts its outcome. Whatever it raises must
    # reach the ranks waiting in the broadcast (a hang under NCCL otherwise); here the
    # broadcast is simulated: rank 0's box is what the other ranks receive.
    from timecycle.engine import distributed

    sent: list = []
    monkeypatch.setattr(distributed.dist, "broadcast_object_list",
                        lambda box, src: sent.append(list(box)) if src == 0 else None)

    def bug():
        raise KeyError("eval")

    with pytest.raises(KeyError):  # rank 0 keeps its own traceback
        distributed.on_main(bug, World(0, 2, 0))
    assert sent[-1] == [("crash", "KeyError: 'eval'")]

    def bad_input():
        raise UserError("no such sequence", "DAVIS/ImageSets/2016/val.txt")

    with pytest.raises(UserError, match="DAVIS/ImageSets/2016/val.txt: no such sequence"):
        distributed.on_main(bad_input, World(0, 2, 0))
    assert distributed.on_main(lambda: 7, World(0, 2, 0)) == 7 and sent[-1] == [("ok", 7)]

    # Rank 1 gets rank 0's box through the broadcast.
    for box, raised, match in ((("crash", "KeyError: 'eval'"), RuntimeError, "rank 0 failed"),
                               (("error", "x.txt: no such sequence"), UserError, "x.txt")):
        monkeypatch.setattr(distributed.dist, "broadcast_object_list",
                            lambda b, src, box=box: b.__setitem__(0, box))
        with pytest.raises(raised, match=match):
            distributed.on_main(lambda: pytest.fail("only rank 0 runs it"), World(1, 2, 1))


def test_each_process_takes_the_gpu_of_its_local_rank(monkeypatch):
    from timecycle.engine.distributed import resolve_device

    current = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", current.append)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    assert resolve_device("auto", World(11, 16, 3)) == torch.device("cuda", 3) == current[-1]
    with pytest.raises(UserError, match="LOCAL_RANK 9 but only 8 GPUs"):
        resolve_device("cuda", World(9, 16, 9))
    # One GPU bound to each task (SLURM --gpus-per-task=1 sets CUDA_VISIBLE_DEVICES to it):
    # each process sees its own as cuda:0. Without the binding, one GPU is the machine's only.
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5")
    assert resolve_device("cuda", World(11, 16, 3)) == torch.device("cuda", 0) == current[-1]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    with pytest.raises(UserError, match="LOCAL_RANK 3 but only 1 GPUs are visible"):
        resolve_device("cuda", World(11, 16, 3))


def test_the_collectives_timeout_is_the_runs(monkeypatch, tmp_path):
    # Rank 0 alone indexes a new corpus while the others wait in a collective: a first run
    # over a large corpus may need longer than the default 30 minutes (--dist-timeout).
    import datetime

    from timecycle.cli import build_parser
    from timecycle.cli.train import config_from_args
    from timecycle.engine import distributed

    args = build_parser().parse_args(["train", "--data", str(tmp_path), "--out",
                                      str(tmp_path / "run"), "--dist-timeout", "120"])
    config = config_from_args(args)
    assert config.dist_timeout_minutes == 120 and make_config("full").dist_timeout_minutes == 30
    calls, store = [], distributed.dist.HashStore()

    def rendezvous(url, rank, size, timeout):
        calls.append(("rendezvous", timeout))
        yield store, rank, size

    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(distributed.dist, "rendezvous", rendezvous)
    monkeypatch.setattr(distributed.dist, "init_process_group",
                        lambda backend, **kw: calls.append((backend, kw["timeout"])))
    monkeypatch.setattr(distributed.dist, "destroy_process_group", lambda: calls.append("end"))
    with distributed.process_group(World(1, 2, 1), torch.device("cpu"),
                                   config.dist_timeout_minutes):
        pass
    minutes = datetime.timedelta(minutes=120)
    assert calls == [("rendezvous", minutes), ("gloo", minutes), "end"]
    assert store.timeout == minutes
    with pytest.raises(UserError, match="dist_timeout_minutes must be a finite number > 0"):
        make_config("full", dist_timeout_minutes=0)

# Two processes -------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, jobs: list[dict]) -> None:
    """One process of the two: runs `jobs` in order, each in its own process group, and saves
    its parameters and outcome after each (spawned; module level so that it pickles)."""
    from timecycle.engine import setup
    from timecycle.engine import train as train_mod

    torch.set_num_threads(1)
    built = {}
    real_build = setup.build_run

    def build(*args, **kwargs):
        model, optimizer, counters = real_build(*args, **kwargs)
        built["model"] = model
        return model, optimizer, counters

    setup.build_run = build
    for job in jobs:
        os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                          MASTER_ADDR="127.0.0.1", MASTER_PORT=str(job["port"]))
        stop = threading.Event()
        if rank == job.get("stop_rank"):
            stop.set()  # as a SIGTERM to this process alone would
        outcome = train_mod.run_training(TrainConfig.from_dict(job["config"]),
                                         resume=job.get("resume", False), stop=stop)
        params = {k: v.detach().clone() for k, v in built["model"].named_parameters()}
        torch.save({"params": params, "step": outcome.step, "stopped": outcome.stopped},
                   Path(job["report"]) / f"{job['name']}-rank{rank}.pt")


def _local_gloo(monkeypatch) -> None:
    if sys.platform == "linux" and "GLOO_SOCKET_IFNAME" not in os.environ:
        monkeypatch.setenv("GLOO_SOCKET_IFNAME", "lo")  # no lookup of the host's name


@pytest.mark.slow
def test_two_processes_match_one_and_stop_together(data, tmp_path, monkeypatch):
    import torch.multiprocessing as mp

    _local_gloo(monkeypatch)
    report = tmp_path / "report"
    report.mkdir()
    # warmup_steps=1: step 1 trains the localizer alone, so DDP is rebuilt before step 2.
    # save_every=2: steps 2 and 3 are numbered saves, where the replicas are compared.
    common = dict(warmup_steps=1, save_every=2)
    whole = tiny(data, tmp_path / "whole", **common)
    part = tiny(data, tmp_path / "part", **common)
    mp.spawn(_rank_main, nprocs=2, join=True, args=(2, [
        {"name": "whole", "config": whole.to_dict(), "port": _free_port(), "report": str(report)},
        # Rank 1 alone asks to stop: both must stop after step 1, and rank 0 save it.
        {"name": "part", "config": part.to_dict(), "port": _free_port(), "report": str(report),
         "stop_rank": 1},
        {"name": "resumed", "config": part.to_dict(), "port": _free_port(),
         "report": str(report), "resume": True},
    ]))
    got = {p.stem: torch.load(p, weights_only=True) for p in report.iterdir()}

    # The replicas are identical, and rank 0 saved them.
    ranks = got["whole-rank0"]["params"], got["whole-rank1"]["params"]
    saved = load_checkpoint(tmp_path / "whole" / "last.pt")
    for k, v in ranks[0].items():
        assert torch.equal(v, ranks[1][k]) and torch.equal(v, saved["model"][k]), k
    resolved = json.loads((tmp_path / "whole" / "config.json").read_text())["resolved"]
    assert (resolved["world_size"], resolved["effective_batch"]) == (2, 4)
    assert len(saved["rng_ranks"]) == 2

    # One process accumulating two micro-batches of 2 reads the same clips in the same
    # BatchNorm groups: rank r's batch is micro-batch r (data/sampler.py: blocks of one batch).
    # BatchNorm statistics are per process in DDP (SyncBatchNorm is CUDA-only in torch, so the
    # CPU cannot test it), hence the comparison with accumulation rather than with one batch of
    # 4, whose statistics would pool all 4 clips. What differs is where the gradients are
    # summed; in practice the results agree bitwise (halving is exact), the tolerance only
    # allows for a reduction order that could differ elsewhere. Running BatchNorm statistics
    # do differ (rank 0's come from its clips only) and are not compared.
    single = train(tiny(data, tmp_path / "single", accum=2, **common))
    ref_losses = [r["loss"] for r in read_metrics(single)]
    assert [r["loss"] for r in read_metrics(tmp_path / "whole")] == pytest.approx(ref_losses,
                                                                                   rel=1e-5)
    ref = load_checkpoint(single / "last.pt")["model"]
    for k, v in ranks[0].items():
        torch.testing.assert_close(v, ref[k], rtol=1e-5, atol=1e-6, msg=k)

    # The stop request of rank 1 stopped both after step 1; the resumed run continued exactly.
    for rank in (0, 1):
        assert (got[f"part-rank{rank}"]["step"], got[f"part-rank{rank}"]["stopped"]) == (1, True)
    assert got["resumed-rank0"]["step"] == 3
    for k, v in ranks[0].items():
        assert torch.equal(v, got["resumed-rank0"]["params"][k]), k
        assert torch.equal(v, got["resumed-rank1"]["params"][k]), k
    assert [r["step"] for r in read_metrics(tmp_path / "part")] == [1, 2, 3]
    assert [r["loss"] for r in read_metrics(tmp_path / "part")] == [
        r["loss"] for r in read_metrics(tmp_path / "whole")]


def _rank_signalled(rank: int, world: int, job: dict) -> None:
    """One process of a run whose rank 0, evaluating at step 1, sends SIGTERM to rank 1 alone
    (waiting for it in the next collective) and times how soon its evaluation may end."""
    import signal
    import time

    from timecycle.engine import train as train_mod
    from timecycle.engine.evaluation import DavisProxy
    from timecycle.engine.signals import stop_on_signals

    torch.set_num_threads(1)
    report, seen = Path(job["report"]), {}
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(job["port"]))
    (report / f"pid{rank}").write_text(str(os.getpid()))
    real = DavisProxy.score

    def score(self, encoder, device, per_sequence=False, abort=None):
        os.kill(int((report / "pid1").read_text()), signal.SIGTERM)
        start = time.monotonic()
        while not abort() and time.monotonic() - start < 15:
            time.sleep(0.05)
        seen["after"] = time.monotonic() - start if abort() else None
        return real(self, encoder, device, per_sequence, abort)

    DavisProxy.score = score
    with stop_on_signals(announce=None) as stop:
        outcome = train_mod.run_training(TrainConfig.from_dict(job["config"]), stop=stop)
    (report / f"rank{rank}.json").write_text(json.dumps(
        {"step": outcome.step, "stopped": outcome.stopped, "seen_after": seen.get("after"),
         "signal": stop.signal_name}))


@pytest.mark.slow
def test_a_stop_sent_to_other_ranks_ends_rank_0s_evaluation(data, synthetic_davis, tmp_path,
                                                             monkeypatch):
    # A preempted node's ranks get the scheduler's SIGTERM, rank 0's may not. They wait for
    # rank 0's evaluation in a collective, where Python runs no handler: the request must
    # still reach rank 0 before its next sequence, not after the whole evaluation.
    import torch.multiprocessing as mp

    _local_gloo(monkeypatch)
    report = tmp_path / "report"
    report.mkdir()
    config = tiny(data, tmp_path / "run", eval_davis=str(synthetic_davis), eval_every=1)
    mp.spawn(_rank_signalled, nprocs=2, join=True, args=(2, {
        "config": config.to_dict(), "port": _free_port(), "report": str(report)}))
    ranks = [json.loads((report / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["seen_after"] is not None and ranks[0]["seen_after"] < 5
    assert [(r["step"], r["stopped"]) for r in ranks] == [(1, True), (1, True)]
    assert (ranks[0]["signal"], ranks[1]["signal"]) == (None, "SIGTERM")
    assert load_checkpoint(tmp_path / "run" / "last.pt")["step"] == 1


@pytest.mark.slow
def test_torchrun_starts_the_command_line(data, tmp_path, monkeypatch):
    """The launch recipe: `torchrun --standalone --nproc_per_node=2 -m timecycle train`."""
    _local_gloo(monkeypatch)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "timecycle", "train", "--data", str(data), "--out", str(out),
           "--preset", "small", "--short-side", "64", "--crop", "64", "--patch", "56",
           "--batch-size", "1", "--accum", "2", "--steps", "2", "--workers", "0", "--fps",
           "native", "--log-every", "1", "--device", "cpu", "--threads", "1", "--quiet"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("trained to step 2") == 1  # rank 0 alone reports
    resolved = json.loads((out / "config.json").read_text())["resolved"]
    assert (resolved["world_size"], resolved["effective_batch"]) == (2, 4)
    assert [r["samples"] for r in read_metrics(out)] == [4, 8]
    assert load_checkpoint(out / "last.pt")["step"] == 2
