"""Training throughput: clips/s, data wait against compute, peak memory, model FLOP utilisation,
and the encoder's forward+backward alone as the bound (not a test).

For each preset (small: ResNet-18 at 112 x 112; full: ResNet-50 at 240 x 240), in its own
process so that its peak memory is its own:
- step: the engine's `train_step` (the encoder on all frames and the patch, every cycle, the
  loss, backward, clipping, Adam) on batches from the training DataLoader over generated videos
  (or --data DIR). Data wait is the time blocked on the loader; compute is the rest.
- FLOPs of one step from torch.utils.flop_counter.FlopCounterMode (convolutions and matrix
  products, forward and backward); achieved TFLOP/s = FLOPs / compute time per step; MFU =
  that / the device's dense peak (PEAK_TFLOPS; bf16 with autocast, else TF32, which cuDNN uses
  for convolutions by default). No peak is known for a CPU: MFU is n/a unless --peak-tflops.
- bound: the encoder alone, forward and backward, on the same batch: the convolutions that
  every step must do. bound/step = the bound's time / the step's compute time (target on a
  GPU: >= 0.70, i.e. the tracker, loss and optimiser cost at most 30% on top); e2e also counts
  the data wait.
Peak memory: the CUDA allocator's peak, or the worker process's max RSS on the CPU.

    python bench/train.py                                  # CPU: batch 4, 5 timed steps
    python bench/train.py --device cuda                    # GPU: the presets' batch sizes
    python bench/train.py --device cuda --compile cycles     # the tracker's cycles compiled
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

# Dense (no sparsity) peaks in TFLOP/s per GPU, from NVIDIA's data sheets.
PEAK_TFLOPS = {
    "H100 SXM / H200": {"bf16": 989.4, "tf32": 494.7},
    "H100 PCIe": {"bf16": 756.5, "tf32": 378.0},
    "A100": {"bf16": 312.0, "tf32": 156.0},
}


def peak_tflops(device_name: str, precision: str) -> float | None:
    """The table's peak for a CUDA device name, None when the device is not in it."""
    if "H100" in device_name and "PCIe" in device_name:
        key = "H100 PCIe"
    elif "H100" in device_name or "H200" in device_name:
        key = "H100 SXM / H200"
    elif "A100" in device_name:
        key = "A100"
    else:
        return None
    return PEAK_TFLOPS[key]["bf16" if precision == "bf16" else "tf32"]


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def worker(args: argparse.Namespace) -> dict:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from timecycle.data import ClipDataset, build_index, make_loader
    from timecycle.engine.config import make_config
    from timecycle.engine.runtime import amp_dtype as resolve_amp, resolve_device
    from timecycle.engine.step import train_step
    from timecycle.engine.setup import compile_cycles, index_videos, make_optimizer
    from timecycle.tracker import TimeCycle

    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    overrides = {"batch_size": args.batch_size} if args.batch_size else {}
    overrides.update(json.loads(args.override) if args.override else {})  # bench/gpu.py --smoke
    config = make_config(args.preset, **{"data": [args.data],
                                         "fps": None if args.generated else 12.0, **overrides})
    amp_dtype = resolve_amp(args.precision, device)  # "auto" as a training run resolves it
    precision = "bf16" if amp_dtype is not None else "fp32"
    # As the engine trains (TrainConfig.channels_last, on for every device).
    channels_last = not args.no_channels_last
    if cuda:
        torch.backends.cudnn.benchmark = True  # fixed shapes, as in training
    with tempfile.TemporaryDirectory() as tmp:
        videos = (build_index(args.data).videos if args.generated
                  else index_videos([args.data], Path(tmp), args.workers))
    dataset = ClipDataset(videos, config.clip_config(), seed=0)
    loader = make_loader(dataset, config.batch_size, args.workers, seed=0)
    model = TimeCycle.build(config.arch, config.loss_config(), config.crop, config.patch, 0)
    model.to(device).train()
    if channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, config)
    # dynamic=False: fixed shapes, one graph each (the encoder sees two: frames and patch).
    # FLOPs are counted on the eager model below; compiling happens in the warm-up steps.
    net = torch.compile(model, dynamic=False) if args.compile == "model" else model
    loss_config = config.loss_config()

    def step(batch) -> None:
        train_step(net, optimizer, batch, loss_config, config.grad_clip, device, amp_dtype)

    # FLOPs of one step, counted on the first warm-up step (uncompiled: the counter sees the
    # aten ops that eager mode runs; a compiled step fuses the same matmuls and convolutions).
    batches = iter(loader)
    with FlopCounterMode(display=False) as counter:
        train_step(model, optimizer, next(batches), loss_config, config.grad_clip, device,
                   amp_dtype)
    flops = counter.get_total_flops()
    # As `timecycle train --compile-cycles on` / `graphs` compiles (CUDA graphs: CUDA only).
    compile_cycles(model, {"cycles": "on", "cycles-graphs": "graphs"}.get(args.compile, "off"))
    for _ in range(args.warmup - 1 + int(args.compile != "none")):
        step(next(batches))

    _sync(device)
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    wait = compute = 0.0
    for _ in range(args.steps):
        t0 = time.perf_counter()
        batch = next(batches)
        t1 = time.perf_counter()
        step(batch)
        _sync(device)
        t2 = time.perf_counter()
        wait, compute = wait + t1 - t0, compute + t2 - t1
    peak_mb = (torch.cuda.max_memory_allocated(device) if cuda
               else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2**20

    # The bound: the encoder's forward and backward on the same frames and patches.
    encoder = (torch.compile(model.encoder, dynamic=False) if args.compile == "model"
               else model.encoder)
    frames = batch["frames"].to(device).flatten(0, 1)  # (B * (K+1), 3, S, S)
    patch = batch["patch"].to(device)  # (B, 3, P, P)
    if channels_last:
        frames = frames.contiguous(memory_format=torch.channels_last)
        patch = patch.contiguous(memory_format=torch.channels_last)

    def encode() -> None:
        model.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32,
                            enabled=amp_dtype is not None):
            out = encoder(frames).float().mean() + encoder(patch).float().mean()
        out.backward()

    for _ in range(max(1, args.warmup)):
        encode()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        encode()
    _sync(device)
    bound = (time.perf_counter() - t0) / args.steps

    step_s, wait_s = compute / args.steps, wait / args.steps
    profiled = {}
    if args.profile:
        try:  # a profiler failure must not cost the timings above (one GPU call, no rerun)
            profiled = _profile(step, batches, device, args, step_s)
        except Exception as e:  # noqa: BLE001
            profiled = {"profile_error": f"{type(e).__name__}: {e}"}
    achieved = flops / step_s / 1e12
    name = torch.cuda.get_device_name(device) if cuda else "cpu"
    peak = args.peak_tflops or (peak_tflops(name, precision) if cuda else None)
    return {
        "preset": args.preset, "arch": config.arch, "crop": config.crop,
        "batch": config.batch_size, "device": name, "precision": precision,
        "channels_last": channels_last, "compile": args.compile, "threads": torch.get_num_threads(),
        "clips_per_s": config.batch_size / (step_s + wait_s), "step_s": step_s, "wait_s": wait_s,
        "data_wait": wait_s / (step_s + wait_s), "peak_mb": peak_mb, "gflop_per_step": flops / 1e9,
        "tflops": achieved, "peak_tflops": peak, "mfu": achieved / peak if peak else None,
        "bound_s": bound, "bound_clips_per_s": config.batch_size / bound,
        "bound_ratio": bound / step_s, "bound_ratio_e2e": bound / (step_s + wait_s),
        **profiled,
    }


