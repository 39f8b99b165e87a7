"""`timecycle propagate jhmdb` and `timecycle evaluate jhmdb`: keypoints and PCK (SPEC 6, 7)."""

from __future__ import annotations

import argparse
import math

from timecycle.cli.common import (
    add_propagate_args,
    add_root_args,
    check_at_least,
    check_out_apart,
    check_tile,
    counted,
    print_propagated,
    start_propagation,
    take_recorded,
)
from timecycle.datasets.outputs import output_folder
from timecycle.propagation.presets import PROTOCOLS_BY_BENCHMARK

PRESETS = PROTOCOLS_BY_BENCHMARK["jhmdb"]


def _add_root_args(p: argparse.ArgumentParser, recorded: bool = False) -> None:
    add_root_args(p, "JHMDB root (Rename_Images/, joint_positions/)",
                  "a list file (<class>/<video> lines, or CRW's '<frames dir> "
                  "<joint_positions.mat>' lines) or comma-separated <class>/<video> names",
                  "every video under Rename_Images", recorded)


def add_propagate_parser(bench) -> None:
    p = bench.add_parser("jhmdb", help="JHMDB keypoints (writes <out>/<class>/<video>.npy)")
    _add_root_args(p)
    add_propagate_args(p, PRESETS, "results folder: one (T, 15, 2) .npy per video")
    p.set_defaults(run=run_propagate)


def add_evaluate_parser(bench) -> None:
    p = bench.add_parser("jhmdb", help="JHMDB PCK@0.1..0.5 (the CRW/UVC evaluation)")
    _add_root_args(p, recorded=True)
    p.add_argument("--results", required=True, help="folder with <class>/<video>.npy predictions")
    p.add_argument("--quiet", action="store_true", help="accepted for symmetry; nothing to show")
    p.set_defaults(run=run_evaluate)


def evaluate_and_print(root, results: str, names: list[str]) -> dict[float, float]:
    from timecycle.metrics.jhmdb import evaluate_jhmdb

    result = evaluate_jhmdb(root, results, names)
    if len(result.per_video) > 1:
        width = max(len(n) for n in result.per_video)
        for name, v in result.per_video.items():
            if all(math.isnan(p) for p in v.values()):
                print(f"  {name:<{width}}  no joint scored after frame 0 (not in the mean)")
                continue
            print(f"  {name:<{width}}  " + " ".join(f"PCK@{a:g} {p:.4f}" for a, p in v.items()))
    print(" ".join(f"PCK@{a:g} {p:.4f}" for a, p in result.pck.items())
          + f"  ({counted(len(names), 'video')}, {counted(result.frames, 'frame')})")
    print(f"results written to {results}/pck.csv")
    return result.pck


def run_propagate(args: argparse.Namespace) -> int:
    from timecycle.datasets.jhmdb import JhmdbRoot
    from timecycle.propagation.jhmdb import propagate_jhmdb
    from timecycle.propagation.presets import KEYPOINT_READOUTS, get_benchmark_protocol

    check_at_least(args, 1, "--batch-size")
    check_tile(args)
    with output_folder(args.out):  # checked first; what a failed run added is removed
        protocol = get_benchmark_protocol("jhmdb", args.protocol)
        readout = KEYPOINT_READOUTS[args.protocol]
        root = JhmdbRoot(args.root)
        check_out_apart(args.out, root.inputs)
        names = root.video_names(args.videos)
        frame_encoder, provenance = start_propagation(
            args, "jhmdb", protocol, {"jhmdb_root": str(root.root.resolve())})
        stats = propagate_jhmdb(root, names, args.out, frame_encoder, protocol, readout,
                                provenance, args.batch_size, args.tile, progress=not args.quiet)
        print_propagated(stats, len(names), "video", args.out)
    if args.evaluate:  # the predictions are whole now: a failed scoring leaves them
        with output_folder(args.out):  # and removes the score files it wrote
            evaluate_and_print(root, args.out, names)
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from timecycle.datasets.jhmdb import JhmdbRoot

    take_recorded(args, "jhmdb")
    root = JhmdbRoot(args.root)
    check_out_apart(args.results, root.inputs)
    names = root.video_names(args.videos)
    with output_folder(args.results, reading=True):  # a failed scoring removes its score files
        evaluate_and_print(root, args.results, names)
    return 0
