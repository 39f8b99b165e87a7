"""`timecycle propagate vip` and `timecycle evaluate vip`: human parts and mIoU (SPEC 6, 7)."""

from __future__ import annotations

import argparse

from timecycle.cli.common import add_encoder_args, load_encoder
from timecycle.propagation.presets import PROTOCOLS_BY_BENCHMARK

PRESETS = PROTOCOLS_BY_BENCHMARK["vip"]


def _add_root_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--root", required=True, help="VIP root (Images/, Annotations/Category_ids/, lists/)")
    p.add_argument("--videos", help="a list file or comma-separated names (default lists/val_videos.txt)")


def add_propagate_parser(bench) -> None:
    p = bench.add_parser("vip", help="VIP part labels (writes one palettised PNG per frame)")
    _add_root_args(p)
    add_encoder_args(p)
    p.add_argument("--protocol", default="crw", help=f"one of {', '.join(PRESETS)} (default crw)")
    p.add_argument("--out", required=True, help="results folder: one folder of PNGs per video")
    p.add_argument("--batch-size", type=int, default=4, help="frames encoded at once (default 4)")
    p.add_argument("--tile", type=int, default=8, help="query tile of restricted windows (default 8)")
    p.add_argument("--evaluate", action="store_true", help="score the predictions at the end")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(run=run_propagate)


def add_evaluate_parser(bench) -> None:
    p = bench.add_parser("vip", help="VIP mIoU over the 20 classes (the VIP evaluation)")
    _add_root_args(p)
    p.add_argument("--results", required=True, help="folder with one folder of PNGs per video")
    p.add_argument("--quiet", action="store_true", help="accepted for symmetry; nothing to show")
    p.set_defaults(run=run_evaluate)


def evaluate_and_print(root, results: str, names: list[str]) -> dict[str, float]:
    from timecycle.metrics.vip import evaluate_vip

    result = evaluate_vip(root, results, names)
    summary = result.summary
    print(f"mIoU {summary['mIoU']:.4f} pixel accuracy {summary['pixel_accuracy']:.4f} "
          f"({len(names)} videos, {result.frames} annotated frames)")
    print(f"results written to {results}/miou.csv")
    return summary


def run_propagate(args: argparse.Namespace) -> int:
    from timecycle.datasets.vip import VipRoot
    from timecycle.engine.runtime import environment, resolve_device
    from timecycle.propagation.presets import get_benchmark_protocol
    from timecycle.propagation.video import FrameEncoder
    from timecycle.propagation.vip import propagate_vip

    protocol = get_benchmark_protocol("vip", args.protocol)
    root = VipRoot(args.root)
    names = root.video_names(args.videos)
    device = resolve_device(args.device)
    encoder, enc_info = load_encoder(args)
    frame_encoder = None if encoder is None else FrameEncoder(encoder, protocol, device)
    provenance = {
        "benchmark": "vip",
        "protocol": protocol.to_dict(),
        **enc_info,
        "vip_root": str(root.root),
        "environment": environment(device),
    }
    stats = propagate_vip(root, names, args.out, frame_encoder, protocol, provenance,
                          args.batch_size, args.tile, progress=not args.quiet)
    print(f"propagated {len(names)} videos, {stats.frames} frames in {stats.seconds:.1f} s "
          f"({stats.frames / max(stats.seconds, 1e-9):.2f} frames/s) -> {args.out}")
    if args.evaluate:
        evaluate_and_print(root, args.out, names)
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from timecycle.datasets.vip import VipRoot

    root = VipRoot(args.root)
    evaluate_and_print(root, args.results, root.video_names(args.videos))
    return 0
