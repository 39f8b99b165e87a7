"""`timecycle propagate vip` and `timecycle evaluate vip`: human parts and mIoU (SPEC 6, 7)."""

from __future__ import annotations

import argparse

from timecycle.cli.common import (
    add_propagate_args,
    add_root_args,
    check_at_least,
    check_out_apart,
    check_tile,
    print_propagated,
    start_propagation,
    take_recorded,
)
from timecycle.datasets.outputs import output_folder
from timecycle.propagation.presets import PROTOCOLS_BY_BENCHMARK

PRESETS = PROTOCOLS_BY_BENCHMARK["vip"]


def _add_root_args(p: argparse.ArgumentParser, recorded: bool = False) -> None:
    add_root_args(p, "VIP root (Images/, Annotations/Category_ids/, lists/)",
                  "a list file or comma-separated names", "lists/val_videos.txt", recorded)


def add_propagate_parser(bench) -> None:
    p = bench.add_parser("vip", help="VIP part labels (writes one palettised PNG per frame)")
    _add_root_args(p)
    add_propagate_args(p, PRESETS, "results folder: one folder of PNGs per video")
    p.set_defaults(run=run_propagate)


def add_evaluate_parser(bench) -> None:
    p = bench.add_parser("vip", help="VIP mIoU over the 20 classes (the VIP evaluation)")
    _add_root_args(p, recorded=True)
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
    from timecycle.propagation.presets import get_benchmark_protocol
    from timecycle.propagation.vip import propagate_vip

    check_at_least(args, 1, "--batch-size")
    check_tile(args)
    with output_folder(args.out):  # checked first; what a failed run added is removed
        protocol = get_benchmark_protocol("vip", args.protocol)
        root = VipRoot(args.root)
        check_out_apart(args.out, root.inputs)
        names = root.video_names(args.videos)
        if args.evaluate:  # nothing to score is found before the work, not after it
            from timecycle.metrics.vip import frame_0_only

            frame_0_only(root, {n: root.video(n).annotated() for n in names})
        frame_encoder, provenance = start_propagation(
            args, "vip", protocol, {"vip_root": str(root.root.resolve())})
        stats = propagate_vip(root, names, args.out, frame_encoder, protocol, provenance,
                              args.batch_size, args.tile, progress=not args.quiet)
        print_propagated(stats, len(names), "video", args.out)
    if args.evaluate:  # the predictions are whole now: a failed scoring leaves them
        with output_folder(args.out):  # and removes the score files it wrote
            evaluate_and_print(root, args.out, names)
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from timecycle.datasets.vip import VipRoot

    take_recorded(args, "vip")
    root = VipRoot(args.root)
    check_out_apart(args.results, root.inputs)
    names = root.video_names(args.videos)
    with output_folder(args.results, reading=True):  # a failed scoring removes its score files
        evaluate_and_print(root, args.results, names)
    return 0