def _profile(step, batches, device, args: argparse.Namespace, step_s: float) -> dict:
    """torch.profiler over PROFILE_STEPS steps: the operators by their own device time (CPU
    time on the CPU) into DIR/<preset>[-<compile>].txt, and per step: the device's busy time
    against the timed step (how much of the step the GPU computes rather than waits for
    launches), operators called, and host-device synchronisations."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        for _ in range(PROFILE_STEPS):
            step(next(batches))
            _sync(device)
    events = prof.key_averages()
    name = f"{args.preset}{'' if args.compile == 'none' else '-' + args.compile}.txt"
    path = Path(args.profile) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    sort = "self_device_time_total" if cuda else "self_cpu_time_total"
    path.write_text(events.table(sort_by=sort, row_limit=40, max_name_column_width=60))
    # Kernels only: an operator's row repeats the device time of the kernels it launched (the
    # first H200 profiles summed both and read 184% busy; the table's own total is the kernels').
    busy = sum(e.self_device_time_total for e in events if e.device_type == DeviceType.CUDA
               ) / PROFILE_STEPS / 1e6 if cuda else None
    return {
        "profile": str(path),
        "device_busy_s": busy,
        "device_busy": busy / step_s if busy is not None else None,
        "ops_per_step": sum(e.count for e in events if e.key.startswith("aten::")) / PROFILE_STEPS,
        # Less the one of _sync after each profiled step.
        "syncs_per_step": sum(e.count for e in events if "Synchronize" in e.key)
        / PROFILE_STEPS - 1 if cuda else None,
    }


PROFILE_STEPS = 3


def _generate(root: Path, n_videos: int) -> None:
    from timecycle.datasets.synthetic import write_training_videos

    # 256 x 320 frames: the full preset's short side without upscaling; 24 frames fit a clip.
    write_training_videos(root, n_videos=n_videos, seed=0, n_frames=24, height=256, width=320)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", default="small,full")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch-size", type=int,
                    help="clips per step (default: 4 on the CPU, the preset's on a GPU)")
    ap.add_argument("--steps", type=int, help="timed steps (default: 5 on the CPU, 20 on a GPU)")
    ap.add_argument("--warmup", type=int,
                    help="untimed steps first, >= 1: the first counts the FLOPs "
                         "(default: 1 CPU, 3 GPU)")
    ap.add_argument("--workers", type=int, help="DataLoader processes (default: 2 CPU, 8 GPU)")
    ap.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                    help="auto (as training resolves it): bf16 autocast on CUDA and on CPUs "
                         "with native bf16 (AVX512-BF16 or AMX), else fp32")
    ap.add_argument("--no-channels-last", action="store_true",
                    help="keep NCHW (the engine trains channels last)")
    ap.add_argument("--compile", choices=("none", "model", "cycles", "cycles-graphs"),
                    default="none",
                    help="torch.compile the whole model, or the tracker's cycles alone (the "
                         "encoder eager), or those replayed as CUDA graphs (reduce-overhead)")
    ap.add_argument("--data", help="folder of videos (default: generated clips)")
    ap.add_argument("--videos", type=int, default=8, help="generated videos")
    ap.add_argument("--peak-tflops", type=float, help="the device's peak, for MFU")
    ap.add_argument("--json", action="store_true", help="one JSON line per preset")
    ap.add_argument("--profile", metavar="DIR",
                    help="then profile 3 steps: operator tables into DIR, busy share printed")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--preset", help=argparse.SUPPRESS)
    ap.add_argument("--generated", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--override", help=argparse.SUPPRESS)  # JSON: more TrainConfig fields
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    import torch

    cuda = args.device != "cpu" and torch.cuda.is_available()
    args.steps = args.steps or (20 if cuda else 5)
    args.warmup = max(1, args.warmup if args.warmup is not None else (3 if cuda else 1))
    args.workers = args.workers if args.workers is not None else (8 if cuda else 2)
    if not cuda and args.batch_size is None:
        args.batch_size = 4
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data
        if data is None:
            data = str(Path(tmp) / "videos")
            _generate(Path(data), args.videos)
        rows = []
        for preset in args.presets.split(","):
            cmd = [sys.executable, __file__, "--worker", "--preset", preset, "--data", data,
                   "--device", args.device, "--steps", str(args.steps),
                   "--warmup", str(args.warmup), "--workers", str(args.workers),
                   "--precision", args.precision, "--videos", str(args.videos)]
            cmd += ["--batch-size", str(args.batch_size)] if args.batch_size else []
            cmd += ["--peak-tflops", str(args.peak_tflops)] if args.peak_tflops else []
            cmd += ["--profile", args.profile] if args.profile else []
            cmd += ["--compile", args.compile]
            cmd += [flag for flag, on in (("--no-channels-last", args.no_channels_last),
                                          ("--generated", args.data is None)) if on]
            out = subprocess.run(cmd, capture_output=True, text=True, env=os.environ)
            if out.returncode != 0:
                print(f"{preset}: failed: {out.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
                continue
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            if args.json:
                print(json.dumps(rows[-1]), flush=True)
    if args.json or not rows:
        return
    r0 = rows[0]
    print(f"device {r0['device']} ({r0['threads']} threads), {r0['precision']}, channels_last "
          f"{'on' if r0['channels_last'] else 'off'}, compile {r0['compile']},"
          f" {args.steps} timed steps after {args.warmup}, {args.workers} loader workers")
    print(f"{'preset':<6} {'arch':<9} {'crop':>4} {'batch':>5} {'clips/s':>8} {'step s':>7} "
          f"{'wait %':>6} {'GFLOP':>8} {'TFLOP/s':>8} {'MFU':>6} {'peak MB':>8} "
          f"{'bound s':>8} {'bound/step':>10} {'e2e':>5}")
    for r in rows:
        mfu = f"{100 * r['mfu']:5.1f}%" if r["mfu"] is not None else "   n/a"
        print(f"{r['preset']:<6} {r['arch']:<9} {r['crop']:>4} {r['batch']:>5} "
              f"{r['clips_per_s']:8.2f} {r['step_s']:7.3f} {100 * r['data_wait']:6.1f} "
              f"{r['gflop_per_step']:8.1f} {r['tflops']:8.3f} {mfu:>6} {r['peak_mb']:8.0f} "
              f"{r['bound_s']:8.3f} {r['bound_ratio']:10.2f} {r['bound_ratio_e2e']:5.2f}")
    print("bound/step: the encoder's forward+backward alone / the step's compute "
          "(target on a GPU: >= 0.70); e2e: / the step including the data wait")
    for r in rows:
        if "profile" in r:
            busy = (f"device busy {r['device_busy_s']:.4f} s per step = "
                    f"{100 * r['device_busy']:.0f}% of the step, "
                    if r["device_busy"] is not None else "")
            syncs = (f" and {r['syncs_per_step']:.0f} host-device syncs"
                     if r["syncs_per_step"] is not None else "")
            print(f"profile {r['preset']}: {busy}{r['ops_per_step']:.0f} aten operators (nested "
                  f"ones included){syncs} per step -> {r['profile']}")
        elif "profile_error" in r:
            print(f"profile {r['preset']}: failed: {r['profile_error']}")


if __name__ == "__main__":
    main()
