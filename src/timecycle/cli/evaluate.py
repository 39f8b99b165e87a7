"""`timecycle evaluate davis`: J and F of a results folder, equal to the official toolkit."""

from __future__ import annotations

import argparse
import sys

from pathlib import Path

from timecycle.cli.common import add_davis_args
from timecycle.errors import UserError


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


def _listed(items: list) -> str:
    names = ",".join(str(item.get("name")) if isinstance(item, dict) else "?" for item in items)
    return names if len(names) <= 60 else f"({len(items)} sequences)"


def _as_propagated(args: argparse.Namespace):
    """(DavisRoot, names): the options given, else what the results' propagation.json records
    (so that a results folder is scored as it was propagated: its sequences, year and
    annotations), else the defaults. The recorded ones used are said in a note."""
    from timecycle.datasets.davis import DavisRoot
    from timecycle.propagation.results import PROVENANCE_FILE, read_provenance

    results = Path(args.results)
    record = read_provenance(results) if results.is_dir() else None
    if record is None or record.get("benchmark") != "davis":
        record = {}
    where = results / PROVENANCE_FILE
    used: list[str] = []

    def take(given, key: str, kind: type, flag: str, shown=None):
        if given is not None or key not in record:
            return given
        value = record[key]
        if not isinstance(value, kind):
            raise UserError(f"'{key}' is not a {kind.__name__}; pass {flag}", where)
        used.append(f"{flag} {shown(value) if shown else value}")
        return value

    root = take(args.root, "davis_root", str, "--root")
    if root is None:
        raise UserError("pass --root: no propagation.json here records the DAVIS root", results)
    year = take(args.year, "year", int, "--year") or 2017
    annotations = take(args.annotations, "annotations", str, "--annotations")
    if annotations is not None and args.annotations is None:
        annotations = Path(root) / annotations  # recorded relative to the root when inside it
    sequences = take(args.sequences, "sequences", list, "--sequences", _listed)
    if isinstance(sequences, list):
        names = [item.get("name") if isinstance(item, dict) else None for item in sequences]
        if not names or not all(isinstance(n, str) for n in names):
            raise UserError("'sequences' does not list names; pass --sequences", where)
        sequences = ",".join(names)
    davis = DavisRoot(root, year=year, annotations=annotations)
    names = davis.sequence_names(sequences)
    if used:
        print(f"timecycle: note: scoring as {where} records: {', '.join(used)}",
              file=sys.stderr)
    return davis, names


def run_davis(args: argparse.Namespace) -> int:
    root, names = _as_propagated(args)
    from timecycle.datasets.io import output_folder

    with output_folder(args.results):  # a failed scoring removes the score files it wrote
        evaluate_and_print(root, args.results, names, progress=not args.quiet)
    return 0


def run_points(args: argparse.Namespace) -> int:
    from pathlib import Path

    from timecycle.datasets.io import output_folder
    from timecycle.metrics.points import (
        points_pck,
        read_ground_truth,
        read_prediction,
        write_points_pck,
    )

    gt = read_ground_truth(args.gt)
    pred = read_prediction(args.pred, len(gt.names))
    result = points_pck(gt, pred, args.alpha, args.masks)
    out = args.out or Path(args.pred).parent
    with output_folder(out):
        sources = {"gt": str(Path(args.gt).resolve()), "pred": str(Path(args.pred).resolve()),
                   "masks": str(Path(args.masks).resolve()) if args.masks else None}
        paths = write_points_pck(out, result, sources)
    width = max(len(n) for n in result.per_point)
    for name, v in result.per_point.items():
        print(f"  {name:<{width}}  PCK@{args.alpha:g} {v:.4f} ({result.counts[name]} frames)")
    print(f"PCK@{args.alpha:g} {result.mean:.4f} (mean of {len(result.per_point)} points, "
          f"{result.frames} frames, threshold from the {result.normaliser})")
    print(f"results written to {paths[0]}")
    return 0
