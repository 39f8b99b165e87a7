"""The training loop: `train(config) -> run folder`, used by `timecycle train` and the demo.

    from timecycle.engine.config import make_config
    from timecycle.engine.train import train

    run = train(make_config("small", data=["videos/"], out="runs/small", steps=300))
    # run / "last.pt" loads with `timecycle propagate davis --weights run/last.pt`

Launch recipes. The effective batch (SPEC 5: 32) is --batch-size x --accum x processes:
    one CPU or GPU:    timecycle train --data DIR --out RUN [--batch-size 8 --accum 4]
    one node, 8 GPUs:  torchrun --standalone --nproc_per_node=8 -m timecycle train \\
                           --data DIR --out RUN --batch-size 4
    2 nodes x 8 GPUs:  on every node (HOST0 = the first node's address):
                       torchrun --nnodes=2 --nproc_per_node=8 --rdzv_backend=c10d \\
                           --rdzv_endpoint=HOST0:29500 --rdzv_id=tc -m timecycle train \\
                           --data DIR --out RUN --batch-size 2
    SLURM:             the sbatch script in the README (one task per GPU, SIGUSR1 before the
                       time limit, requeue, --resume)
    resume:            the same command with --resume: the newest complete checkpoint
The run folder must be on a filesystem that every node sees (rank 0 writes, all ranks read
the checkpoint they resume from).

Layout (STYLE 3): the model (`TimeCycle`) is pure; this module alone touches the device,
precision, logging and checkpoints, with distributed.py for the process group and signals.py
for stop requests. setup.py builds what a run starts from (videos, model, clip stream, Adam,
generators; fresh or from a checkpoint); `train_step` (engine/step.py) is one optimiser step
and knows nothing of the run; `train` loops and saves.

Distributed runs (torchrun's RANK / WORLD_SIZE / LOCAL_RANK): one process per GPU, NCCL (Gloo
on the CPU), the model in DistributedDataParallel. Rank r reads batches r, r + W, ... of the
global clip stream (data/sampler.py, blocks of one batch), so a step reads the same clips
whatever the number of processes, and the stream position stays one global number. Rank 0
alone logs and writes checkpoints; the others wait at a barrier. Gradient accumulation
(`accum`) runs the micro-batches before the last under no_sync, so gradients cross the network
once per step. BatchNorm normalises over one process's micro-batch (as the public code's
nn.DataParallel did per GPU); `sync_bn` pools the statistics of all GPUs instead. Each
process seeds its generators with seed + rank after building the (identical) model.

Stopping: a stop request (`stop`, set by SIGTERM / SIGUSR1 in `timecycle train`) is read after
each step and agreed across ranks (any rank's request stops all, after the same step); rank 0
then saves last.pt and every rank returns with `Outcome.stopped`. The request skips that step's
evaluation and probe; one that arrives during an evaluation ends it before its next sequence
and stops after that step (a scheduler's grace period is ~30 s, an evaluation can be longer),
also when it was sent to other ranks alone (distributed.shared_stop). last.pt is refreshed
every `save_minutes`, so a run killed without warning (SIGKILL, a lost node) loses at most
that much; `--resume` continues from the newest complete checkpoint exactly as the
uninterrupted run would have gone (`deterministic` on the CPU: to the bit).

Warm-up (SPEC 4): for the first `warmup_steps` steps the encoder's parameters are frozen and
only the localizer g learns. The encoder stays in train mode: its BatchNorm normalises with
batch statistics, as it will after the warm-up, so g learns on the features it will see next.
(In eval mode a randomly initialised encoder would use the default running statistics, mean 0
and variance 1, i.e. not normalise at all.) The running statistics keep tracking the frozen
encoder, which is what they should describe. DDP is rebuilt when the encoder (un)freezes: it
registers the parameters that require gradients when it is built.

Steps count batches: a step whose loss (on any process) or gradient norm is not finite is
skipped (no update: parameters, Adam's moments and BatchNorm's running statistics stay as they
were) and counted, and `max_nonfinite` of them in a row stop the run with a UserError.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import math
import sys
import threading
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from timecycle.data import VideoRecord, make_loader
from timecycle.datasets.io import write_json_atomic
from timecycle.engine import checkpoint as ckpt
from timecycle.engine import distributed, setup
from timecycle.engine.config import TrainConfig, check_resumable, resolve_compile
from timecycle.engine.distributed import World
from timecycle.engine.logging import TERMS, WALK_TERMS, Meter, MetricsLog
from timecycle.engine.runtime import amp_dtype as resolve_amp, emulated_bf16_note, environment
from timecycle.engine.step import StepResult, freeze_batchnorm, probe_losses, train_step
from timecycle.errors import UserError


@dataclass
class Outcome:
    """How a run ended."""

    run_dir: Path
    step: int  # steps done; RUN/last.pt holds this step
    total_steps: int
    stopped: bool  # a stop request ended the run before total_steps
    clips: int = 0  # clips trained on by this call (all processes), resumed ones not counted
    seconds: float = 0.0  # its training loop's wall time: steps, evaluations, probes, saves
    nonfinite: int = 0  # steps skipped as non-finite, resumed ones counted
    nonfinite_last: int = 0  # of them, those that ended the run in a row (its last loss: none)


def train(config: TrainConfig, resume: bool = False,
          stop: threading.Event | None = None) -> Path:
    """Train TimeCycle as `config` says; returns the run folder (RUN/last.pt holds the model).

    resume: continue the newest complete checkpoint of the run folder (model, optimiser,
        step, clip stream position, RNG states) up to config's steps; the fields of
        `FIXED_ON_RESUME` must match the checkpoint's config.
    stop: when set (e.g. by a signal handler), the run saves a checkpoint after the current
        step and returns. `run_training` also says whether that happened.
    Started by torchrun (WORLD_SIZE > 1), every process calls this; see the module docstring.
    """
    return run_training(config, resume, stop).run_dir


def run_training(config: TrainConfig, resume: bool = False,
                 stop: threading.Event | None = None,
                 resumed: tuple[Path, dict] | None = None) -> Outcome:
    """`train`, returning how the run ended.

    resumed: with `resume`, the run's checkpoint as `checkpoint.latest_checkpoint` gives it,
        when the caller has read it already; else it is read here.
    """
    run_dir = Path(config.out)
    world = distributed.world_from_env()
    device = distributed.resolve_device(config.device, world)
    compile_mode = resolve_compile(config, device)  # refuses "graphs" off CUDA before any work
    threads = torch.get_num_threads()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    try:
        with distributed.process_group(world, device, config.dist_timeout_minutes), \
                setup.determinism(config.deterministic, device):
            loaded: dict = {}

            def prepare() -> tuple[Path | None, list[VideoRecord]]:  # rank 0 only
                path = None
                if resume:
                    path, loaded["state"] = resumed or ckpt.latest_checkpoint(run_dir)
                    check_resumable(TrainConfig.from_dict(loaded["state"]["config"]), config)
                elif ckpt.has_checkpoint(run_dir):
                    raise UserError(f"already holds a run ({ckpt.LAST}); pass --resume to "
                                    "continue it, or choose another --out", run_dir)
                run_dir.mkdir(parents=True, exist_ok=True)
                return path, setup.index_videos(config.data, run_dir, config.workers)

            path, videos = distributed.on_main(prepare, world)
            if "state" not in loaded and path is not None:  # the other ranks: rank 0's pick
                same = resumed is not None and Path(resumed[0]).resolve() == Path(path).resolve()
                loaded["state"] = resumed[1] if same else ckpt.load_checkpoint(path)
            state = loaded.get("state")
            return _run(config, run_dir, device, world, state, videos, stop, compile_mode)
    finally:
        torch.set_num_threads(threads)


def _run(config: TrainConfig, run_dir: Path, device: torch.device, world: World,
         state: dict | None, videos: list[VideoRecord],
         stop: threading.Event | None, compile_mode: str = "off") -> Outcome:
    loss_config = config.loss_config()
    dataset = setup.build_dataset(config, videos)
    corpus = setup.corpus_key(config.data, dataset.videos)
    setup.check_corpus(state.get("corpus") if state else None, corpus)  # on every rank alike
    n_videos = len(dataset.videos)
    clips_per_step = config.clips_per_step(world.size)
    amp_dtype = resolve_amp(config.precision, device)
    model, optimizer, n = setup.build_run(config, loss_config, device, world, state, compile_mode)
    total_steps = config.total_steps(n_videos, world.size, n.step, n.samples)
    note = emulated_bf16_note(amp_dtype, device)  # only an explicit --precision bf16 gets here
    if note and world.is_main:
        print(f"timecycle: note: {note}", file=sys.stderr, flush=True)
    if compile_mode != "off" and world.is_main:
        # torch.compile is lazy: the first step compiles (forward and backward), and the first
        # logged probe (no grad) once more.
        print(f"timecycle: compiling the tracker's cycles (mode {compile_mode}): about a "
              "minute", file=sys.stderr, flush=True)
    env = environment(device)
    if world.is_main:
        write_json_atomic(run_dir / "config.json", {
            "train": config.to_dict(),
            "resolved": {"total_steps": total_steps, "start_step": n.step, "n_videos": n_videos,
                         "clips_per_epoch": n_videos * config.clips_per_video,
                         "world_size": world.size, "effective_batch": clips_per_step,
                         "device": str(device), "precision": str(amp_dtype or "fp32"),
                         "compile_cycles": compile_mode},
            "clip": asdict(dataset.config), "loss": asdict(loss_config), "environment": env,
        })
    if n.step >= total_steps:
        return Outcome(run_dir, n.step, total_steps, stopped=False, nonfinite=n.nonfinite)

    def save(numbered: bool, best: bool = False) -> None:  # a collective: all ranks call it
        rng = ckpt.rng_state(device)
        every_rng = distributed.gather_objects(rng, world)
        if numbered:
            distributed.check_replicas(model, world)
        if world.is_main:
            ckpt.save_checkpoint(run_dir, {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "step": n.step, "samples": n.samples, "nonfinite": n.nonfinite, "rng": rng,
                **({"rng_ranks": every_rng} if world.distributed else {}),
                "config": config.to_dict(), "environment": env, "best_eval_jf": best_jf,
                "corpus": corpus,
            }, n.step, config.keep_last, numbered, best)
        distributed.barrier(world, device)

    built: dict = {}

    def build_proxy() -> None:  # rank 0 only; a bad --eval-davis stops every rank
        from timecycle.engine.evaluation import DavisProxy

        built["proxy"] = DavisProxy(config.eval_davis, config.eval_sequences or None,
                                    config.eval_frames, config.eval_size)

    if config.eval_davis:
        distributed.on_main(build_proxy, world)
    proxy = built.get("proxy")
    best_jf = state.get("best_eval_jf") if state else None

    loader = make_loader(dataset, config.batch_size, config.workers, start_index=n.samples,
                         seed=config.seed, rank=world.rank, world_size=world.size,
                         total=n.samples + (total_steps - n.step) * clips_per_step,
                         block=config.batch_size)
    log = MetricsLog(run_dir, n.step, config.tensorboard, enabled=world.is_main)
    bar = tqdm(total=total_steps, initial=n.step, disable=not (config.progress and world.is_main),
               unit="step", dynamic_ncols=True)
    model.train()
    if config.batchnorm == "frozen":
        freeze_batchnorm(model)
    net, frozen, consecutive, meter = model, None, 0, Meter(
        WALK_TERMS if config.objective == "crw" else TERMS)
    stopped, last_save, batches = False, time.monotonic(), iter(loader)
    session_start, session_samples = last_save, n.samples
    # Rank 0's evaluation also ends for a request sent to other ranks alone (while they wait
    # for it): a preempted node's ranks get the scheduler's SIGTERM, rank 0's may not.
    sharing = contextlib.ExitStack()
    any_stop = sharing.enter_context(distributed.shared_stop(stop, world))
    try:
        while n.step < total_steps:
            t_wait = time.perf_counter()
            micro = list(itertools.islice(batches, config.accum))
            data_wait = time.perf_counter() - t_wait
            if len(micro) < config.accum:  # cannot happen: the loader's total is exact
                raise RuntimeError(f"the clip stream ended at step {n.step} of {total_steps}")
            if frozen != (n.step < config.warmup_steps):
                frozen = n.step < config.warmup_steps
                model.set_encoder_trainable(not frozen)
                net = None
                gc.collect()  # the old DDP wrapper's gradient hooks go with it
                net = distributed.wrap(model, world, device)
            if compile_mode == "graphs":
                # CUDA-graph trees replay the cycles into the same output memory: a new step
                # may overwrite the last one's outputs. Here it begins. (One micro-batch a
                # step: TrainConfig refuses --accum > 1 with graphs, whose gradients the next
                # micro-batch's replay would overwrite.) Nothing kept across steps is a graph
                # output: objective_loss reduces the outputs by eager ops (total_loss, the term
                # means), train_step stacks those into a fresh tensor, and the Meter sums the
                # results. The probe's no-grad forwards record a graph of their own, and it too
                # reads only reduced losses.
                torch.compiler.cudagraph_mark_step_begin()
            result = train_step(net, optimizer, micro, loss_config, config.grad_clip, device,
                                amp_dtype, world)
            n.step += 1
            n.samples += clips_per_step
            meter.add(result.values, clips_per_step, data_wait)
            consecutive = 0 if result.values is not None else consecutive + 1
            if result.values is None:
                n.nonfinite += 1
                _nonfinite(n, consecutive, result, config.max_nonfinite, run_dir,
                           world.is_main)
            last = n.step == total_steps
            due = world.is_main and 0 < config.save_minutes * 60 <= time.monotonic() - last_save
            stopping, due = distributed.agree_any(
                [stop is not None and stop.is_set(), due], world, device)
            # A stop request skips the evaluation and the probe: the save comes first. One that
            # arrives during an evaluation ends it at the next sequence, and this step is saved.
            evaluate = config.eval_davis is not None and not stopping and (
                n.step % config.eval_every == 0 or last)
            scores, eval_s = None, 0.0
            if evaluate and proxy is not None:
                t_eval = time.perf_counter()
                scores = proxy.score(model.encoder, device, abort=any_stop)
                eval_s = time.perf_counter() - t_eval
                meter.exclude(eval_s)  # clips/s is the training's own rate
            improved, late = distributed.agree_any(
                [scores is not None and (best_jf is None or scores["J&F"] > best_jf),
                 any_stop()], world, device) if evaluate else (False, False)
            stopping = stopping or late  # asked during the evaluation: save this step now
            if improved and scores is not None:
                best_jf = scores["J&F"]
            probe = config.probe_every > 0 and not stopping and (
                n.step % config.probe_every == 0 or last)
            if n.step % config.log_every == 0 or last or stopping or evaluate or probe:
                record = {"step": n.step, "epoch": n.samples / (n_videos * config.clips_per_video),
                          "samples": n.samples, **meter.summary(),
                          "lr": optimizer.param_groups[0]["lr"], "frozen": bool(frozen)}
                # The unrelated-frames diagnostic, on this step's last batch (not with
                # SyncBatchNorm across processes: its forward is a collective).
                # Its time is outside the window: the meter restarts after the record.
                if probe and world.is_main and not (config.sync_bn and world.distributed):
                    t_probe = time.perf_counter()
                    record.update(probe_losses(model, micro[-1], loss_config, device, amp_dtype))
                    record["probe_s"] = time.perf_counter() - t_probe
                if scores is not None:
                    record.update(eval_jf=scores["J&F"], eval_j=scores["J"], eval_f=scores["F"],
                                  eval_best_jf=best_jf, eval_label=str(proxy.label),
                                  eval_s=eval_s)
                log.write(record)
                bar.set_postfix(loss=_fmt(record["loss"]), clips_s=f"{record['clips_per_s']:.1f}")
                meter.reset()
            bar.update(1)
            numbered = n.step % config.save_every == 0 or last
            if numbered or stopping or due or improved:
                save(numbered, best=improved)
                last_save = time.monotonic()
            if stopping:
                stopped = not last
                break
    finally:
        # The loader's workers ignore SIGTERM (data/sampler.py seed_worker), and an exception's
        # traceback can keep the loader alive until exit, where multiprocessing's exit handler
        # would SIGTERM them and wait forever: end them here, as a finished loader would.
        shutdown = getattr(batches, "_shutdown_workers", None)  # absent with workers=0
        if shutdown is not None:
            shutdown()
        sharing.close()
        bar.close()
        log.close()
        if proxy is not None:
            proxy.close()
    return Outcome(run_dir, n.step, total_steps, stopped, n.samples - session_samples,
                   time.monotonic() - session_start, n.nonfinite, consecutive)


def _nonfinite(n: setup.Counters, consecutive: int, result: StepResult, limit: int,
               run_dir: Path, warn: bool = True) -> None:
    """Warn about a skipped step; stop the run after `limit` of them in a row (the decision
    is the same on every rank: the loss was averaged over them, the gradients all-reduced)."""
    loss = result.loss.item()
    what = (f"non-finite loss {loss}" if not math.isfinite(loss) else
            f"non-finite gradient norm {result.grad_norm.item()} (loss {loss:.4f})")
    if warn:
        warnings.warn(f"step {n.step}: {what}, update skipped "
                      f"({consecutive} in a row, {n.nonfinite} in all)", RuntimeWarning,
                      stacklevel=3)
    if consecutive >= limit:
        # Without a checkpoint the command removes the run folder: say so, not "last.pt holds".
        kept = (f"{run_dir / ckpt.LAST} holds the last saved state" if ckpt.has_checkpoint(run_dir)
                else "no checkpoint was saved, so the run folder is not kept")
        raise UserError(
            f"stopped at step {n.step}: {consecutive} non-finite steps (loss or gradient) in a "
            f"row (the model was not updated by them; {kept}). Try a lower --lr, "
            "--warmup-steps N, or --loss code")


def _fmt(x: float | None) -> str:
    return "nan" if x is None else f"{x:.4f}"
