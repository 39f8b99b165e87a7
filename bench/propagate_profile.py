"""Where CPU propagation time goes, and how far it is from the machine's floor (not a test).

On one DAVIS sequence (default car-shadow, 40 frames, the issue's CPU measure) with the crw
protocol, it prints:
- end to end: `timecycle propagate davis` in a fresh process, start-up included;
- stages, in this process: reading JPEGs, the encoder, each propagation step split by operator
  (torch.profiler: the windowed product, frame 0's unrestricted product, selection and top-k,
  the rest), the output (resize, argmax, PNG);
- the floor: the arithmetic each stage must do (the encoder's FLOPs; the affinities a query
  may see: its disk in each context frame and all of frame 0) over this machine's measured
  matrix-product rate, next to what the tiled product computes (the square window around
  each tile, padding tiles included);
- tile sizes: the propagation step at each `--tiles` value on the same features, with the
  largest difference of its output from the default tile's;
- with `--head`: the same encoder with a TimeCycle head (512 channels), whose step time per
  channel is compared with the plain encoder's.

    python bench/propagate_profile.py --root ../shared/data/DAVIS --sequence car-shadow
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile, record_function
from torch.utils.flop_counter import FlopCounterMode

from timecycle.datasets.davis import DavisRoot
from timecycle.datasets.io import write_mask
from timecycle.encoder import build_encoder
from timecycle.propagation import propagator
from timecycle.propagation.propagator import LabelPropagator, conv_dots
from timecycle.propagation.protocols import get_protocol
from timecycle.propagation.resize import downsample_label, label_to_ids
from timecycle.propagation.video import FrameEncoder, read_frames
from timecycle.propagation.windows import DEFAULT_TILE, make_geometry

HERE = Path(__file__).resolve().parent
# torch.profiler operator names -> the part of a propagation step they belong to.
# On the CPU both products are oneDNN convolutions (propagator.conv_dots): `labelled_products`
# names each call by its filters, a tile's queries for the windowed one, frame 0's keys
# otherwise (torch.profiler's record_shapes would tell them apart too, but slowed them ~40%).
GROUPS = {"aten::bmm": "windowed product", "aten::mm": "frame 0 product",
          "windowed product": "windowed product", "frame 0 product": "frame 0 product",
          "aten::topk": "top-k", "aten::gather": "selection", "aten::index": "selection"}


def end_to_end(args: argparse.Namespace) -> float:
    """Wall seconds of the command line tool in a new process (imports and start-up included)."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "timecycle", "propagate", "davis", "--root", args.root,
               "--sequences", args.sequence, "--encoder", args.encoder, "--protocol",
               args.protocol, "--out", tmp, "--quiet"]
        env = dict(os.environ, PYTHONPATH=str(HERE.parent / "src"))
        start = time.perf_counter()
        subprocess.run(cmd, check=True, env=env, capture_output=True)
        return time.perf_counter() - start


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (bench/gpu.py's timings use this too)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def encode(encoder: torch.nn.Module, protocol, frames: np.ndarray,
           device: torch.device = torch.device("cpu")
           ) -> tuple[torch.Tensor, tuple[int, int], float]:
    """(T, C, h, w) features of all frames (batches of 4) on `device`, the encoded frame size,
    and the seconds it took (bench/gpu.py times its GPU stages with this too)."""
    enc = FrameEncoder(encoder, protocol, device)
    enc(frames[:4])  # warm-up: lazy initialisation and kernel choice, outside the timing
    sync(device)
    start = time.perf_counter()
    batches = [enc(frames[i : i + 4]) for i in range(0, len(frames), 4)]
    sync(device)
    return torch.cat([f for f, _ in batches]), batches[0][1], time.perf_counter() - start


def write_outputs(outs: list[torch.Tensor], protocol, size: tuple[int, int],
                  out_hw: tuple[int, int]) -> float:
    """Seconds to turn soft labels into PNGs: resize, argmax, copy to the host, write."""
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for i, soft in enumerate(outs, 1):
            ids = label_to_ids(soft, protocol, size, out_hw).to(torch.uint8).cpu().numpy()
            write_mask(Path(tmp) / f"{i:05d}.png", ids)
    return time.perf_counter() - start


