"""`timecycle propagate jhmdb` and `timecycle evaluate jhmdb`: keypoints and PCK (SPEC 6, 7)."""

from __future__ import annotations

import argparse

from timecycle.cli.common import add_encoder_args, load_encoder
from timecycle.propagation.presets import PROTOCOLS_BY_BENCHMARK

PRESETS = PROTOCOLS_BY_BENCHMARK["jhmdb"]


def _add_root_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--root", required=True, help="JHMDB root (Rename_Images/, joint_positions/)")
    p.add_argument("--videos", help="a list file (<class>/<video> lines, or CRW's '<frames dir> "
                   "<joint_positions.mat>' lines) or comma-separated <class>/<video> names "
                   "(default: every video under Rename_Images)")


def add_propagate_parser(bench) -> None:
    p = bench.add_parser("jhmdb", help="JHMDB keypoints (writes <out>/<class>/<video>.npy)")
    _add_root_args(p)
    add_encoder_args(p)
    p.add_argument("--protocol", default="crw", help=f"one of {', '.join(PRESETS)} (default crw)")
    p.add_argument("--out", required=True, help="results folder: one (T, 15, 2) .npy per video")
    p.add_argument("--batch-size", type=int, default=4, help="frames encoded at once (default 4)")
    p.add_argument("--tile", type=int, default=8, help="query tile of restricted windows (default 8)")
    p.add_argument("--evaluate", action="store_true", help="score the predictions at the end")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(run=run_propagate)


def add_evaluate_parser(bench) -> None:
    p = bench.add_parser("jhmdb", help="JHMDB PCK@0.1..0.5 (the CRW/UVC evaluation)")
    _add_root_args(p)
    p.add_argument("--results", required=True, help="folder with <class>/<video>.npy predictions")
    p.add_argument("--quiet", action="store_true", help="accepted for symmetry; nothing to show")
    p.set_defaults(run=run_evaluate)


def evaluate_and_print(root, results: str, names: list[str]) -> dict[float, float]:
    from timecycle.metrics.jhmdb import evaluate_jhmdb

    result = evaluate_jhmdb(root, results, names)
    if len(result.per_video) > 1:
        width = max(len(n) for n in result.per_video)
        for name, v in result.per_video.items():
            print(f"  {name:<{width}}  " + " ".join(f"PCK@{a:g} {p:.4f}" for a, p in v.items()))
    print(" ".join(f"PCK@{a:g} {p:.4f}" for a, p in result.pck.items())
          + f"  ({len(names)} videos, {result.frames} frames)")
    print(f"results written to {results}/pck.csv")
    return result.pck


def run_propagate(args: argparse.Namespace) -> int:
    from timecycle.datasets.jhmdb import JhmdbRoot
    from timecycle.engine.runtime import environment, resolve_device
    from timecycle.propagation.jhmdb import propagate_jhmdb
    from timecycle.propagation.presets import KEYPOINT_READOUTS, get_benchmark_protocol
    from timecycle.propagation.video import FrameEncoder

    protocol = get_benchmark_protocol("jhmdb", args.protocol)
    readout = KEYPOINT_READOUTS[args.protocol]
    root = JhmdbRoot(args.root)
    names = root.video_names(args.videos)
    device = resolve_device(args.device)
    encoder, enc_info = load_encoder(args)
    frame_encoder = None if encoder is None else FrameEncoder(encoder, protocol, device)
    provenance = {
        "benchmark": "jhmdb",
        "protocol": protocol.to_dict(),
        **enc_info,
        "jhmdb_root": str(root.root),
        "environment": environment(device),
    }
    stats = propagate_jhmdb(root, names, args.out, frame_encoder, protocol, readout, provenance,
                            args.batch_size, args.tile, progress=not args.quiet)
    print(f"propagated {len(names)} videos, {stats.frames} frames in {stats.seconds:.1f} s "
          f"({stats.frames / max(stats.seconds, 1e-9):.2f} frames/s) -> {args.out}")
    if args.evaluate:
        evaluate_and_print(root, args.out, names)
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from timecycle.datasets.jhmdb import JhmdbRoot

    root = JhmdbRoot(args.root)
    evaluate_and_print(root, args.results, root.video_names(args.videos))
    return 0
