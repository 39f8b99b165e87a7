"""How long the demo will take here: one training step is timed, the other stages counted in
such steps."""

from __future__ import annotations

import time
from pathlib import Path

from timecycle.demo.config import DemoConfig, train_config

# The stages other than training, in fp32 probe steps (`probe_step_seconds`), as measured with
# --steps 10 on a loaded 2-core CPU (probe 3.5 s; generate 4.1 s, propagate and score with the
# four encoders 101 s, report 4.7 s): the ratios, not the seconds, carry over to another machine
# or load. A training step cost 1.15 probe steps there (the DataLoader workers decode clips on
# the same cores). A user's clip is propagated once, at about 3.4 probe steps per frame
# megapixel (0.125 per 256x144 frame with the crw protocol).
TRAIN_STEP_COST = 1.15
STAGE_STEPS = {"generate": 1.2, "propagate": 29.0, "report": 1.3}
CLIP_STEPS_PER_MEGAPIXEL = 3.4


def probe_step_seconds(cfg: DemoConfig) -> tuple[float, float]:
    """Seconds that one training step of the demo's model takes on this machine now, in fp32
    (the unit of `STAGE_STEPS`: propagation runs in fp32) and at the precision training will
    use (bf16 where `amp_dtype` picks it: ~1.8x faster on CPUs with native bf16). Each is the
    second of two steps on random clips (the first pays for allocation and kernel choice)."""
    import torch

    from timecycle.engine.distributed import World, resolve_device
    from timecycle.engine.runtime import amp_dtype
    from timecycle.engine.setup import make_optimizer
    from timecycle.engine.step import train_step
    from timecycle.tracker import TimeCycle

    config = train_config(cfg, Path("."), Path("."))
    device = resolve_device(config.device, World())
    loss_config, clip = config.loss_config(), config.clip_config()
    state = torch.random.get_rng_state()
    model = TimeCycle.build(config.arch, loss_config, config.crop, config.patch, config.seed)
    model.to(device).train()
    optimizer = make_optimizer(model, config)
    b = config.batch_size
    batch = {"frames": torch.rand(b, clip.n_past + 1, 3, config.crop, config.crop),
             "patch": torch.rand(b, 3, config.patch, config.patch),
             "theta_gt": torch.eye(2, 3).expand(b, 2, 3).contiguous()}

    def step_seconds(amp: torch.dtype | None) -> float:
        times = []
        for _ in range(2):
            start = time.perf_counter()
            train_step(model, optimizer, batch, loss_config, config.grad_clip, device, amp)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - start)
        return times[-1]

    fp32 = step_seconds(None)
    amp = amp_dtype(config.precision, device)
    train = fp32 if amp is None else step_seconds(amp)
    torch.random.set_rng_state(state)  # the demo's own draws are unchanged by the probe
    return fp32, train


def estimate_seconds(cfg: DemoConfig, step_s: float, *, builtin: bool, clip: dict | None = None,
                     train_step_s: float | None = None) -> dict[str, float]:
    """{stage: estimated seconds} for the stages this demo will run, from one fp32 probe step of
    `step_s` seconds and one at the training precision of `train_step_s` (default `step_s`).
    `builtin`: the built-in weights are propagated too (where this install has them). `clip`:
    the user's clip ({frames, width, height}), else the synthetic set."""
    stages: dict[str, float] = {}
    if clip is None:
        stages["generate"] = STAGE_STEPS["generate"] * step_s
    if cfg.weights is None:
        stages["train"] = cfg.steps * TRAIN_STEP_COST * (train_step_s or step_s)
    # Calibrated with four encoders on the synthetic set (two ResNets) and one on a clip; the
    # built-in weights add one ResNet run to each.
    if clip is None:
        stages["propagate"] = STAGE_STEPS["propagate"] * step_s * (1.5 if builtin else 1.0)
    else:
        megapixels = clip["frames"] * clip["width"] * clip["height"] / 1e6
        stages["propagate"] = (CLIP_STEPS_PER_MEGAPIXEL * megapixels * step_s
                               * (2 if builtin else 1))
    stages["report"] = STAGE_STEPS["report"] * step_s
    return stages


def minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"
