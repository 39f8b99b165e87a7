"""What a training run is built from: its videos and their key, the model of its objective,
the clip stream, Adam, and each process's generators, from scratch or from a checkpoint.

engine/train.py runs the loop over these; bench/ and the demo build the same pieces through
here, so a benchmark measures the model and optimiser a run trains.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from timecycle.data import ClipDataset, VideoRecord, build_index
from timecycle.data.walk import WalkDataset
from timecycle.engine import checkpoint as ckpt
from timecycle.engine import distributed
from timecycle.engine.config import TrainConfig
from timecycle.engine.distributed import World
from timecycle.errors import UserError
from timecycle.losses import LossConfig
from timecycle.tracker import ContrastiveWalk, TimeCycle


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


def corpus_key(folders: list[str], videos: list[VideoRecord]) -> dict:
    """What fixes the clip stream: the videos in order, each by its path under its --data
    folder (so a moved folder keeps its key) and its length. Saved in checkpoints; `--resume`
    refuses another corpus, which would read other clips than the run's."""
    roots = [Path(f).resolve() for f in folders]
    entries = []
    for rec in videos:
        path = Path(rec.path)
        i = next((i for i, r in enumerate(roots) if path == r or path.is_relative_to(r)), -1)
        entries.append([i, path.name if i < 0 or path == roots[i]
                        else path.relative_to(roots[i]).as_posix(), rec.n_frames])
    digest = hashlib.sha256(json.dumps(entries).encode()).hexdigest()
    return {"n_videos": len(videos), "sha256": digest}


def check_corpus(saved: dict | None, now: dict) -> None:
    if saved is None or saved == now:  # None: a checkpoint from before the key was saved
        return
    raise UserError(f"the videos under --data are not the ones this run was trained on "
                    f"({saved.get('n_videos')} videos then, {now['n_videos']} now, or other "
                    "ones): resuming would read another clip stream; resume with the run's "
                    "--data (a moved folder is fine), or start a new run (another --out)")


@contextlib.contextmanager
def determinism(enabled: bool, device: torch.device):
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


def seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


@dataclass
class Counters:
    """What a checkpoint restores besides the model, optimiser and RNG states."""

    step: int = 0  # batches processed (skipped non-finite ones included)
    samples: int = 0  # global index of the next clip: start + steps x clips_per_step
    nonfinite: int = 0  # skipped steps so far


def build_model(config: TrainConfig, loss_config: LossConfig | None = None) -> torch.nn.Module:
    """The randomly initialised model of `config`'s objective (seeded by config.seed)."""
    if config.objective == "crw":
        return ContrastiveWalk.build(config.arch, config.seed, config.padding,
                                     temperature=config.walk_temperature,
                                     edge_dropout=config.walk_dropout,
                                     layer4=config.walk_layer4)
    model = TimeCycle.build(config.arch, loss_config or config.loss_config(), config.crop,
                            config.patch, config.seed)
    model.encoder.set_padding_mode(config.padding)
    return model


def build_dataset(config: TrainConfig, videos: list[VideoRecord]) -> ClipDataset:
    """The clip stream of `config`'s objective."""
    try:
        if config.objective == "crw":
            return WalkDataset(videos, config.walk_config(), seed=config.seed)
        return ClipDataset(videos, config.clip_config(), seed=config.seed)
    except UserError as err:
        if err.path is not None:
            raise
        # e.g. no usable videos: say where they were looked for
        raise UserError(f"{err} under --data {', '.join(config.data)}") from None


def make_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Adam:
    """Adam with the config's rate, betas and weight decay (SPEC 5; SPEC 9 for CRW).

    The fused implementation, on every device: one kernel for all parameters. Measured on 2 CPU
    threads for ResNet-18's parameters: 5.3 ms a step against 89 ms for the default per-tensor
    loop; on CUDA it replaces a dozen multi-tensor launches. The update is Adam's up to
    rounding, and the state dict is the plain one, so old checkpoints resume into it.
    """
    return torch.optim.Adam(model.parameters(), lr=config.lr, betas=config.betas,
                            weight_decay=config.weight_decay, fused=True)


def compile_cycles(model: TimeCycle, mode: str) -> None:
    """torch.compile `model.cycles` for `resolve_compile`'s mode "on" or "graphs" (CUDA graphs,
    mode="reduce-overhead"); "off" leaves it eager. bench/train.py compiles through this too.

    An instance attribute over the method: forward calls it, the state dict and the
    checkpoints keep their keys (compiling the whole module would prefix them).
    """
    if mode == "off":
        return
    # Every run compiles as in a fresh process: on an H200 a compiled run that followed a
    # `graphs` run in the same process drifted from its eager losses (bench/learning.py and the
    # tests train several models in one process). reset() also clears the CUDA graph trees.
    torch._dynamo.reset()
    graphs = {"mode": "reduce-overhead"} if mode == "graphs" else {}
    model.cycles = torch.compile(model.cycles, dynamic=False, **graphs)


def build_run(config: TrainConfig, loss_config: LossConfig, device: torch.device, world: World,
              state: dict | None, compile_mode: str = "off"
              ) -> tuple[TimeCycle, torch.optim.Optimizer, Counters]:
    """The model and Adam on `device`, from scratch (seeded) or from a checkpoint `state`;
    then this process's generators: seed + rank, or the checkpoint's. `compile_mode`:
    `resolve_compile`'s "off", "on" or "graphs" for the tracker's cycles."""
    seed_all(config.seed)  # the same initial model on every rank (DDP broadcasts rank 0's too)
    model = build_model(config, loss_config)
    if config.sync_bn:
        model = distributed.convert_sync_batchnorm(model, world, device)
    model.to(device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    compile_cycles(model, compile_mode)
    optimizer = make_optimizer(model, config)
    if state is None:
        seed_all(config.seed + world.rank)
        return model, optimizer, Counters()
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    for group in optimizer.param_groups:
        group["lr"] = config.lr  # a resumed run may change the learning rate
    n = Counters(int(state["step"]), int(state["samples"]), int(state.get("nonfinite", 0)))
    per_rank = state.get("rng_ranks") or [state["rng"]]
    if len(per_rank) == world.size:
        ckpt.set_rng_state(per_rank[world.rank], device)
    else:  # another number of processes than the saving run: fresh, distinct streams
        seq = np.random.SeedSequence([config.seed, world.rank, n.step])
        seed_all(int(seq.generate_state(1)[0]))
    return model, optimizer, n
