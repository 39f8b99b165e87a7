"""The training loop: `train(config) -> run folder`, used by `timecycle train` and the demo.

    from timecycle.engine.config import make_config
    from timecycle.engine.train import train

    run = train(make_config("small", data=["videos/"], out="runs/small", steps=300))
    # run / "last.pt" loads with `timecycle propagate davis --weights run/last.pt`

Launch recipes:
    one CPU or GPU:  timecycle train --data DIR --out RUN [--preset small]
    resume:          timecycle train --data DIR --out RUN --resume [--steps N]

Layout (STYLE 3): the model (`TimeCycle`) is pure; this module alone touches the device,
precision, logging and checkpoints. `train_step` is one optimiser step on one batch and knows
nothing of the run; `train` sets up, loops and saves. Distributed training (next issue) wraps
the model, passes its rank to the loader and lets rank 0 alone log and save.

Warm-up (SPEC 4): for the first `warmup_steps` steps the encoder's parameters are frozen and
only the localizer g learns. The encoder stays in train mode: its BatchNorm normalises with
batch statistics, as it will after the warm-up, so g learns on the features it will see next.
(In eval mode a randomly initialised encoder would use the default running statistics, mean 0
and variance 1, i.e. not normalise at all.) The running statistics keep tracking the frozen
encoder, which is what they should describe.

Steps count batches: a step whose loss (or gradient norm) is not finite is skipped (no update)
and counted, and `max_nonfinite` of them in a row stop the run with a UserError.
"""

from __future__ import annotations

import contextlib
import os
import random
import threading
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from timecycle.data import ClipDataset, VideoRecord, build_index, make_loader
from timecycle.datasets.io import write_json_atomic
from timecycle.engine import checkpoint as ckpt
from timecycle.engine.config import TrainConfig, check_resumable
from timecycle.engine.logging import TERMS, Meter, MetricsLog
from timecycle.engine.runtime import environment, resolve_device
from timecycle.errors import UserError
from timecycle.losses import LossConfig, total_loss
from timecycle.tracker import TimeCycle


@dataclass
class StepResult:
    """One step's detached scalars (None when the step was skipped as non-finite)."""

    values: dict[str, torch.Tensor] | None
    loss: torch.Tensor


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: dict,
               loss_config: LossConfig, grad_clip: float, device: torch.device,
               amp_dtype: torch.dtype | None = None) -> StepResult:
    """Forward, loss, backward, clip, update on one batch of clips.

    batch: frames (B, K+1, 3, S, S), patch (B, 3, P, P), theta_gt (B, 2, 3) (`ClipDataset`).
    Returns the total loss, each term reduced over its K steps, and the gradient norm before
    clipping; `values` is None and no update is made when the loss or the gradient norm is not
    finite. One device sync per step (the finiteness test).
    """
    # contiguous(): one memory layout whatever made the batch. Collated in the main process,
    # frames keep to_tensor's channels-last strides; from DataLoader workers they arrive
    # contiguous; the two layouts pick different convolution kernels (different rounding).
    frames, patch, theta = (batch[k].to(device, non_blocking=True).contiguous()
                            for k in ("frames", "patch", "theta_gt"))
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        out = model(frames, patch, theta)
    terms = {k: out[k].float() for k in TERMS}
    loss = total_loss(terms, loss_config)
    if not torch.isfinite(loss):
        return StepResult(None, loss.detach())
    loss.backward()
    params = [p for p in model.parameters() if p.grad is not None]
    grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
    if not torch.isfinite(grad_norm):
        optimizer.zero_grad(set_to_none=True)
        return StepResult(None, loss.detach())
    optimizer.step()
    reduce = torch.sum if loss_config.step_reduction == "sum" else torch.mean
    values = {"loss": loss.detach(), "grad_norm": grad_norm.detach()}
    values.update({k: reduce(v.detach()) for k, v in terms.items()})
    return StepResult(values, loss.detach())


