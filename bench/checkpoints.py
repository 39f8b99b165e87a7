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
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    import torch

    from timecycle.encoder.weights import load_encoder
    from timecycle.engine.evaluation import DavisProxy

    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    data = Path(os.environ.get("TIMECYCLE_DATA", HERE.parent.parent / "shared" / "data"))
    ap.add_argument("checkpoints", nargs="*", help="run checkpoints (last.pt, step-*.pt)")
    ap.add_argument("--root", default=str(data / "DAVIS"))
    ap.add_argument("--sequences", default=None,
                    help="default: the engine's, every sequence of ImageSets/2016/val.txt")
    ap.add_argument("--frames", type=int, default=25, help="first frames of each sequence")
    ap.add_argument("--size", type=int, default=240, help="short side of the frames")
    ap.add_argument("--arch", default="resnet18", help="architecture of the random baseline")
    args = ap.parse_args()

    rows = [("identity", "identity", None), ("pixel", "pixel", None),
            (f"random {args.arch}", args.arch, None)]
    rows += [(c, args.arch, c) for c in args.checkpoints]
    # engine/evaluation.py: the same proxy that `timecycle train --eval-davis` logs.
    proxy = DavisProxy(args.root, args.sequences and args.sequences.split(","), args.frames,
                       args.size)
    try:
        print(proxy.label)
        for label, name, weights in rows:
            # The proxy runs crw: layer3, without a checkpoint's TimeCycle head.
            encoder, _ = load_encoder(name, weights, "auto", protocol="crw")
            jf = proxy.score(encoder, torch.device("cpu"))["J&F"]
            print(f"{label:40s} J&F {jf:.4f}", flush=True)
    finally:
        proxy.close()


if __name__ == "__main__":
    main()
