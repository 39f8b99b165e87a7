"""Propagation speed and memory: the fast engine next to the plain reference (not a test).

For each protocol and encoder, on the first N frames of a real DAVIS sequence:
- fast: `timecycle propagate davis` end to end (read, encode, propagate, write PNGs);
- reference: the whole video encoded and held in memory, then the plain implementation of
  tests/reference_propagation.py (full affinity to every context frame, then the mask), as
  the public code does, plus the same output step (no PNG writing).
Each measurement runs in its own process, so its peak memory (max RSS on the CPU, the
allocator's peak on CUDA) is its own. Frames/s counts the propagated frames.

    python bench/propagate.py --root ../shared/data/DAVIS --sequence blackswan --frames 8
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _excerpt(root: Path, seq: str, n: int, dst: Path) -> Path:
    for sub, ext in (("JPEGImages/480p", "jpg"), ("Annotations/480p", "png")):
        d = dst / sub / seq
        d.mkdir(parents=True)
        for i in range(n):
            (d / f"{i:05d}.{ext}").symlink_to((root / sub / seq / f"{i:05d}.{ext}").resolve())
    return dst


def worker(args: argparse.Namespace) -> dict:
    import torch

    from timecycle.datasets.davis import DavisRoot
    from timecycle.encoder import build_encoder
    from timecycle.engine.runtime import resolve_device
    from timecycle.propagation.davis import propagate_davis
    from timecycle.propagation.protocols import get_protocol
    from timecycle.propagation.resize import downsample_label, label_to_ids
    from timecycle.propagation.video import FrameEncoder, read_frames

    device = resolve_device(args.device)
    protocol = get_protocol(args.protocol)
    with tempfile.TemporaryDirectory() as tmp:
        root = DavisRoot(_excerpt(Path(args.root), args.sequence, args.frames, Path(tmp) / "root"))
        enc = FrameEncoder(build_encoder(args.encoder, seed=0), protocol, device)
        enc(next(read_frames(root.sequence(args.sequence).frames[:1]))[None])  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        if args.impl == "fast":
            propagate_davis(root, [args.sequence], Path(tmp) / "out", enc, protocol, {}, progress=False)
        else:
            sys.path.insert(0, str(HERE.parent / "tests"))
            from reference_propagation import reference_propagate

            seq = root.sequence(args.sequence)
            ids0, n_obj = seq.first_label()
            frames = list(read_frames(seq.frames))
            feats, size = enc(__import__("numpy").stack(frames))
            label0 = downsample_label(torch.from_numpy(ids0).to(device), n_obj + 1, feats.shape[-2:], protocol)
            for soft in reference_propagate(protocol, feats, label0, dtype=torch.float32):
                label_to_ids(soft, protocol, size, ids0.shape).cpu()
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    if device.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"fps": (args.frames - 1) / seconds, "peak_mb": peak_mb, "device": str(device)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default_root = Path(os.environ.get("TIMECYCLE_DATA", HERE.parents[1] / "shared" / "data")) / "DAVIS"
    ap.add_argument("--root", default=str(default_root),
                    help="DAVIS root (default $TIMECYCLE_DATA/DAVIS, else ../shared/data/DAVIS)")
    ap.add_argument("--sequence", default="blackswan", help="default blackswan")
    ap.add_argument("--frames", type=int, default=8,
                    help="its first N frames (default 8); the reference's time and memory grow "
                         "with them")
    ap.add_argument("--protocols", default="crw,timecycle,dino",
                    help="comma-separated (default crw,timecycle,dino)")
    ap.add_argument("--encoders", default="pixel,resnet18,resnet50",
                    help="comma-separated (default pixel,resnet18,resnet50)")
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    ap.add_argument("--no-reference", action="store_true", help="time the fast engine only")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--protocol", help=argparse.SUPPRESS)
    ap.add_argument("--encoder", help=argparse.SUPPRESS)
    ap.add_argument("--impl", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    impls = ["fast"] if args.no_reference else ["fast", "reference"]
    print(f"{args.sequence}, first {args.frames} frames, device {args.device}")
    print(f"{'protocol':<10} {'encoder':<9} {'fast f/s':>9} {'ref f/s':>9} {'speed-up':>9} "
          f"{'fast MB':>9} {'ref MB':>9}")
    for protocol in args.protocols.split(","):
        for encoder in args.encoders.split(","):
            res = {}
            for impl in impls:
                cmd = [sys.executable, __file__, "--worker", "--root", args.root, "--sequence",
                       args.sequence, "--frames", str(args.frames), "--device", args.device,
                       "--protocol", protocol, "--encoder", encoder, "--impl", impl]
                out = subprocess.run(cmd, capture_output=True, text=True)
                if out.returncode != 0:
                    print(out.stderr.strip().splitlines()[-1], file=sys.stderr)
                    res[impl] = {"fps": float("nan"), "peak_mb": float("nan")}
                else:
                    res[impl] = json.loads(out.stdout.strip().splitlines()[-1])
            f, r = res["fast"], res.get("reference", {"fps": float("nan"), "peak_mb": float("nan")})
            print(f"{protocol:<10} {encoder:<9} {f['fps']:9.2f} {r['fps']:9.3f} "
                  f"{f['fps'] / r['fps']:8.1f}x {f['peak_mb']:9.0f} {r['peak_mb']:9.0f}", flush=True)


if __name__ == "__main__":
    main()
