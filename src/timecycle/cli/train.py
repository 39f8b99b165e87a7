"""`timecycle train`: learn an encoder by cycle-consistency on a folder of unlabeled videos.

    timecycle train --data DIR --out RUN --preset small            # a few minutes on a CPU
    timecycle train --data DIR [--data DIR2] --out RUN             # the paper's recipe
    timecycle train --out RUN --resume --steps 2000                # continue RUN/last.pt

The config is the preset, then the flags given; with --resume it is the run's saved config,
then the flags given (steps, device, workers, logging and lr may change; the model and the
clip stream may not).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def _fps(text: str) -> float:
    if text == "native":
        return 0.0
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number or 'native': {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("must be > 0 (or 'native')")
    return value


def register(sub) -> None:
    from timecycle.engine.config import PRESETS, PRECISIONS
    from timecycle.losses import PRESETS as LOSSES

    p = sub.add_parser("train", help="train an encoder by cycle-consistency on unlabeled video",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", action="append", metavar="DIR",
                   help="folder of videos or frame folders; repeat for several (one index each)")
    p.add_argument("--out", required=True, metavar="RUN",
                   help="run folder: config.json, metrics.jsonl, tb/, last.pt, step-*.pt")
    p.add_argument("--preset", choices=PRESETS, help="full (the paper, default) or small (CPU)")
    p.add_argument("--loss", choices=LOSSES, help="paper (default) or code (public code)")
    p.add_argument("--arch", choices=("resnet50", "resnet18"))
    p.add_argument("--batch-size", type=int, help="clips per step (full: 32)")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--steps", type=int, help="optimiser steps (overrides --epochs)")
    length.add_argument("--epochs", type=float,
                        help="passes of clips-per-video clips of every video (full: 30)")
    p.add_argument("--device", help="auto (default), cpu, cuda or cuda:N")
    p.add_argument("--precision", choices=PRECISIONS, help="auto: bf16 on CUDA, fp32 on CPU")
    p.add_argument("--resume", action="store_true", help="continue RUN/last.pt")
    p.add_argument("--workers", type=int, help="DataLoader processes")
    p.add_argument("--threads", type=int,
                   help="CPU threads of the training process (default: torch's choice)")
    p.add_argument("--save-every", type=int, help="steps between numbered checkpoints")
    p.add_argument("--log-every", type=int, help="steps per metrics.jsonl line")
    p.add_argument("--warmup-steps", type=int, help="first steps with the encoder frozen")
    p.add_argument("--seed", type=int)
    p.add_argument("--lr", type=float, help="Adam learning rate (full: 2e-4)")
    p.add_argument("--fps", type=_fps, help="resample videos to this rate, or 'native' (full: 12)")
    p.add_argument("--deterministic", action="store_true", default=None,
                   help="deterministic kernels (exact on CPU)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=run_train)


def config_from_args(args: argparse.Namespace):
    """The resolved TrainConfig: preset (or the resumed run's config), then the given flags."""
    from timecycle.engine.checkpoint import LAST, load_checkpoint
    from timecycle.engine.config import TrainConfig, apply_overrides, make_config
    from timecycle.errors import UserError

    overrides = dict(
        data=[str(Path(d).resolve()) for d in args.data] if args.data else None, out=args.out,
        loss=args.loss, arch=args.arch, batch_size=args.batch_size, steps=args.steps,
        epochs=args.epochs, device=args.device, precision=args.precision, workers=args.workers,
        threads=args.threads,
        save_every=args.save_every, log_every=args.log_every, warmup_steps=args.warmup_steps,
        seed=args.seed, lr=args.lr, deterministic=args.deterministic, progress=not args.quiet,
    )
    overrides = {k: v for k, v in overrides.items() if v is not None}  # flags not given
    if args.fps is not None:
        overrides["fps"] = args.fps or None  # 'native' (0) -> None: no resampling
    if args.resume:
        saved = TrainConfig.from_dict(load_checkpoint(Path(args.out) / LAST)["config"])
        if args.preset and args.preset != saved.preset:
            raise UserError(f"--preset {args.preset} given, but the run was made with "
                            f"--preset {saved.preset}; leave --preset out when resuming")
        return apply_overrides(saved, **overrides)
    if not args.data:
        raise UserError("--data DIR is required (a folder of videos or frame folders)")
    return make_config(args.preset or "full", **overrides)


def run_train(args: argparse.Namespace) -> int:
    from timecycle.engine.logging import read_metrics
    from timecycle.engine.train import train

    config = config_from_args(args)
    run_dir = train(config, resume=args.resume)
    records = [r for r in read_metrics(run_dir) if r.get("loss") is not None]
    if records:
        first, last = records[0], records[-1]
        print(f"trained to step {last['step']}: loss {first['loss']:.4f} (step {first['step']}) "
              f"-> {last['loss']:.4f}, {last['clips_per_s']:.2f} clips/s -> {run_dir / 'last.pt'}")
    else:
        print(f"done -> {run_dir / 'last.pt'}")
    return 0