def index_videos(folders: list[str], run_dir: Path, workers: int = 8) -> list[VideoRecord]:
    """One index per --data folder (cached at RUN/video_index.json, RUN/video_index-1.json,
    ...), concatenated; a video listed twice is used once."""
    if not folders:
        raise UserError("no --data folder given")
    videos: dict[str, VideoRecord] = {}
    for i, folder in enumerate(folders):
        cache = run_dir / ("video_index.json" if i == 0 else f"video_index-{i}.json")
        for rec in build_index(folder, cache, workers=max(1, workers)).videos:
            videos.setdefault(rec.path, rec)
    return list(videos.values())


@contextlib.contextmanager
def _determinism(enabled: bool, device: torch.device):
    """Deterministic kernels for the duration of a run (global torch state, restored after).

    Exact on the CPU. On CUDA it is best effort (warn_only): grid_sample's backward, which the
    tracker needs, has no deterministic CUDA kernel.
    """
    if not enabled:
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed shapes: pick the fastest kernels once
        yield
        return
    before = (torch.are_deterministic_algorithms_enabled(),
              torch.is_deterministic_algorithms_warn_only_enabled(),
              torch.backends.cudnn.benchmark)
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=device.type == "cuda")
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.backends.cudnn.benchmark = before[2]


def _seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def train(config: TrainConfig, resume: bool = False,
          stop: threading.Event | None = None) -> Path:
    """Train TimeCycle as `config` says; returns the run folder (RUN/last.pt holds the model).

    resume: continue RUN/last.pt (model, optimiser, step, clip stream position, RNG states) up
        to config's steps; the fields of `FIXED_ON_RESUME` must match the checkpoint's config.
    stop: when set (e.g. by a signal handler), the run saves a checkpoint after the current
        step and returns.
    """
    run_dir = Path(config.out)
    state = None
    if resume:
        state = ckpt.load_checkpoint(run_dir / ckpt.LAST)
        check_resumable(TrainConfig.from_dict(state["config"]), config)
    elif (run_dir / ckpt.LAST).exists():
        raise UserError(f"already holds a run ({ckpt.LAST}); pass --resume to continue it, "
                        "or choose another --out", run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(config.device)
    threads = torch.get_num_threads()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    try:
        with _determinism(config.deterministic, device):
            return _run(config, run_dir, device, state, stop)
    finally:
        torch.set_num_threads(threads)


@dataclass
class Counters:
    """What a checkpoint restores besides the model, optimiser and RNG states."""

    step: int = 0  # batches processed (skipped non-finite ones included)
    samples: int = 0  # global index of the next clip: start + steps x batch x world size
    nonfinite: int = 0  # skipped steps so far


def _build(config: TrainConfig, loss_config: LossConfig, device: torch.device,
           state: dict | None) -> tuple[TimeCycle, torch.optim.Optimizer, Counters]:
    """The model and Adam on `device`, from scratch (seeded) or from a checkpoint `state`."""
    model = TimeCycle.build(config.arch, loss_config, config.crop, config.patch, config.seed)
    model.to(device)
    if device.type == "cuda" and config.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, betas=config.betas,
                                 weight_decay=config.weight_decay)
    if state is None:
        return model, optimizer, Counters()
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    for group in optimizer.param_groups:
        group["lr"] = config.lr  # a resumed run may change the learning rate
    ckpt.set_rng_state(state["rng"])
    return model, optimizer, Counters(int(state["step"]), int(state["samples"]),
                                      int(state.get("nonfinite", 0)))