@contextlib.contextmanager
def quiet_stderr():
    """Silence file descriptor 2: the profiler's C++ side prints start/stop and device lines."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def propagate(protocol, feats: torch.Tensor, label0: torch.Tensor, tile: int,
              profiled: bool = False, cuda_graph: bool = True
              ) -> tuple[list[torch.Tensor], float, dict]:
    """Soft labels of frames 1.., the seconds of the steps, and with `profiled` the operator
    seconds grouped as GROUPS (everything else under "rest"). `cuda_graph`: as
    LabelPropagator's (on CUDA, False launches the windowed step's operators one by one)."""
    prop = LabelPropagator(protocol, feats[0], label0, tile, cuda_graph=cuda_graph)
    groups: dict[str, float] = {}
    prof = profile(activities=[ProfilerActivity.CPU]) if profiled else contextlib.nullcontext()
    with quiet_stderr(), prof, labelled_products(tile * tile if profiled else None):
        start = time.perf_counter()
        outs = [prop.step(f) for f in feats[1:]]
        sync(feats.device)
        seconds = time.perf_counter() - start
    if profiled:
        for ev in prof.key_averages():
            if ev.key in GROUPS:  # a labelled range's own time excludes its operators': total
                sec = (ev.cpu_time_total if ev.key in GROUPS.values() else ev.self_cpu_time_total)
                groups[GROUPS[ev.key]] = groups.get(GROUPS[ev.key], 0.0) + sec / 1e6
        if protocol.restrict == "none":  # one product over all the context, no windows
            groups = {("context product" if g.endswith("product") else g): v for g, v in groups.items()}
        groups["rest"] = seconds - sum(groups.values())
    return outs, seconds, groups


@contextlib.contextmanager
def labelled_products(window_filters: int | None):
    """While active (`window_filters` not None), each `conv_dots` call of the propagator runs
    inside a profiler range named for its product (see GROUPS)."""
    if window_filters is None:
        yield
        return

    def labelled(image, filters):
        name = "windowed product" if filters.shape[0] == window_filters else "frame 0 product"
        with record_function(name):
            return conv_dots(image, filters)

    saved = propagator.conv_dots
    propagator.conv_dots = labelled
    try:
        yield
    finally:
        propagator.conv_dots = saved


def gemm_rates(n: int = 1536, repeat: int = 3) -> dict[str, float]:
    """FLOP/s of a large fp32 matrix product on this machine, the best of `repeat`, as
    `torch.mm` (MKL here) and as the oneDNN 1x1 convolution the CPU step uses (conv_dots)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    rates = {}
    for name, fn in (("torch.mm", lambda: a @ b), ("oneDNN conv", lambda: conv_dots(a, b))):
        fn()
        best = math.inf
        for _ in range(repeat):
            start = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - start)
        rates[name] = 2 * n**3 / best
    return rates


