"""`timecycle demo`: the whole pipeline on embedded synthetic video (or a user's clip)."""

from __future__ import annotations

import argparse


def register(sub) -> None:
    from timecycle.losses import PRESETS as LOSSES

    p = sub.add_parser("demo", help="train briefly, propagate, evaluate and report on embedded synthetic video")
    p.add_argument("--out", default="demo-out", help="output folder (report at OUT/index.html)")
    p.add_argument("--steps", type=int, default=60,
                   help="training steps (default 60: the whole demo within ~5 minutes on 2 cores)")
    p.add_argument("--device", default="auto")
    p.add_argument("--protocol", default="crw", help="propagation protocol (default crw)")
    p.add_argument("--loss", default="paper", choices=LOSSES,
                   help="training objective (default paper, see README)")
    p.add_argument("--video", help="your own clip: a video file or a folder of frames")
    p.add_argument("--mask", help="the first-frame mask of --video (palettised or greyscale PNG of ids)")
    p.add_argument("--weights", help="a trained checkpoint to use instead of training")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from timecycle.demo import DemoConfig, run_demo

    run_demo(DemoConfig(out=args.out, steps=args.steps, device=args.device, seed=args.seed,
                        protocol=args.protocol, loss=args.loss, video=args.video, mask=args.mask,
                        weights=args.weights))
    return 0
