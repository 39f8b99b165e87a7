"""A quick DAVIS check of training checkpoints next to the baselines (not a test, not a benchmark
figure): the crw protocol at a reduced size on the first frames of a few sequences.

What the README's training figures ("proxy") used:

    python bench/checkpoints.py RUN/step-000150.pt RUN/step-000600.pt

Rows: identity, pixel, a random ResNet of the checkpoints' architecture as built (BatchNorm
running statistics at their defaults, so eval-mode BatchNorm does nothing), then each
checkpoint. The full-size score is `timecycle propagate davis ... --evaluate`.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from propagate import _excerpt  # noqa: E402  (bench/propagate.py: a symlinked DAVIS subset)


def score(root: Path, out: Path, names: list[str], encoder: dict, size: int) -> float:
    """J&F-Mean of one encoder on the subset: CRW's protocol at short side `size`, its
    12-cell radius at 480p scaled with the frame."""
    from timecycle.cli.common import start_propagation
    from timecycle.datasets.davis import DavisRoot
    from timecycle.metrics.davis_eval import evaluate_davis
    from timecycle.propagation.davis import propagate_davis
    from timecycle.propagation.protocols import CRW

    protocol = CRW.replace(frame_resize="short_side", size=size, multiple=8,
                           radius=max(1, round(12 * size / 480)))
    args = argparse.Namespace(**{"weights": None, "head": "auto", "seed": 0, "device": "auto",
                                 **encoder})
    frame_encoder, provenance = start_propagation(args, "davis", protocol, {})
    davis = DavisRoot(root)
    propagate_davis(davis, names, out, frame_encoder, protocol, provenance, progress=False)
    return evaluate_davis(davis, out, names, progress=False)[0]["J&F-Mean"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    data = Path(os.environ.get("TIMECYCLE_DATA", HERE.parent.parent / "shared" / "data"))
    ap.add_argument("checkpoints", nargs="*", help="run checkpoints (last.pt, step-*.pt)")
    ap.add_argument("--root", default=str(data / "DAVIS"))
    ap.add_argument("--sequences", default="blackswan,car-roundabout,dog,cows")
    ap.add_argument("--frames", type=int, default=25, help="first frames of each sequence")
    ap.add_argument("--size", type=int, default=240, help="short side of the frames")
    ap.add_argument("--arch", default="resnet18", help="architecture of the random baseline")
    args = ap.parse_args()

    names = args.sequences.split(",")
    rows = [("identity", {"encoder": "identity"}), ("pixel", {"encoder": "pixel"}),
            (f"random {args.arch}", {"encoder": args.arch, "head": "yes"})]
    rows += [(c, {"encoder": args.arch, "weights": c}) for c in args.checkpoints]
    with tempfile.TemporaryDirectory() as tmp:
        subset = Path(tmp) / "davis"
        for name in names:
            _excerpt(Path(args.root), name, args.frames, subset)
        print(f"{', '.join(names)}: first {args.frames} frames, crw at short side {args.size}")
        for i, (label, encoder) in enumerate(rows):
            jf = score(subset, Path(tmp) / f"out{i}", names, encoder, args.size)
            print(f"{label:40s} J&F {jf:.4f}", flush=True)


if __name__ == "__main__":
    main()
