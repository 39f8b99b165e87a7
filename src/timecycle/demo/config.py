"""The demo's settings, and the training config they imply."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class DemoConfig:
    out: str = "demo-out"
    steps: int = 60  # small-preset steps; the whole demo then took 1.6 min on 2 quiet cores
    batch_size: int = 8
    workers: int = 2
    device: str = "auto"
    seed: int = 0
    protocol: str = "crw"
    loss: str = "paper"  # SPEC 4 paper preset; see the README on what both objectives did here
    video: str | None = None  # a user's clip instead of the synthetic set
    mask: str | None = None
    weights: str | None = None  # a trained checkpoint: skip training


def train_config(cfg: DemoConfig, data: Path, run: Path):
    """The `small` preset as the demo trains it, on `data` into `run`."""
    from timecycle.engine.config import make_config

    # Eager even on CUDA: a minute of compiling is more than the demo's few dozen steps can
    # win back, and `probe_step_seconds` times the eager step.
    return make_config("small", data=[str(data)], out=str(run), steps=cfg.steps,
                       batch_size=cfg.batch_size, workers=cfg.workers, device=cfg.device,
                       seed=cfg.seed, fps=None, loss=cfg.loss, compile_cycles="off")
