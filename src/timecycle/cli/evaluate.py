"""`timecycle evaluate davis`: J and F of a results folder, equal to the official toolkit."""

from __future__ import annotations

import argparse

from timecycle.cli.common import (
    add_davis_args,
    check_out_apart,
    counted,
    davis_root,
    take_recorded,
)


def register(sub) -> None:
    p = sub.add_parser("evaluate", help="score predictions with the benchmark's official metric")
    bench = p.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    d = bench.add_parser("davis", help="DAVIS semi-supervised J&F")
    add_davis_args(d, recorded=True)
    d.add_argument("--results", required=True, help="folder with one folder of PNGs per sequence")
    d.add_argument("--quiet", action="store_true", help="no progress bars")
    d.set_defaults(run=run_davis)
    from timecycle.cli import jhmdb, vip

    jhmdb.add_evaluate_parser(bench)
    vip.add_evaluate_parser(bench)
    pts = bench.add_parser("points", help="PCK of tracked points (timecycle track's tracks.npy)")
    pts.add_argument("--gt", required=True, help='ground truth JSON: {"names": [...], "frames": '
                     '[{"frame": t, "xy": [[x, y], ...], "visible": [...]}]}')
    pts.add_argument("--pred", required=True, help="predicted tracks: (T, K, 2) .npy")
    pts.add_argument("--masks", help="folder of %%05d.png ground-truth object masks: threshold "
                     "alpha x sqrt(mask area) instead of sqrt(area of the points' box)")
    pts.add_argument("--alpha", type=float, default=0.1, help="threshold factor (default 0.1)")
    pts.add_argument("--out", help="folder for points_pck.csv and .json (default: --pred's folder)")
    pts.set_defaults(run=run_points)


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
    take_recorded(args, "davis")
    if args.year is None:
        args.year = 2017
    root = davis_root(args)
    check_out_apart(args.results, root.inputs)
    names = root.sequence_names(args.sequences)
    from timecycle.datasets.outputs import output_folder

    with output_folder(args.results, reading=True):  # a failed scoring removes its score files
        evaluate_and_print(root, args.results, names, progress=not args.quiet)
    return 0


def run_points(args: argparse.Namespace) -> int:
    from pathlib import Path

    from timecycle.datasets.outputs import output_folder, recover_interrupted
    from timecycle.metrics.points import (
        points_pck,
        read_ground_truth,
        read_prediction,
        write_points_pck,
    )

    recover_interrupted(Path(args.pred).parent, reading=True)  # a killed `track` rerun set it aside
    gt = read_ground_truth(args.gt)
    pred = read_prediction(args.pred, len(gt.names))
    result = points_pck(gt, pred, args.alpha, args.masks, pred_path=args.pred)
    out = args.out or Path(args.pred).parent
    with output_folder(out, reading=True):  # beside the prediction it reads, by default
        sources = {"gt": str(Path(args.gt).resolve()), "pred": str(Path(args.pred).resolve()),
                   "masks": str(Path(args.masks).resolve()) if args.masks else None}
        paths = write_points_pck(out, result, sources)
    width = max(len(n) for n in result.per_point)
    unseen = "never visible after frame 0" + (" in a frame scored" if result.left_out else "")
    for name, v in result.per_point.items():
        n = result.counts[name]
        score = f"PCK@{args.alpha:g} {v:.4f} ({counted(n, 'frame')})" if n else f"not scored ({unseen})"
        print(f"  {name:<{width}}  {score}")
    scored = sum(1 for c in result.counts.values() if c)
    left_out = f", {len(result.left_out)} left out" if result.left_out else ""
    print(f"PCK@{args.alpha:g} {result.mean:.4f} (mean of {counted(scored, 'point')}, "
          f"{counted(result.frames, 'frame')}{left_out}, threshold from the {result.normaliser})")
    print(f"results written to {paths[0]}")
    return 0
