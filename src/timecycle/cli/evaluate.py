"""`timecycle evaluate davis`: J and F of a results folder, equal to the official toolkit."""

from __future__ import annotations

import argparse

from timecycle.cli.common import add_davis_args, davis_root


def register(sub) -> None:
    p = sub.add_parser("evaluate", help="score predictions with the benchmark's official metric")
    bench = p.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    d = bench.add_parser("davis", help="DAVIS semi-supervised J&F")
    add_davis_args(d)
    d.add_argument("--results", required=True, help="folder with one folder of PNGs per sequence")
    d.add_argument("--quiet", action="store_true", help="no progress bars")
    d.set_defaults(run=run_davis)
    from timecycle.cli import jhmdb, vip

    jhmdb.add_evaluate_parser(bench)
    vip.add_evaluate_parser(bench)


def evaluate_and_print(root, results: str, names: list[str], progress: bool = True) -> dict:
    from timecycle.metrics.davis_eval import evaluate_davis

    global_row, _, seq_means = evaluate_davis(root, results, names, progress=progress)
    width = max(len(n) for n in seq_means)
    for name, jf in seq_means.items():
        print(f"  {name:<{width}}  J&F {jf:.4f}")
    print(" ".join(f"{k} {v:.4f}" for k, v in global_row.items()))
    print(f"results written to {results}/global_results-val.csv")
    return global_row


def run_davis(args: argparse.Namespace) -> int:
    root = davis_root(args)
    names = root.sequence_names(args.sequences)
    evaluate_and_print(root, args.results, names, progress=not args.quiet)
    return 0
