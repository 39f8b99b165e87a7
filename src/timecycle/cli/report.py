"""`timecycle report DIR`: an HTML page for a propagation results folder or a training run.

    timecycle report results/davis-crw            # -> results/davis-crw/report/index.html
    timecycle report runs/r18 --out /tmp/r18-report
"""

from __future__ import annotations

import argparse
from pathlib import Path

from timecycle.cli.common import check_at_least, check_positive
from timecycle.datasets.outputs import output_folder, recover_interrupted
from timecycle.errors import UserError


def register(sub) -> None:
    p = sub.add_parser("report", help="write an HTML report of propagation results or a training run")
    p.add_argument("path", metavar="RESULTS_OR_RUN_DIR",
                   help="a `timecycle propagate` results folder, or a training run (holds metrics.jsonl)")
    p.add_argument("--root", help="dataset root holding the frames (default: the one the results record)")
    p.add_argument("--out", help="report folder (default DIR/report)")
    p.add_argument("--format", choices=("webp", "gif", "mp4"), default="webp",
                   help="animation format (default webp: smallest, and every current browser plays it)")
    p.add_argument("--fps", type=float, default=10.0, help="animation frame rate (default 10)")
    p.add_argument("--max-width", type=int, default=480, help="animation width cap in pixels (default 480)")
    p.set_defaults(run=run_report)


def run_report(args: argparse.Namespace) -> int:
    from timecycle.visualisation.curves import METRICS_FILE, write_training_report
    from timecycle.visualisation.report import write_report

    path = Path(args.path)
    if not path.is_dir():
        raise UserError("no such folder", path)
    check_positive(args, "--fps")  # 0 divides by zero in the animation writer
    check_at_least(args, 1, "--max-width")
    recover_interrupted(path, reading=True)  # a killed rerun set the results it shows aside
    training = (path / METRICS_FILE).is_file()
    if training and args.root:
        raise UserError("--root applies to propagation results, not to a training run")
    with output_folder(args.out or path / "report") as out:
        if training:
            index = write_training_report(path, out)
        else:
            index = write_report(path, out, args.root, fmt=args.format, fps=args.fps,
                                 max_width=args.max_width)
    print(index)
    return 0
