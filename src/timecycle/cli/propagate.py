"""`timecycle propagate davis`: first-frame masks carried through DAVIS sequences."""

from __future__ import annotations

import argparse

from timecycle.cli.common import (
    add_davis_args,
    add_propagate_args,
    check_at_least,
    check_out_apart,
    check_tile,
    davis_root,
    print_propagated,
    recorded_annotations,
    start_propagation,
)
from timecycle.datasets.outputs import output_folder
from timecycle.propagation.protocols import PROTOCOLS, get_protocol


def register(sub) -> None:
    p = sub.add_parser("propagate", help="propagate first-frame labels through video")
    bench = p.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    d = bench.add_parser("davis", help="DAVIS object masks (writes the DAVIS result format)")
    add_davis_args(d)
    add_propagate_args(d, PROTOCOLS, "results folder: one folder of PNGs per sequence")
    d.set_defaults(run=run_davis)
    from timecycle.cli import jhmdb, vip

    jhmdb.add_propagate_parser(bench)
    vip.add_propagate_parser(bench)


def run_davis(args: argparse.Namespace) -> int:
    from timecycle.propagation.davis import propagate_davis

    check_at_least(args, 1, "--batch-size")
    check_tile(args)
    with output_folder(args.out):  # checked first; what a failed run added is removed
        protocol = get_protocol(args.protocol)
        root = davis_root(args)
        check_out_apart(args.out, root.inputs)
        names = root.sequence_names(args.sequences)
        # Absolute: `timecycle report` reads the frames from here, from any folder.
        frame_encoder, provenance = start_propagation(
            args, "davis", protocol, {"davis_root": str(root.root.resolve()), "year": root.year,
                                      "annotations": recorded_annotations(root)})
        stats = propagate_davis(root, names, args.out, frame_encoder, protocol, provenance,
                                args.batch_size, args.tile, progress=not args.quiet)
        print_propagated(stats, len(names), "sequence", args.out)
    if args.evaluate:  # the predictions are whole now: a failed scoring leaves them
        with output_folder(args.out):  # and removes the score files it wrote
            from timecycle.cli.evaluate import evaluate_and_print

            evaluate_and_print(root, args.out, names, progress=not args.quiet)
    return 0
