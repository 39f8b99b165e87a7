"""`timecycle demo`: the whole pipeline on embedded synthetic video (or a user's clip)."""

from __future__ import annotations

import argparse


def register(sub) -> None:
    from timecycle.losses import PRESETS as LOSSES

    p = sub.add_parser(
        "demo", help="train briefly, propagate, evaluate and report on embedded synthetic video",
        description="Generate synthetic video (or take --video and --mask), train the small "
                    "preset on it briefly (unless --weights), propagate the first-frame masks "
                    "with that network, the built-in weights and the baselines, score them "
                    "(J&F) and write OUT/index.html. It first prints an estimate of how long "
                    "this takes on this machine, then a progress bar per stage.")
    p.add_argument("--out", default="demo-out", help="output folder (report at OUT/index.html)")
    p.add_argument("--steps", type=int, default=60,
                   help="training steps (default 60: the whole demo took 1.6 min on a quiet "
                        "2-core CPU, more under load)")
    p.add_argument("--device", default="auto",
                   help="for training and propagation: auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--protocol", default="crw",
                   help="propagation protocol: crw, timecycle or dino (default crw)")
    p.add_argument("--loss", default="paper", choices=LOSSES,
                   help="the TimeCycle loss preset of the training (default paper; "
                        "see README, Objectives)")
    p.add_argument("--video", help="your own clip: a video file or a folder of frames")
    p.add_argument("--mask", help="the first-frame mask of --video (palettised or greyscale PNG of ids)")
    p.add_argument("--weights", help="a checkpoint file to use instead of training (e.g. a run's "
                                     "last.pt); the built-in weights are scored beside it")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the synthetic videos, the training and the random-init network "
                        "(default 0)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from timecycle.demo import DemoConfig, run_demo

    run_demo(DemoConfig(out=args.out, steps=args.steps, device=args.device, seed=args.seed,
                        protocol=args.protocol, loss=args.loss, video=args.video, mask=args.mask,
                        weights=args.weights))
    return 0