def _run(config: TrainConfig, run_dir: Path, device: torch.device, state: dict | None,
         stop: threading.Event | None) -> Path:
    rank, world_size = 0, 1  # the distributed launcher will set these
    is_main = rank == 0
    _seed_all(config.seed)
    loss_config, clip_config = config.loss_config(), config.clip_config()
    dataset = ClipDataset(index_videos(config.data, run_dir, config.workers), clip_config,
                          seed=config.seed)
    n_videos = len(dataset.videos)
    total_steps = config.total_steps(n_videos, world_size)
    clips_per_step = config.batch_size * world_size
    amp_dtype = torch.bfloat16 if config.precision == "bf16" or (
        config.precision == "auto" and device.type == "cuda") else None
    model, optimizer, n = _build(config, loss_config, device, state)
    env = environment(device)
    if is_main:
        write_json_atomic(run_dir / "config.json", {
            "train": config.to_dict(),
            "resolved": {"total_steps": total_steps, "start_step": n.step, "n_videos": n_videos,
                         "clips_per_epoch": n_videos * config.clips_per_video,
                         "device": str(device), "precision": str(amp_dtype or "fp32"),
                         "world_size": world_size},
            "clip": asdict(clip_config), "loss": asdict(loss_config), "environment": env,
        })
    if n.step >= total_steps:
        return run_dir

    def save(numbered: bool) -> None:
        if is_main:
            ckpt.save_checkpoint(run_dir, {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "step": n.step, "samples": n.samples, "nonfinite": n.nonfinite,
                "rng": ckpt.rng_state(), "config": config.to_dict(), "environment": env,
            }, n.step, config.keep_last, numbered)

    loader = make_loader(dataset, config.batch_size, config.workers, start_index=n.samples,
                         seed=config.seed, rank=rank, world_size=world_size,
                         total=n.samples + (total_steps - n.step) * clips_per_step)
    log = MetricsLog(run_dir, n.step, config.tensorboard, enabled=is_main)
    bar = tqdm(total=total_steps, initial=n.step, disable=not (config.progress and is_main),
               unit="step", dynamic_ncols=True)
    model.train()
    frozen, consecutive, meter = None, 0, Meter()
    t_wait = time.perf_counter()
    try:
        for batch in loader:
            data_wait = time.perf_counter() - t_wait
            if frozen != (n.step < config.warmup_steps):
                frozen = n.step < config.warmup_steps
                model.set_encoder_trainable(not frozen)
            result = train_step(model, optimizer, batch, loss_config, config.grad_clip,
                                device, amp_dtype)
            n.step += 1
            n.samples += clips_per_step
            meter.add(result.values, clips_per_step, data_wait)
            consecutive = 0 if result.values is not None else consecutive + 1
            if result.values is None:
                n.nonfinite += 1
                _nonfinite(n, consecutive, result.loss, config.max_nonfinite, run_dir)
            last = n.step == total_steps
            if n.step % config.log_every == 0 or last:
                record = {"step": n.step, "epoch": n.samples / (n_videos * config.clips_per_video),
                          "samples": n.samples, **meter.summary(),
                          "lr": optimizer.param_groups[0]["lr"], "frozen": bool(frozen)}
                log.write(record)
                bar.set_postfix(loss=_fmt(record["loss"]), clips_s=f"{record['clips_per_s']:.1f}")
                meter.reset()
            bar.update(1)
            stopping = stop is not None and stop.is_set()
            if n.step % config.save_every == 0 or last or stopping:
                save(numbered=n.step % config.save_every == 0 or last)
            if stopping:
                break
            t_wait = time.perf_counter()
    finally:
        bar.close()
        log.close()
    return run_dir


def _nonfinite(n: Counters, consecutive: int, loss: torch.Tensor, limit: int,
               run_dir: Path) -> None:
    """Warn about a skipped step; stop the run after `limit` of them in a row."""
    warnings.warn(f"step {n.step}: non-finite loss {loss.item()}, update skipped "
                  f"({consecutive} in a row, {n.nonfinite} in all)", RuntimeWarning,
                  stacklevel=3)
    if consecutive >= limit:
        raise UserError(
            f"stopped at step {n.step}: {consecutive} non-finite losses in a row (the "
            f"parameters were not updated by them; {run_dir / ckpt.LAST} holds the last saved "
            "state, if any). Try a lower --lr, --warmup-steps N, or --loss code")


def _fmt(x: float | None) -> str:
    return "nan" if x is None else f"{x:.4f}"
