"""`timecycle propagate davis`: first-frame masks carried through DAVIS sequences."""

from __future__ import annotations

import argparse

from timecycle.cli.common import add_davis_args, add_encoder_args, davis_root, load_encoder
from timecycle.propagation.protocols import PROTOCOLS, get_protocol


def register(sub) -> None:
    p = sub.add_parser("propagate", help="propagate first-frame labels through video")
    bench = p.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    d = bench.add_parser("davis", help="DAVIS object masks (writes the DAVIS result format)")
    add_davis_args(d)
    add_encoder_args(d)
    d.add_argument("--protocol", default="crw", help=f"one of {', '.join(PROTOCOLS)} (default crw)")
    d.add_argument("--out", required=True, help="results folder: one folder of PNGs per sequence")
    d.add_argument("--batch-size", type=int, default=4, help="frames encoded at once (default 4)")
    d.add_argument("--tile", type=int, default=8, help="query tile of restricted windows (default 8)")
    d.add_argument("--evaluate", action="store_true", help="score the predictions at the end")
    d.add_argument("--quiet", action="store_true", help="no progress bars")
    d.set_defaults(run=run_davis)
    from timecycle.cli import jhmdb, vip

    jhmdb.add_propagate_parser(bench)
    vip.add_propagate_parser(bench)


def run_davis(args: argparse.Namespace) -> int:
    from timecycle.engine.runtime import environment, resolve_device
    from timecycle.propagation.davis import propagate_davis
    from timecycle.propagation.video import FrameEncoder

    protocol = get_protocol(args.protocol)
    root = davis_root(args)
    names = root.sequence_names(args.sequences)
    device = resolve_device(args.device)
    encoder, enc_info = load_encoder(args)
    frame_encoder = None if encoder is None else FrameEncoder(encoder, protocol, device)
    provenance = {
        "benchmark": "davis",
        "protocol": protocol.to_dict(),
        **enc_info,
        "davis_root": str(root.root),
        "year": root.year,
        "environment": environment(device),
    }
    stats = propagate_davis(root, names, args.out, frame_encoder, protocol, provenance,
                            args.batch_size, args.tile, progress=not args.quiet)
    print(f"propagated {len(names)} sequences, {stats.frames} frames in {stats.seconds:.1f} s "
          f"({stats.frames / max(stats.seconds, 1e-9):.2f} frames/s) -> {args.out}")
    if args.evaluate:
        from timecycle.cli.evaluate import evaluate_and_print

        evaluate_and_print(root, args.out, names, progress=not args.quiet)
    return 0