def flops(protocol, encoder, frame_hw: tuple[int, int], feat_shape: tuple[int, int, int],
          tile: int) -> dict[str, float]:
    """FLOPs per target frame: the encoder's, the affinities each query needs, and what the
    tiled windows compute."""
    with FlopCounterMode(display=False) as counter:
        with torch.no_grad():
            encoder(torch.zeros(1, 3, *frame_hw))
    c, h, w = feat_shape
    if protocol.restrict == "none":  # every query against every position of each context frame
        slots = 1 + protocol.n_context
        return {"encoder": float(counter.get_total_flops()),
                "context product": 2.0 * (h * w) ** 2 * slots * c}
    geo = make_geometry(h, w, protocol.radius, protocol.restrict, tile)
    keys = geo.allowed.shape[1]  # keys of a query's disk in one context frame
    n = protocol.n_context
    return {"encoder": float(counter.get_total_flops()),
            "frame 0 product": 2.0 * (h * w) ** 2 * c,
            "windowed, needed": 2.0 * h * w * keys * n * c,
            "windowed, computed": 2.0 * geo.n_ty * geo.n_tx * tile**2 * geo.win**2 * n * (c + 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default_root = Path(os.environ.get("TIMECYCLE_DATA", HERE.parents[1] / "shared" / "data")) / "DAVIS"
    ap.add_argument("--root", default=str(default_root))
    ap.add_argument("--sequence", default="car-shadow")
    ap.add_argument("--encoder", default="resnet18")
    ap.add_argument("--protocol", default="crw")
    ap.add_argument("--frames", type=int, help="first N frames only (the in-process stages)")
    ap.add_argument("--tiles", default="6,8,10,12",
                    help=f"tile sizes to compare (default tile: {DEFAULT_TILE})")
    ap.add_argument("--head", action="store_true", help="also time a 512-channel TimeCycle head")
    ap.add_argument("--no-e2e", action="store_true", help="skip the end-to-end process")
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args()
    protocol = get_protocol(args.protocol)
    report: dict = {"sequence": args.sequence, "protocol": args.protocol, "threads": torch.get_num_threads()}
    if not args.no_e2e:
        report["end_to_end_s"] = end_to_end(args)
        print(f"end to end (start-up included): {report['end_to_end_s']:.1f} s", flush=True)

    seq = DavisRoot(args.root).sequence(args.sequence)
    start = time.perf_counter()
    frames = np.stack(list(read_frames(seq.frames[: args.frames])))
    stages = {"read JPEGs": time.perf_counter() - start}
    encoder = build_encoder(args.encoder, seed=0)
    feats, encoded_hw, stages["encoder"] = encode(encoder, protocol, frames)
    ids0, n_obj = seq.first_label()
    label0 = downsample_label(torch.from_numpy(ids0.astype(np.int64)), n_obj + 1, feats.shape[-2:], protocol)
    outs, stages["propagation"], groups = propagate(protocol, feats, label0, DEFAULT_TILE,
                                                    profiled=True)
    size = frames.shape[1:3]
    stages["output (resize, argmax, PNG)"] = write_outputs(outs, protocol, size, ids0.shape)
    targets = len(frames) - 1
    report.update(frames=len(frames), stages_s=stages, propagation_ops_s=groups)
    print(f"\n{args.sequence}: {len(frames)} frames {size[1]}x{size[0]}, features "
          f"{tuple(feats.shape[1:])}, {torch.get_num_threads()} threads")
    for name, s in stages.items():
        print(f"  {name:<32} {s:7.2f} s  {1000 * s / targets:7.1f} ms/frame")
    for name, s in groups.items():
        print(f"    step: {name:<26} {s:7.2f} s  {100 * s / stages['propagation']:5.1f} %")

    rates = gemm_rates()
    rate = max(rates.values())
    fl = flops(protocol, encoder, tuple(encoded_hw), tuple(feats.shape[1:]), DEFAULT_TILE)
    needed = sum(f for name, f in fl.items() if name != "windowed, computed")
    floor = targets * needed / rate
    report.update(gemm_gflops={k: r / 1e9 for k, r in rates.items()}, flops_per_frame=fl,
                  floor_s=floor)
    print(f"\nfloor: fp32 matrix products at {rate / 1e9:.0f} GFLOP/s, the faster of "
          + ", ".join(f"{k} {r / 1e9:.0f}" for k, r in rates.items()) + " (1536^3, best of 3)")
    for name, f in fl.items():
        print(f"  {name:<32} {f / 1e9:7.1f} GFLOP/frame  {targets * f / rate:6.1f} s at that rate")
    print(f"  needed arithmetic over {targets} frames: {floor:.1f} s; measured stages "
          f"{sum(stages.values()):.1f} s ({sum(stages.values()) / floor:.1f}x the floor)")

    tiles = [int(t) for t in args.tiles.split(",")] if protocol.restrict != "none" else []
    report["tiles"] = {}
    if tiles:
        print(f"\ntile  step s/frame  max |diff| from tile {DEFAULT_TILE}")
    for t in tiles:
        o, s, _ = propagate(protocol, feats, label0, t)
        diff = max(float((a - b).abs().max()) for a, b in zip(o, outs))
        report["tiles"][t] = {"s_per_frame": s / targets, "max_diff": diff}
        print(f"{t:4d}  {s / targets:12.3f}  {diff:.2e}", flush=True)

    if args.head:
        head = build_encoder(args.encoder, head=True, seed=0)
        hfeats, _, henc = encode(head, protocol, frames)
        _, hprop, _ = propagate(protocol, hfeats, label0, DEFAULT_TILE)
        _, plain_prop, _ = propagate(protocol, feats, label0, DEFAULT_TILE)  # unprofiled, as hprop
        plain_c, head_c = feats.shape[1], hfeats.shape[1]
        per = {name: {"channels": c, "encoder_s": e, "propagation_s": p,
                      "channels_per_s": c * targets / (e + p)}
               for name, c, e, p in (("plain", plain_c, stages["encoder"], plain_prop),
                                     ("head", head_c, henc, hprop))}
        report["head"] = per
        print("\nencoder   channels  encoder s  propagation s  channel-frames/s")
        for name, r in per.items():
            print(f"{name:<9} {r['channels']:8d} {r['encoder_s']:10.2f} {r['propagation_s']:14.2f} "
                  f"{r['channels_per_s']:17.0f}")
        print(f"head / plain per channel: {per['head']['channels_per_s'] / per['plain']['channels_per_s']:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
